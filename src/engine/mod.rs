//! The diffusion engine.

pub mod scheduler;
