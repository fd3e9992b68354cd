//! The diffusion engine.
//! - [`model`]: a Stable Diffusion model loaded from a diffusers folder (CLIP, VAE, UNet);
//! - [`noise`]: seeded Gaussian noise bit-identical to PyTorch's CPU `torch.randn`, so a seed
//!   gives the same initial latents as A1111 (RNG source "CPU") and diffusers;
//! - [`scheduler`]: the samplers (DDIM, Euler a, DPM++ 2M Karras), equivalent to diffusers';
//! - [`tokenizer`]: the CLIP byte-pair-encoding tokenizer of every Stable Diffusion text encoder,
//!   shipped with the app, with A1111's splitting of long prompts into 75-token chunks.

pub mod device;
pub mod model;
pub mod noise;
pub mod pipeline;
pub mod preview;
pub mod runner;
pub mod scheduler;
pub mod tokenizer;
