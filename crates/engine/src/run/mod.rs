//! Running loops with a loaded model:
//! - [`pipeline`]: one img2img pass, as diffusers computes it;
//! - [`runner`]: a whole loopback job (every loop, colour correction, finishing) with events
//!   and cancel;
//! - [`memory`]: the memory planner (peak memory per loop, VAE tiling, attention budget);
//! - [`preview`]: cheap latent previews after every step;
//! - [`tiling`]: tiled diffusion (MultiDiffusion) tiles and their blending;
//! - [`control`]: how a ControlNet steers a pass (steps, weights, rows, control image).

pub mod control;
pub mod memory;
pub mod pipeline;
pub mod preview;
pub mod runner;
pub mod tiling;
