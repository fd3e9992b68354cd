//! The arithmetic of the CPU products, [`Compute`], and the product that follows it: the f32
//! [`gemm_f32`] or the bf16 [`gemm_bf16`].

use crate::kernels::bf16::{Lhs, Rhs, gemm_bf16};
use crate::kernels::gemm::{View, gemm_f32};

/// The arithmetic of the CPU products: f32 throughout, or bf16 weights with f32 activations
/// (`--precision bf16` on the CPU: the networks' tensors stay f32; the layers hold their
/// weights in bf16), multiplied in bf16 where the CPU has bf16 instructions and in f32 where
/// it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compute {
    /// f32 operands and sums.
    #[default]
    F32,
    /// bf16 operands (rounded to nearest even as they are packed), f32 sums: weights packed
    /// into bf16 once, activations rounded as each product packs them.
    Bf16,
    /// Weights held in bf16 and widened to f32 as each layer runs, then the f32 kernels
    /// (`kernels/widened.rs`): bf16 on a CPU without AMX or AVX512-BF16, where bf16 products
    /// would be f32 products of rounded operands, without the f32 path's Winograd.
    Bf16Weights,
}

impl Compute {
    /// For weights requested in `dtype` on `device`: the arithmetic of the products and the
    /// dtype of the tensors. bf16 on the CPU keeps f32 tensors (candle's CPU matrix multiply
    /// has no bf16 and the engine's CPU kernels read f32) and bf16 weights: [`Compute::Bf16`]
    /// where the CPU has bf16 instructions, [`Compute::Bf16Weights`] where it has none (or
    /// `LOOPBACK_BF16_ISA=emulated` says to act as if). Everything else computes in its own
    /// dtype.
    pub fn for_weights(
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> (Compute, candle_core::DType) {
        use crate::kernels::bf16::{Bf16Isa, isa};
        if device.is_cpu() && dtype == candle_core::DType::BF16 {
            let compute = if isa() == Bf16Isa::Emulated {
                Compute::Bf16Weights
            } else {
                Compute::Bf16
            };
            (compute, candle_core::DType::F32)
        } else {
            (Compute::F32, dtype)
        }
    }

    /// Whether the layers hold their weights in bf16 ([`Compute::Bf16`] and
    /// [`Compute::Bf16Weights`]).
    pub fn bf16_weights(self) -> bool {
        matches!(self, Compute::Bf16 | Compute::Bf16Weights)
    }
}

/// [`gemm_f32`]'s product in the arithmetic `compute` asks for ([`gemm_bf16`] for
/// [`Compute::Bf16`]; the f32 product for [`Compute::Bf16Weights`], whose bf16 is only in the
/// weights).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    compute: Compute,
    dims: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
    parallel: bool,
) {
    match compute {
        Compute::F32 | Compute::Bf16Weights => {
            gemm_f32(dims, dst, dst_rs, lhs, rhs, accumulate, parallel)
        }
        Compute::Bf16 => {
            let (lhs, rhs) = (Lhs::View(lhs), Rhs::View(rhs));
            gemm_bf16(dims, dst, dst_rs, lhs, rhs, accumulate, parallel)
        }
    }
}
