//! The CPU compute kernels under the networks, each with candle's device-generic operation as
//! the path for other devices and dtypes:
//! - [`gemm`]: the one f32 matrix product the others use;
//! - [`compute`]: the choice between it and the bf16 products ([`compute::Compute`]);
//! - [`linear`]: linear layers whose CPU product can be bf16;
//! - [`bf16`]: bf16 matrix products (AMX, AVX512-BF16 or emulated, chosen at run time);
//! - [`conv`]: 2-D convolution layers (f32, or bf16 with the kernel packed once);
//! - [`im2col`]: a convolution's sizes and its patch matrix, in bands (1×1 as one product);
//! - [`winograd`]: Winograd F(4×4, 3×3) and F(2×2, 3×3) for 3×3 convolutions;
//! - [`attention`]: scaled dot-product attention in blocks, never the whole score matrix;
//!   in bf16 on the CPU fused per block of queries (`attention_bf16.rs`), in f32 on AVX2
//!   CPUs with products shaped for attention ([`attention_avx2`]);
//! - [`norm`]: GroupNorm (+ SiLU) with fused statistics;
//! - [`fastmath`]: vectorised `exp`, softmax, SiLU and GELU, with run-time ISA dispatch;
//! - [`storage`]: the f32 slice of a CPU tensor;
//! - [`transpose`]: batched transposes (maps to tokens and back);
//! - [`scratch`]: buffers reused between calls;
//! - [`widened`]: bf16 weights widened to f32 as each layer runs (bf16 on CPUs without bf16
//!   instructions).

pub mod attention;
pub mod attention_avx2;
mod attention_bf16;
pub mod bf16;
pub mod compute;
pub mod conv;
pub mod fastmath;
pub(crate) mod filled;
pub mod gemm;
pub mod im2col;
pub mod linear;
pub mod norm;
pub mod scratch;
pub mod storage;
pub mod transpose;
pub mod widened;
pub mod winograd;

use std::sync::atomic::{AtomicUsize, Ordering};

/// Frees the buffers the kernels keep between the layers of a network pass (transformed
/// Winograd kernels and inputs, widened bf16 weights); for the end of a pass. While a
/// [`ScratchHold`] lives, the buffers are kept for the next pass instead.
pub fn release_scratch() {
    if HOLDS.load(Ordering::Acquire) == 0 {
        free_scratch();
    }
}

fn free_scratch() {
    winograd::release_scratch();
    widened::release_scratch();
}

/// How many [`ScratchHold`]s live.
static HOLDS: AtomicUsize = AtomicUsize::new(0);

/// Keeps the kernels' scratch buffers from one network pass to the next while it lives: for
/// a sampling loop, whose UNet passes each need the same few hundred megabytes. Freed and
/// allocated afresh every pass, those buffers cost their page faults every step (SD 1.5 at
/// 512² on a 2-core Zen 3 VM: 109 k page faults a step without a hold, 2.5 k with one). When
/// the last hold is dropped the buffers are freed.
#[must_use = "the buffers are kept only while the hold lives"]
pub struct ScratchHold(());

impl ScratchHold {
    /// Starts keeping the scratch buffers between passes.
    pub fn new() -> Self {
        HOLDS.fetch_add(1, Ordering::AcqRel);
        ScratchHold(())
    }
}

impl Default for ScratchHold {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchHold {
    fn drop(&mut self) {
        if HOLDS.fetch_sub(1, Ordering::AcqRel) == 1 {
            free_scratch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While a hold lives, the end of a pass keeps the Winograd buffers for the next one.
    /// (Whether the last hold's drop frees them is not asserted: tests on other threads may
    /// convolve meanwhile.)
    #[test]
    fn a_hold_keeps_the_scratch_between_passes() {
        let hold = ScratchHold::new();
        let (cin, cout, h, w) = (8, 8, 32, 32);
        let image = vec![0.5f32; cin * h * w];
        let kernel = vec![0.25f32; cout * cin * 9];
        let mut out = vec![0f32; cout * h * w];
        winograd::Variant::F4.convolve(
            &image,
            (1, cin, h, w),
            winograd::Kernel::F32(&kernel),
            cout,
            &mut out,
        );
        assert!(winograd::workspace_floats() > 0);
        release_scratch();
        assert!(winograd::workspace_floats() > 0, "freed while held");
        let second = ScratchHold::default();
        drop(hold);
        release_scratch();
        assert!(
            winograd::workspace_floats() > 0,
            "freed while the second hold lives"
        );
        drop(second);
        // 9 taps of 0.25 × 0.5 over 8 channels at an inner pixel.
        assert!((out[w + 1] - 9.0).abs() < 1e-5, "{}", out[w + 1]);
    }
}
