//! The arithmetic of the CPU products, [`Compute`], and the product that follows it: the f32
//! [`gemm_f32`] or the bf16 [`gemm_bf16`].

use crate::kernels::bf16::{Lhs, Rhs, gemm_bf16};
use crate::kernels::gemm::{View, gemm_f32};

/// The arithmetic of the CPU products: f32 throughout, or operands rounded to bf16 with the
/// sums in f32 (`--precision bf16` on the CPU: the network's weights and activations stay
/// f32 tensors; only the products change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compute {
    /// f32 operands and sums.
    #[default]
    F32,
    /// bf16 operands (rounded to nearest even as they are packed), f32 sums.
    Bf16,
}

impl Compute {
    /// For weights requested in `dtype` on `device`: the arithmetic of the products and the
    /// dtype of the tensors. bf16 on the CPU keeps f32 tensors (candle's CPU matrix multiply
    /// has no bf16 and the engine's CPU kernels read f32) and makes the products bf16;
    /// everything else computes in its own dtype.
    pub fn for_weights(
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> (Compute, candle_core::DType) {
        if device.is_cpu() && dtype == candle_core::DType::BF16 {
            (Compute::Bf16, candle_core::DType::F32)
        } else {
            (Compute::F32, dtype)
        }
    }
}

/// [`gemm_f32`]'s product in the arithmetic `compute` asks for ([`gemm_bf16`] for bf16).
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
        Compute::F32 => gemm_f32(dims, dst, dst_rs, lhs, rhs, accumulate, parallel),
        Compute::Bf16 => {
            let (lhs, rhs) = (Lhs::View(lhs), Rhs::View(rhs));
            gemm_bf16(dims, dst, dst_rs, lhs, rhs, accumulate, parallel)
        }
    }
}
