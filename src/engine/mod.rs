//! The diffusion engine: models, samplers, the img2img pipeline and the loop runner.

pub mod model;
