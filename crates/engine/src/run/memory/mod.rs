//! The memory planner: peak memory of each loop, estimated from the architecture before
//! anything is loaded, and the VAE tiling and attention budget that make a loop fit.
//!
//! A loop's peak is the weights of all three networks plus the largest of its three phases:
//! VAE encode, one UNet step (batch 2 with classifier-free guidance), VAE decode. The
//! estimates count the tensors alive at each stage of the engine's own code (see
//! [`vae_pass_bytes`]) and are calibrated against `loopback-scaler bench` peak-RSS
//! measurements on random weights (`docs/memory.md`): [`VAE_ENCODE_CALIBRATION`], [`VAE_DECODE_CALIBRATION`] and
//! [`UNET_ACTIVATION_FACTOR`] are the constants to revisit when the networks change.
//!
//! Here: the UNet step, a loop's and a plan's estimate, and the check before a run
//! ([`check_plan`]). Beside it: `shape` ([`ModelShape`], a model's configs), `params`
//! (parameter counts), `vae` (the VAE passes and their tiling, which the VAE's automatic
//! tiling also asks), `system` (memory available, dtype and limit of a device), `dtypes`
//! ([`Dtypes`]: the weights' and the activations' dtypes, which differ for bf16 on the CPU)
//! and `budget` (units, [`HEADROOM`], [`gib`]).
//!
//! Every estimate takes the run's [`Dtypes`] (or one `DType` for both): weights count at the
//! weights' size, activations, latents and attention scores at the activations'.

mod budget;
mod dtypes;
mod params;
mod shape;
pub(crate) mod system;
pub(crate) mod vae;

use candle_core::DType;

use crate::kernels::attention::DEFAULT_SCORE_BUDGET;
use crate::model::config::{PerBlock, UNetFile};
use loopback_core::plan::{LoopSpec, Plan};
use loopback_core::{Error, Result};

use budget::MIB;
pub use budget::{HEADROOM, gib};
pub use dtypes::{Dtypes, device_dtype, device_dtypes};
pub use params::{clip_parameters, controlnet_parameters, unet_parameters, vae_parameters};
pub use shape::{EncoderWeights, ModelShape};
pub use system::{
    available_bytes, parse_bytes, process_peak_rss, process_rss, reset_peak_rss, run_limit,
};
pub use vae::{
    VAE_DECODE_CALIBRATION, VAE_ENCODE_CALIBRATION, VAE_ENCODE_WORKSPACE, VaeChoice, VaePass,
    vae_pass_bytes, vae_tiling,
};

/// Live bytes of a UNet step in units of `batch × latent pixels × first-block channels ×
/// dtype size` (hidden states, the transformer's q/k/v and GEGLU feed-forward, the skip
/// connections), attention scores excluded. Calibrated on the engine's UNet with random SD 1.5
/// weights: a 1024² batch-2 step peaked 822 MiB above the weights (`bench --size 1024`), the
/// formula gives 819 MiB; recalibrate with `bench` when the UNet changes.
pub const UNET_ACTIVATION_FACTOR: f64 = 18.0;

/// The process itself, the tokenizer, image buffers' slack and the allocator: a constant.
pub const BASE_OVERHEAD: u64 = 300 * MIB;

/// Peak bytes of one UNet call on `(h, w)` latents, weights excluded: activations
/// ([`UNET_ACTIVATION_FACTOR`]) plus attention scores and probabilities (`2 × score_budget`
/// at most, less when the whole score matrix is smaller).
pub fn unet_step_bytes(
    cfg: &UNetFile,
    dtype: DType,
    batch: usize,
    (h, w): (usize, usize),
    score_budget: usize,
) -> u64 {
    let n = (h * w) as f64;
    let c0 = cfg.block_out_channels.first().copied().unwrap_or(0) as f64;
    let s = dtype.size_in_bytes() as f64;
    let heads = |i: usize| match &cfg.attention_head_dim {
        Some(PerBlock::One(v)) => *v,
        Some(PerBlock::Each(v)) => v.get(i).copied().unwrap_or(8),
        None => 8,
    } as f64;
    // The largest score matrix and the widest transformer activations come from the first
    // level with attention: the first level for SD 1.x/2.x (the calibrated case), the second,
    // at a quarter of the pixels, for SDXL (whose first level has only resnets: counted at
    // half the factor, an uncalibrated estimate).
    let first_attention = cfg
        .down_block_types
        .iter()
        .position(|k| k.starts_with("CrossAttn"))
        .unwrap_or(0);
    let n_att = n / 4f64.powi(first_attention as i32);
    let c_att = cfg
        .block_out_channels
        .get(first_attention)
        .copied()
        .unwrap_or(0) as f64;
    let width = if first_attention == 0 {
        n * c0
    } else {
        (n_att * c_att).max(n * c0 / 2.0)
    };
    let full_scores = batch as f64 * heads(first_attention) * n_att * n_att * 4.0;
    let scores = full_scores.min(score_budget as f64) * 2.0;
    (UNET_ACTIVATION_FACTOR * batch as f64 * width * s + scores) as u64
}

/// Bytes of a ControlNet's residuals, alive while the UNet runs: one tensor per skip
/// connection and one for the mid block, at the skip connections' sizes. The ControlNet's
/// own pass (the UNet's encoder half) peaks below the UNet's and is over before it.
pub fn controlnet_residual_bytes(
    cfg: &UNetFile,
    dtype: DType,
    batch: usize,
    (h, w): (usize, usize),
) -> u64 {
    let s = dtype.size_in_bytes();
    let skips = params::skip_channels(cfg);
    let last = skips.last().map_or(0, |&(_, level)| level);
    let mid = cfg.block_out_channels.last().copied().unwrap_or(0);
    let area = |level: usize| (h >> level).max(1) * (w >> level).max(1);
    let total: usize = skips
        .iter()
        .map(|&(c, level)| c * area(level))
        .sum::<usize>()
        + mid * area(last);
    (batch * total * s) as u64
}

/// The estimate for one loop.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// The loop's index (1-based).
    pub index: u32,
    /// Loop size in pixels.
    pub width: u32,
    /// Loop size in pixels.
    pub height: u32,
    /// Estimated peak of the loop: weights + overhead + the largest phase.
    pub peak_bytes: u64,
    /// Weights of the three networks.
    pub weights_bytes: u64,
    /// Weights loaded during the heavy phases: `weights_bytes` less the text encoders' when
    /// they are released after encoding the prompts.
    pub resident_weights_bytes: u64,
    /// One UNet step (activations and scores).
    pub unet_bytes: u64,
    /// VAE encode (activations).
    pub vae_encode_bytes: u64,
    /// VAE decode (activations).
    pub vae_decode_bytes: u64,
    /// Tile side in latent pixels when the encode is tiled.
    pub vae_encode_tile: Option<usize>,
    /// Tile side in latent pixels when the decode is tiled.
    pub vae_decode_tile: Option<usize>,
    /// Attention score budget (bytes) chosen for the UNet.
    pub score_budget: usize,
    /// The tile grid (rows, columns) when the loop runs tiled diffusion.
    pub tiles: Option<(usize, usize)>,
    /// Whether the loop fits the memory limit (true without a limit).
    pub fits: bool,
}

impl Estimate {
    /// The VAE passes in words: `whole`, or e.g. `enc whole, dec tiled 48` (tile sides in
    /// latent pixels).
    pub fn vae_label(&self) -> String {
        let part = |t: Option<usize>| t.map_or("whole".to_string(), |t| format!("tiled {t}"));
        match (self.vae_encode_tile, self.vae_decode_tile) {
            (None, None) => "whole".into(),
            (e, d) => format!("enc {}, dec {}", part(e), part(d)),
        }
    }

    /// Which phase sets the peak.
    pub fn largest_phase(&self) -> &'static str {
        if self.unet_bytes >= self.vae_encode_bytes && self.unet_bytes >= self.vae_decode_bytes {
            "UNet step"
        } else if self.vae_decode_bytes >= self.vae_encode_bytes {
            "VAE decode"
        } else {
            "VAE encode"
        }
    }
}

/// Score budgets the planner tries for the UNet, largest first.
const SCORE_BUDGETS: [usize; 4] = [DEFAULT_SCORE_BUDGET, 8 << 20, 2 << 20, 1 << 20];

/// Estimates the peak memory of a loop at `spec`'s size with weights and activations in
/// `dtypes` ([`Dtypes`], or one `DType` for both) and UNet batch `batch` (2 with
/// classifier-free guidance > 1, else 1), choosing VAE tiling and the attention score budget
/// so that it fits `limit` bytes (the memory available; `None`: no limit, nothing tiled).
/// `encoders` says whether the text encoders' weights are still loaded during the loop's
/// heavy phases.
pub fn estimate_loop(
    shape: &ModelShape,
    spec: &LoopSpec,
    dtypes: impl Into<Dtypes>,
    batch: usize,
    limit: Option<u64>,
    encoders: EncoderWeights,
) -> Estimate {
    let Dtypes {
        weights: weights_dtype,
        activations: dtype,
    } = dtypes.into();
    let weights = shape.parameters() * weights_dtype.size_in_bytes() as u64;
    let resident = shape.resident_weight_bytes(weights_dtype, encoders);
    let d = shape.vae.downscale().max(1);
    let latent = (spec.height as usize / d, spec.width as usize / d);
    let pixels = u64::from(spec.width) * u64::from(spec.height);
    // The loop's images: input, resized, output (RGB8) and the f32 image tensors.
    let images = pixels * (3 * 3 + 2 * 3 * 4);
    let fixed = resident + BASE_OVERHEAD + images;
    // What the largest phase may use: the planned share of the limit minus the fixed part.
    let room = limit.map(|l| ((l as f64 * HEADROOM) as u64).saturating_sub(fixed));
    // `vae_tiling` keeps its own headroom; hand it the room before that.
    let vae_limit = room.map(|r| (r as f64 / HEADROOM) as u64);
    let latents = (batch * 4 * latent.0 * latent.1 * 4 * 4) as u64;
    // A tiled loop runs the UNet (and ControlNet) on one tile at a time.
    let tiling = shape
        .tiling
        .and_then(|t| t.for_loop(spec, shape.native_size(), d));
    let unet_area = match tiling {
        Some(t) => (t.tile.min(latent.0), t.tile.min(latent.1)),
        None => latent,
    };
    let step = |b: usize| {
        let unet = unet_step_bytes(&shape.unet, dtype, batch, unet_area, b);
        if shape.controlnet {
            unet + controlnet_residual_bytes(&shape.unet, dtype, batch, unet_area)
        } else {
            unet
        }
    };

    let mut budget = SCORE_BUDGETS[0];
    let mut unet = step(budget);
    if let Some(room) = room {
        for b in SCORE_BUDGETS {
            budget = b;
            unet = step(b);
            if unet + latents <= room {
                break;
            }
        }
    }
    let enc = vae_tiling(
        &shape.vae,
        VaePass::Encode,
        dtype,
        1,
        latent,
        DEFAULT_SCORE_BUDGET,
        vae_limit,
    );
    let dec = vae_tiling(
        &shape.vae,
        VaePass::Decode,
        dtype,
        1,
        latent,
        DEFAULT_SCORE_BUDGET,
        vae_limit,
    );
    // Encoding the prompts (all weights, small activations) comes before the heavy phases.
    let peak =
        (fixed + (unet + latents).max(enc.bytes).max(dec.bytes)).max(weights + BASE_OVERHEAD);
    let fits = limit.is_none_or(|l| peak as f64 <= l as f64 * HEADROOM) && enc.fits && dec.fits;
    Estimate {
        index: spec.index,
        width: spec.width,
        height: spec.height,
        peak_bytes: peak,
        weights_bytes: weights,
        resident_weights_bytes: resident,
        unet_bytes: unet + latents,
        vae_encode_bytes: enc.bytes,
        vae_decode_bytes: dec.bytes,
        vae_encode_tile: enc.tiling.map(|t| t.tile),
        vae_decode_tile: dec.tiling.map(|t| t.tile),
        score_budget: budget,
        tiles: tiling.map(|t| crate::run::tiling::grid(latent.0, latent.1, &t)),
        fits,
    }
}

/// Estimates every loop of `plan`.
pub fn estimate_plan(
    shape: &ModelShape,
    plan: &Plan,
    dtypes: impl Into<Dtypes>,
    batch: usize,
    limit: Option<u64>,
    encoders: EncoderWeights,
) -> Vec<Estimate> {
    let dtypes = dtypes.into();
    plan.loops
        .iter()
        .map(|spec| estimate_loop(shape, spec, dtypes, batch, limit, encoders))
        .collect()
}

/// The UNet's batch for a CFG scale: 2 with classifier-free guidance (`cfg > 1`), else 1.
pub fn unet_batch(cfg: f64) -> usize {
    if cfg > 1.0 { 2 } else { 1 }
}

/// A plan refused for memory: the one-line reason ([`check_fits`]) and every loop's estimate.
#[derive(Debug)]
pub struct Refusal {
    /// What needs how much, what is available, what to change ([`Error::Memory`]).
    pub error: Error,
    /// Every loop's estimate, in order.
    pub estimates: Vec<Estimate>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        refusal.error
    }
}

/// The memory check before a run: estimates every loop of `plan` ([`estimate_plan`], with
/// weights and activations in `dtypes`, UNet batch `batch` ([`unet_batch`]), the memory `limit` and the text
/// encoders' weights `encoders`) and refuses the plan when a loop does not fit `limit`
/// ([`check_fits`]). `Ok` with the estimates when every loop fits (always without a limit).
pub fn check_plan(
    shape: &ModelShape,
    plan: &Plan,
    dtypes: impl Into<Dtypes>,
    batch: usize,
    limit: Option<u64>,
    encoders: EncoderWeights,
) -> std::result::Result<Vec<Estimate>, Refusal> {
    let dtypes = dtypes.into();
    let estimates = estimate_plan(shape, plan, dtypes, batch, limit, encoders);
    match check_fits(&estimates, limit, dtypes) {
        Ok(()) => Ok(estimates),
        Err(error) => Err(Refusal { error, estimates }),
    }
}

/// `Err` with one line (what needs how much, what is available, what to change) when a loop
/// of the estimates does not fit `limit` (its advice depends on `dtypes`: f32 activations
/// live in the CPU's memory).
pub fn check_fits(
    estimates: &[Estimate],
    limit: Option<u64>,
    dtypes: impl Into<Dtypes>,
) -> Result<()> {
    let (Some(limit), Some(worst)) = (
        limit,
        estimates
            .iter()
            .filter(|e| !e.fits)
            .max_by_key(|e| e.peak_bytes),
    ) else {
        return Ok(());
    };
    let hint = if dtypes.into().on_the_cpu() {
        "lower --max-size (or --max-width/--max-height), close other programs, or pass a larger --memory-limit if more memory is really free"
    } else {
        "lower --max-size (or --max-width/--max-height) or pass a larger --memory-limit if the device has more memory"
    };
    Err(Error::Memory(format!(
        "loop {} at {}x{} needs about {} ({} of weights, {} for the {}) but only {} is available (the planner keeps {:.0} % of it free); {hint}",
        worst.index,
        worst.width,
        worst.height,
        gib(worst.peak_bytes),
        gib(worst.resident_weights_bytes),
        gib(worst
            .unet_bytes
            .max(worst.vae_encode_bytes)
            .max(worst.vae_decode_bytes)),
        worst.largest_phase(),
        gib(limit),
        (1.0 - HEADROOM) * 100.0,
    )))
}

#[cfg(test)]
mod tests;
