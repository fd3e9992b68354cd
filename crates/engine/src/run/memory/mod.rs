//! The memory planner: peak memory of each loop, estimated from the architecture before
//! anything is loaded, and the VAE tiling and attention budget that make a loop fit.
//!
//! A loop's peak is the weights of all three networks plus the largest of its three phases:
//! VAE encode, one UNet step (batch 2 with classifier-free guidance), VAE decode. The
//! estimates count the tensors alive at each stage of the engine's own code (see
//! [`vae_pass_bytes`]) and are calibrated against `loopback-scaler bench` peak-RSS
//! measurements on random weights (`docs/memory.md`): [`VAE_ENCODE_CALIBRATION`], [`VAE_DECODE_CALIBRATION`] and
//! [`UNET_ACTIVATION_FACTOR`] are the constants to revisit when the networks change.

mod params;
mod system;

use std::path::PathBuf;

use candle_core::DType;

use crate::model::arch::Arch;
use crate::kernels::attention::DEFAULT_SCORE_BUDGET;
use crate::model::config::{ClipFile, ModelFiles, UNetFile, VaeFile};
use crate::model::vae::Tiling;
use crate::load::resolve::{self, ModelSource};
use loopback_core::plan::{LoopSpec, Plan};
use loopback_core::{Error, Result};

pub use params::{clip_parameters, unet_parameters, vae_parameters};
pub use system::{
    available_bytes, device_dtype, parse_bytes, process_peak_rss, process_rss, reset_peak_rss,
    run_limit,
};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Multiplies the counted live bytes of a VAE encode (allocator slack, small tensors the
/// count leaves out). Calibrated with `bench --vae-only --vae-tile never` on random SD
/// weights (`docs/memory.md`): with [`VAE_ENCODE_WORKSPACE`] the count meets the measured
/// peaks at 512² (523 MiB) and 1024² (1667 MiB) to 2 %.
pub const VAE_ENCODE_CALIBRATION: f64 = 1.0;

/// Bytes a VAE encode uses beyond its counted tensors whatever the size (the convolutions'
/// Winograd and band buffers, the allocator's arenas): measured about 128 MiB at both 512²
/// and 1024².
pub const VAE_ENCODE_WORKSPACE: u64 = 128 * MIB;

/// The same as [`VAE_ENCODE_CALIBRATION`] for a VAE decode, whose count meets the measured
/// peaks at 512² (513 MiB) and 1024² (2082 MiB) to 1.5 % without a workspace term.
pub const VAE_DECODE_CALIBRATION: f64 = 1.0;

/// Live bytes of a UNet step in units of `batch × latent pixels × first-block channels ×
/// dtype size` (hidden states, the transformer's q/k/v and GEGLU feed-forward, the skip
/// connections), attention scores excluded. Calibrated on the engine's UNet with random SD 1.5
/// weights: a 1024² batch-2 step peaked 822 MiB above the weights (`bench --size 1024`), the
/// formula gives 819 MiB; recalibrate with `bench` when the UNet changes.
pub const UNET_ACTIVATION_FACTOR: f64 = 18.0;

/// The process itself, the tokenizer, image buffers' slack and the allocator: a constant.
pub const BASE_OVERHEAD: u64 = 300 * MIB;

/// Only this share of the available memory is planned for; the rest is headroom.
pub const HEADROOM: f64 = 0.9;

/// The shape of a model, enough to estimate its memory: the three configs.
#[derive(Debug, Clone)]
pub struct ModelShape {
    /// A name for messages (preset, folder or architecture).
    pub name: String,
    /// The UNet config.
    pub unet: UNetFile,
    /// The VAE config.
    pub vae: VaeFile,
    /// The text encoder config.
    pub clip: ClipFile,
    /// SDXL's second text encoder config (with its text projection); `None` for SD 1.x/2.x.
    pub clip2: Option<ClipFile>,
}

impl ModelShape {
    /// The shape of a diffusers folder's configs.
    pub fn from_files(files: &ModelFiles) -> Self {
        ModelShape {
            name: files.root.display().to_string(),
            unet: files.unet.clone(),
            vae: files.vae.clone(),
            clip: files.clip.clone(),
            clip2: files.clip2.clone(),
        }
    }

    /// A published architecture.
    pub fn from_arch(arch: Arch) -> Result<Self> {
        Ok(ModelShape {
            name: format!("{arch:?} architecture"),
            unet: arch.unet()?,
            vae: arch.vae()?,
            clip: arch.clip(),
            clip2: arch.clip2(),
        })
    }

    /// The shape of what `--model SPEC` names, read without loading any weights: a folder's
    /// configs, or a preset's architecture (SD 1.5, SD 2.1 for SD 2.1 and SD-Turbo, SDXL for
    /// SDXL and SDXL-Turbo).
    pub fn resolve(spec: &str, search_dirs: &[PathBuf]) -> Result<Self> {
        match resolve::resolve(spec, search_dirs)? {
            ModelSource::Folder(path) => Ok(Self::from_files(&ModelFiles::read(&path)?)),
            ModelSource::Checkpoint(path) => {
                let ckpt = crate::load::checkpoint::Checkpoint::open(&path, &Default::default())?;
                let vae = match &ckpt.vae_config {
                    Some(vae) => vae.clone(),
                    None => Arch::Sd15.vae()?,
                };
                Ok(Self::from_files(&ckpt.model_files(vae)))
            }
            ModelSource::Preset(preset) => {
                let arch = preset.arch();
                Ok(ModelShape {
                    name: preset.name().to_string(),
                    ..Self::from_arch(arch)?
                })
            }
        }
    }

    /// Parameters of the three networks.
    pub fn parameters(&self) -> u64 {
        unet_parameters(&self.unet) + vae_parameters(&self.vae) + self.text_parameters()
    }

    /// Parameters of the text encoder(s).
    pub fn text_parameters(&self) -> u64 {
        clip_parameters(&self.clip) + self.clip2.as_ref().map_or(0, clip_parameters)
    }

    /// Bytes of weights loaded through a loop's heavy phases (UNet steps, VAE passes) in
    /// `dtype`: all three networks, or without the text encoders when they are freed once the
    /// prompts are encoded.
    pub fn resident_weight_bytes(&self, dtype: DType, encoders: EncoderWeights) -> u64 {
        let parameters = match encoders {
            EncoderWeights::Kept => self.parameters(),
            EncoderWeights::Released => self.parameters() - self.text_parameters(),
        };
        parameters * dtype.size_in_bytes() as u64
    }
}

/// What happens to the text encoders' weights once a run has encoded its prompts (they are
/// encoded first in every loop, before the VAE encode and the UNet steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderWeights {
    /// They stay loaded (the app, which may run again with other prompts).
    Kept,
    /// They are freed (the CLI's one-shot `run`, `TextEncoders::set_release_after_use`), so
    /// no loop's heavy phases hold them.
    Released,
}

/// Which VAE pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaePass {
    /// Image → latents.
    Encode,
    /// Latents → image.
    Decode,
}

/// Peak live elements (in units of one element) of a residual block over `n` pixels: its
/// input, the hidden activation and the output (the first normalised activation exists one
/// band at a time, the second SiLU runs in place; `vae::blocks::Resnet`).
fn resnet_peak(cin: usize, cout: usize, n: f64) -> f64 {
    (cin + 2 * cout) as f64 * n
}

/// Peak live elements of the mid block over `n` latent pixels (`c` channels), attention
/// scores excluded.
fn mid_peak(c: usize, n: f64) -> f64 {
    resnet_peak(c, c, n).max(6.0 * c as f64 * n)
}

/// Live elements of the encoder's `conv_in` + down blocks on an `n`-pixel input, the input
/// image included.
fn encoder_body_peak(cfg: &VaeFile, n: f64) -> f64 {
    let ch = &cfg.block_out_channels;
    let image = cfg.in_channels as f64 * n;
    let mut peak = ch[0] as f64 * n;
    let mut res = n;
    for (i, &c) in ch.iter().enumerate() {
        let cin = if i == 0 { ch[0] } else { ch[i - 1] };
        peak = peak.max(resnet_peak(cin, c, res));
        if i + 1 < ch.len() {
            // The stride-2 convolution reads its input unpadded: input and output.
            peak = peak.max(c as f64 * 1.25 * res);
            res /= 4.0;
        }
    }
    image + peak
}

/// Live elements of the decoder's up blocks + output layers from `n` latent pixels.
fn decoder_tail_peak(cfg: &VaeFile, n: f64) -> f64 {
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let mut peak = 0.0f64;
    let mut res = n;
    for (i, &c) in rev.iter().enumerate() {
        let cin = if i == 0 { rev[0] } else { rev[i - 1] };
        peak = peak.max(resnet_peak(cin, c, res));
        if i + 1 < rev.len() {
            // The upsampled input exists one band at a time: input and output.
            peak = peak.max(5.0 * c as f64 * res);
            res *= 4.0;
        }
    }
    let c0 = cfg.block_out_channels[0];
    peak.max((2 * c0 + cfg.out_channels) as f64 * res)
}

/// Peak bytes of a VAE pass over `(h, w)` latents (batch `batch`, weights in `dtype`), whole
/// (`tiling = None`) or tiled, weights excluded. Attention scores count `2 × score_budget`
/// (scores and probabilities), at most the whole score matrix.
pub fn vae_pass_bytes(
    cfg: &VaeFile,
    pass: VaePass,
    dtype: DType,
    batch: usize,
    (h, w): (usize, usize),
    tiling: Option<&Tiling>,
    score_budget: usize,
) -> u64 {
    if cfg.block_out_channels.is_empty() {
        return 0;
    }
    let s = dtype.size_in_bytes() as f64;
    let d = cfg.downscale() as f64;
    let n = (h * w) as f64;
    let pixels = n * d * d;
    let last = *cfg.block_out_channels.last().unwrap_or(&0);
    let scores = (n * n * 4.0).min(score_budget as f64) * 2.0;
    let mid = mid_peak(last, n) * s + scores;
    let tile_n = |t: &Tiling| {
        let side = |len: usize| (t.tile + 2 * t.halo).min(len) as f64;
        side(h) * side(w)
    };
    let elements = match (pass, tiling) {
        (VaePass::Encode, None) => {
            let body = encoder_body_peak(cfg, pixels) * s;
            // The features stay alive while the mid block runs.
            body.max(last as f64 * n * s + mid)
        }
        (VaePass::Encode, Some(t)) => {
            let image = cfg.in_channels as f64 * pixels * s;
            let canvas = last as f64 * n * 4.0;
            let tile = encoder_body_peak(cfg, tile_n(t) * d * d) * s;
            (image + canvas + tile).max(image + last as f64 * n * s + mid)
        }
        (VaePass::Decode, None) => {
            let tail = decoder_tail_peak(cfg, n) * s + last as f64 * n * s;
            tail.max(mid)
        }
        (VaePass::Decode, Some(t)) => {
            let canvas = cfg.out_channels as f64 * pixels * 4.0 * 2.0;
            let tile = decoder_tail_peak(cfg, tile_n(t)) * s;
            (last as f64 * n * s + canvas + tile).max(mid)
        }
    };
    let (calibration, workspace) = match pass {
        VaePass::Encode => (VAE_ENCODE_CALIBRATION, VAE_ENCODE_WORKSPACE),
        VaePass::Decode => (VAE_DECODE_CALIBRATION, 0),
    };
    (elements * batch as f64 * calibration) as u64 + workspace
}

/// The planner's choice for a VAE pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeChoice {
    /// Tiled with this, or whole.
    pub tiling: Option<Tiling>,
    /// Estimated peak bytes of the pass (weights excluded).
    pub bytes: u64,
    /// Whether it fits the limit (always true without a limit).
    pub fits: bool,
}

/// Tile sides (latent pixels) the planner tries, largest first.
const TILE_SIDES: [usize; 6] = [128, 96, 64, 48, 32, 16];

/// Chooses whole or tiled for a VAE pass so that it fits `limit` bytes (`None`: whole). The
/// largest tile that fits wins; when none fits, the smallest with `fits = false`.
pub fn vae_tiling(
    cfg: &VaeFile,
    pass: VaePass,
    dtype: DType,
    batch: usize,
    latent: (usize, usize),
    score_budget: usize,
    limit: Option<u64>,
) -> VaeChoice {
    let whole = vae_pass_bytes(cfg, pass, dtype, batch, latent, None, score_budget);
    let Some(limit) = limit else {
        return VaeChoice {
            tiling: None,
            bytes: whole,
            fits: true,
        };
    };
    let limit = (limit as f64 * HEADROOM) as u64;
    if whole <= limit {
        return VaeChoice {
            tiling: None,
            bytes: whole,
            fits: true,
        };
    }
    let make = |tile| match pass {
        VaePass::Encode => Tiling::encode(tile),
        VaePass::Decode => Tiling::decode(tile),
    };
    let mut last = None;
    for side in TILE_SIDES {
        if side >= latent.0.max(latent.1) {
            continue;
        }
        let t = make(side);
        let bytes = vae_pass_bytes(cfg, pass, dtype, batch, latent, Some(&t), score_budget);
        if bytes <= limit {
            return VaeChoice {
                tiling: Some(t),
                bytes,
                fits: true,
            };
        }
        last = Some((t, bytes));
    }
    match last {
        Some((t, bytes)) => VaeChoice {
            tiling: Some(t),
            bytes,
            fits: false,
        },
        None => VaeChoice {
            tiling: None,
            bytes: whole,
            fits: false,
        },
    }
}

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
        Some(crate::model::config::PerBlock::One(v)) => *v,
        Some(crate::model::config::PerBlock::Each(v)) => v.get(i).copied().unwrap_or(8),
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

/// Estimates the peak memory of a loop at `spec`'s size with weights in `dtype` and UNet
/// batch `batch` (2 with classifier-free guidance > 1, else 1), choosing VAE tiling and the
/// attention score budget so that it fits `limit` bytes (the memory available; `None`: no
/// limit, nothing tiled). `encoders` says whether the text encoders' weights are still
/// loaded during the loop's heavy phases.
pub fn estimate_loop(
    shape: &ModelShape,
    spec: &LoopSpec,
    dtype: DType,
    batch: usize,
    limit: Option<u64>,
    encoders: EncoderWeights,
) -> Estimate {
    let weights = shape.parameters() * dtype.size_in_bytes() as u64;
    let resident = shape.resident_weight_bytes(dtype, encoders);
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

    let mut budget = SCORE_BUDGETS[0];
    let mut unet = unet_step_bytes(&shape.unet, dtype, batch, latent, budget);
    if let Some(room) = room {
        for b in SCORE_BUDGETS {
            budget = b;
            unet = unet_step_bytes(&shape.unet, dtype, batch, latent, b);
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
        fits,
    }
}

/// Estimates every loop of `plan`.
pub fn estimate_plan(
    shape: &ModelShape,
    plan: &Plan,
    dtype: DType,
    batch: usize,
    limit: Option<u64>,
    encoders: EncoderWeights,
) -> Vec<Estimate> {
    plan.loops
        .iter()
        .map(|spec| estimate_loop(shape, spec, dtype, batch, limit, encoders))
        .collect()
}

/// `Err` with one line (what needs how much, what is available, what to change) when a loop
/// of the estimates does not fit `limit`.
pub fn check_fits(estimates: &[Estimate], limit: Option<u64>, dtype: DType) -> Result<()> {
    let (Some(limit), Some(worst)) = (
        limit,
        estimates
            .iter()
            .filter(|e| !e.fits)
            .max_by_key(|e| e.peak_bytes),
    ) else {
        return Ok(());
    };
    let hint = if dtype == DType::F32 {
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

/// Bytes for messages: GiB with one decimal, or whole MiB below 1 GiB.
pub fn gib(bytes: u64) -> String {
    if (bytes as f64) < GIB {
        format!("{} MiB", bytes.div_ceil(MIB))
    } else {
        format!("{:.1} GiB", bytes as f64 / GIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEPT: EncoderWeights = EncoderWeights::Kept;

    fn spec(size: u32) -> LoopSpec {
        LoopSpec {
            index: 1,
            width: size,
            height: size,
            denoise: 0.3,
            seed: 1,
            steps: 10,
            estimated: false,
        }
    }

    #[test]
    fn parameter_counts_match_the_published_models() {
        let sd15 = ModelShape::from_arch(Arch::Sd15).unwrap();
        // diffusers' num_parameters() of the published SD 1.5 components.
        assert_eq!(vae_parameters(&sd15.vae), 83_653_863);
        assert_eq!(clip_parameters(&sd15.clip), 123_060_480);
        assert_eq!(unet_parameters(&sd15.unet), 859_520_964);
        let sd21 = ModelShape::from_arch(Arch::Sd21).unwrap();
        assert_eq!(unet_parameters(&sd21.unet), 865_910_724);
        assert_eq!(clip_parameters(&sd21.clip), 340_387_840);
        let sdxl = ModelShape::from_arch(Arch::Sdxl).unwrap();
        assert_eq!(unet_parameters(&sdxl.unet), 2_567_463_684);
        assert_eq!(clip_parameters(&sdxl.clip), 123_060_480);
        assert_eq!(clip_parameters(sdxl.clip2.as_ref().unwrap()), 694_659_840);
        assert_eq!(vae_parameters(&sdxl.vae), 83_653_863);
    }

    #[test]
    fn large_decodes_get_tiled_to_fit() {
        let vae = Arch::Sd15.vae().unwrap();
        let latent = (256, 256);
        let whole = vae_pass_bytes(&vae, VaePass::Decode, DType::F32, 1, latent, None, 1 << 28);
        assert!(whole > 6 << 30, "2048² decode whole: {}", gib(whole));
        let choice = vae_tiling(
            &vae,
            VaePass::Decode,
            DType::F32,
            1,
            latent,
            1 << 28,
            Some(3 << 30),
        );
        assert!(choice.fits && choice.tiling.is_some(), "{choice:?}");
        assert!(choice.bytes < 3 << 30);
        // Measured with bench (random SD weights, f32): 523 / 513 MiB at 512², 1667 /
        // 2082 MiB at 1024²; the estimates stay within ±25 %.
        for (pass, side, measured) in [
            (VaePass::Encode, 64, 523.0),
            (VaePass::Decode, 64, 513.0),
            (VaePass::Encode, 128, 1667.0),
            (VaePass::Decode, 128, 2082.0),
        ] {
            let est = vae_pass_bytes(&vae, pass, DType::F32, 1, (side, side), None, 1 << 28);
            let ratio = est as f64 / (measured * MIB as f64);
            assert!((0.75..=1.25).contains(&ratio), "{pass:?} {side}: {ratio}");
        }
        // Without a limit nothing is tiled.
        let free = vae_tiling(&vae, VaePass::Decode, DType::F32, 1, latent, 1 << 28, None);
        assert!(free.tiling.is_none());
    }

    #[test]
    fn loops_that_cannot_fit_are_refused_with_one_line() {
        let shape = ModelShape::from_arch(Arch::Sd15).unwrap();
        let small = estimate_loop(&shape, &spec(512), DType::F32, 2, Some(24 << 30), KEPT);
        assert!(small.fits, "{small:?}");
        assert!(check_fits(&[small], Some(24 << 30), DType::F32).is_ok());
        let big = estimate_loop(&shape, &spec(4096), DType::F32, 2, Some(4 << 30), KEPT);
        assert!(!big.fits);
        let msg = check_fits(&[big], Some(4 << 30), DType::F32)
            .unwrap_err()
            .to_string();
        assert!(!msg.contains('\n') && msg.contains("4096x4096"), "{msg}");
    }

    #[test]
    fn released_text_encoders_leave_the_heavy_phases() {
        let shape = ModelShape::from_arch(Arch::Sd15).unwrap();
        let text = shape.text_parameters() * 4;
        // CLIP ViT-L/14's text model: 123 M parameters.
        assert!((120e6..126e6).contains(&(text as f64 / 4.0)), "{text}");
        let kept = estimate_loop(&shape, &spec(1024), DType::F32, 2, None, KEPT);
        let freed = estimate_loop(
            &shape,
            &spec(1024),
            DType::F32,
            2,
            None,
            EncoderWeights::Released,
        );
        assert_eq!(kept.weights_bytes, freed.weights_bytes);
        assert_eq!(freed.resident_weights_bytes, kept.weights_bytes - text);
        assert_eq!(freed.peak_bytes, kept.peak_bytes - text);
        // A limit between the two: only the released plan fits, with the same tiling.
        let limit = ((kept.peak_bytes - text / 2) as f64 / HEADROOM) as u64;
        let kept = estimate_loop(&shape, &spec(1024), DType::F32, 2, Some(limit), KEPT);
        assert!(kept.vae_decode_tile.is_some());
        let freed = estimate_loop(
            &shape,
            &spec(1024),
            DType::F32,
            2,
            Some(limit),
            EncoderWeights::Released,
        );
        assert!(freed.fits && freed.vae_decode_tile.is_none(), "{freed:?}");
    }
}
