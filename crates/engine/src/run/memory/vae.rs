//! The VAE passes' peak memory, whole or tiled, and the choice of tiling that makes a pass
//! fit a limit. The VAE's automatic tiling (`model::vae`) asks [`vae_tiling`]; this file
//! needs only the VAE's config and its [`Tiling`], nothing of the rest of the planner but
//! its headroom.

use candle_core::DType;

use super::budget::{HEADROOM, MIB};
use crate::model::config::VaeFile;
use crate::model::vae::tiles::Tiling;

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

/// Peak bytes of a VAE pass over `(h, w)` latents (batch `batch`, activations in `dtype`),
/// whole (`tiling = None`) or tiled, weights excluded. Attention scores count
/// `2 × score_budget` (scores and probabilities), at most the whole score matrix.
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
