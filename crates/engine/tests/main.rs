//! The engine's integration tests: parity with diffusers and PyTorch on tiny models, loading, samplers, the runner.
//! One binary for all of them (faster to link than one per file); fixtures are shared from
//! the workspace's `tests/fixtures` and `tests/data`.

mod checkpoint;
mod common;
mod controlnet;
mod half;
mod hub;
mod loader;
mod lora;
mod lora_sdxl;
mod model_parity;
mod noise;
mod pipeline_parity;
mod prompt_parity;
mod prompts;
mod random_model;
mod runner;
mod sampler_parity;
mod schedulers;
mod sdxl_parity;
mod sdxl_runner;
mod taesd;
mod tiling;
mod tokenizer;
mod vae;
