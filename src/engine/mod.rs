//! The diffusion engine.
//! - [`arch`]: the SD 1.5 and 2.1 architectures, for benchmarks with random weights;
//! - [`checkpoint`]: single-file checkpoints (original layout) and replacement VAEs;
//! - [`device`]: picking CPU, CUDA or Metal and the weights' dtype;
//! - [`hub`]: built-in model presets fetched into the Hugging Face cache;
//! - [`lora`]: LoRA files merged into the weights at load, and `<lora:…>` prompt tags;
//! - [`loader`]: getting a model ready (download a preset, load it) on a worker thread;
//! - [`memory`]: the memory planner (peak memory per loop, VAE tiling, attention budget);
//! - [`model`]: a Stable Diffusion model loaded from a diffusers folder (CLIP, VAE, UNet);
//! - [`noise`]: seeded Gaussian noise bit-identical to PyTorch's CPU `torch.randn`, so a seed
//!   gives the same initial latents as A1111 (RNG source "CPU") and diffusers;
//! - [`library`]: the models, VAEs, LoRAs and TAESD decoders on disk, with family and size;
//! - [`models`]: resolving `--model` (preset, folder, or a name in `models/`);
//! - [`open_model`]: a loaded model from a folder or checkpoint, with a replacement VAE and hashes;
//! - [`pipeline`]: one img2img pass, as diffusers computes it;
//! - [`preview`]: cheap latent previews;
//! - [`runner`]: the loop runner on a worker thread, with events and cancel;
//! - [`scheduler`]: the samplers (DDIM, Euler a, DPM++ 2M Karras), equivalent to diffusers';
//! - [`taesd`]: the tiny TAESD decoder for previews at image resolution;
//! - [`tokenizer`]: the CLIP byte-pair-encoding tokenizer of every Stable Diffusion text encoder,
//!   shipped with the app, with A1111's splitting of long prompts into 75-token chunks;
//! - [`weights`]: safetensors weights read per tensor on demand, renamed and derived.

pub mod allocator;
pub mod arch;
pub mod checkpoint;
pub mod device;
pub mod hub;
pub mod library;
pub mod loader;
pub mod lora;
pub mod memory;
pub mod model;
pub mod models;
pub mod noise;
pub mod open_model;
pub mod pipeline;
pub mod preview;
pub mod runner;
pub mod scheduler;
pub mod taesd;
pub mod tokenizer;
pub mod weights;
