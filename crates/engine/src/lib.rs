//! Loopback Scaler's diffusion engine: Stable Diffusion img2img loops on candle, in process.
//!
//! Laid out by concern (docs/architecture.md):
//! - [`kernels`]: the CPU compute kernels (gemm, convolution, Winograd, attention, norm, fast
//!   math) under the networks;
//! - [`model`]: the networks (CLIP text encoders, UNet, VAE, TAESD) and their configs, flat
//!   and readable;
//! - [`scheduler`]: the samplers, equivalent to diffusers' schedulers, and the seeded noise
//!   bit-identical to PyTorch's CPU `torch.randn`;
//! - [`conditioning`]: prompt text → tokens (the CLIP tokenizer, A1111's chunking);
//! - [`load`]: where models come from (presets, the Hugging Face cache, `models/`,
//!   checkpoints, LoRAs) and how they load;
//! - [`run`]: the img2img pipeline, the loop runner, the memory planner, previews;
//! - [`device`]: picking CPU, CUDA or Metal and the weights' dtype;
//! - [`allocator`]: the process allocator's settings for the engine's access pattern.

pub mod allocator;
pub mod conditioning;
pub mod device;
mod error;
pub mod kernels;
pub mod load;
pub mod model;
pub mod run;
pub mod scheduler;
#[cfg(test)]
mod test_util;
