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
//!   in bf16 on the CPU fused per block of queries (`attention_bf16.rs`);
//! - [`norm`]: GroupNorm (+ SiLU) with fused statistics;
//! - [`fastmath`]: vectorised `exp`, softmax, SiLU and GELU, with run-time ISA dispatch;
//! - [`storage`]: the f32 slice of a CPU tensor;
//! - [`transpose`]: batched transposes (maps to tokens and back);
//! - [`scratch`]: buffers reused between calls;
//! - [`widened`]: bf16 weights widened to f32 as each layer runs (bf16 on CPUs without bf16
//!   instructions).

pub mod attention;
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

/// Frees the buffers the kernels keep between the layers of a network pass (transformed
/// Winograd kernels and inputs, widened bf16 weights); for the end of a pass.
pub fn release_scratch() {
    winograd::release_scratch();
    widened::release_scratch();
}
