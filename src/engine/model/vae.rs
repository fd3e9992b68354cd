//! The VAE (AutoencoderKL): image ↔ latents, whole or in overlapping tiles.
//!
//! Our own blocks with diffusers' weight names (`encoder.down_blocks.N.resnets.M.norm1`, …),
//! not candle's, for three reasons:
//! - candle 0.11's `AutoEncoderKL::encode` only returns a distribution whose mean is private
//!   (PR #3841), and img2img must encode deterministically with the distribution's mean;
//! - candle's mid-block `AttentionBlock` materialises all `N²` scores (N = latent pixels:
//!   1 GiB at 1024², 16 GiB at 2048²); ours goes through [`super::attention::attention`]
//!   with a score budget;
//! - tiled encoding and decoding need every GroupNorm's statistics under our control
//!   ([`NormStats`]).
//!
//! **Tiling.** Only the full-resolution part of the network is tiled: the encoder's
//! `conv_in` + down blocks (pixel space → latent-resolution features) and the decoder's up
//! blocks + output (latent-resolution features → pixels). The mid blocks, with their global
//! attention, always run on the whole latent grid, which is small. Each tile is a core cell
//! of a grid over the latents plus a halo of context on every side; neighbouring tiles are
//! feathered (linear ramps that sum to one) over a band centred on the cell boundary, so no
//! seam is left. GroupNorm statistics differ between a tile and the whole image — the main
//! source of seams and colour shifts in tiled VAEs — so by default every tile is normalised
//! with whole-image statistics estimated by one extra pass over a downscaled copy of the
//! input (multidiffusion's "fast" tiled VAE). See `docs/memory.md` for the measurements.

use std::ops::Range;
use std::sync::Mutex;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::conv::Conv2d;

use super::attention::{self, DEFAULT_SCORE_BUDGET};
use super::config::VaeFile;

const EPS: f64 = 1e-6;

fn conv3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Conv2d> {
    Conv2d::new(vb, cin, cout, 3, 1, 1)
}

fn conv1(vb: VarBuilder, cin: usize, cout: usize) -> Result<Conv2d> {
    Conv2d::new(vb, cin, cout, 1, 1, 0)
}

/// How the GroupNorms of one pass get their statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStats {
    /// Each tile normalises with its own statistics (one pass, as diffusers' tiled VAE does;
    /// tiles may differ slightly in colour).
    PerTile,
    /// Whole-image statistics estimated by an extra pass over the input downscaled to about
    /// the size of one tile (cheap, but poor for decoding: see `docs/memory.md`).
    Estimated,
    /// Whole-image statistics accumulated over the tiles: `n` statistics passes over all
    /// tiles, then the output pass. Each pass accumulates every GroupNorm's statistics over
    /// the tiles' core cells (which partition the image) while normalising with the previous
    /// pass's statistics (the first pass: per-tile ones), so after `k` passes the first `k`
    /// GroupNorms are exact and the rest converge. Costs `n + 1` times one pass.
    Accumulated(usize),
    /// Statistics of a whole (untiled) pass: no memory saved, for measuring what tiling costs
    /// with perfect statistics.
    Exact,
}

impl Default for NormStats {
    /// Per-tile statistics: one pass, and on the random-weight VAEs measured so far the
    /// closest of the bounded-memory choices for decoding (`docs/memory.md`).
    fn default() -> Self {
        NormStats::PerTile
    }
}

/// How to split a VAE pass into tiles. Sizes are in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Side of a tile's core cell (the grid step).
    pub tile: usize,
    /// Context added on each side of a core cell.
    pub halo: usize,
    /// Width of the feathering band centred on each cell boundary (at most `2 × halo`).
    pub blend: usize,
    /// Where the GroupNorms get their statistics.
    pub stats: NormStats,
}

impl Tiling {
    /// Defaults for decoding with `tile`-latent-pixel cells: a 12-latent-pixel halo (the up
    /// blocks' receptive field is about 13) and an 8-latent-pixel (64 px) feathering band.
    pub fn decode(tile: usize) -> Self {
        Tiling {
            tile: tile.max(4),
            halo: 12,
            blend: 8,
            stats: NormStats::default(),
        }
    }

    /// Defaults for encoding with `tile`-latent-pixel cells: an 8-latent-pixel (64 px) halo
    /// and a 4-latent-pixel feathering band.
    pub fn encode(tile: usize) -> Self {
        Tiling {
            tile: tile.max(4),
            halo: 8,
            blend: 4,
            stats: NormStats::default(),
        }
    }
}

/// Whether a VAE pass is tiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TileMode {
    /// The memory planner decides from the size and the memory available
    /// ([`crate::engine::memory::vae_tiling`]).
    #[default]
    Auto,
    /// Always whole.
    Never,
    /// Always tiled with cells of this many latent pixels (defaults otherwise).
    Always(usize),
}

/// Running whole-image GroupNorm statistics, one entry per GroupNorm call of a pass and per
/// (batch, group): count, mean and sum of squared deviations (Chan et al.'s parallel update,
/// in f64 on the host).
#[derive(Debug, Default)]
struct Accumulator {
    layers: Vec<Vec<(f64, f64, f64)>>,
    next: usize,
}

impl Accumulator {
    fn add(&mut self, count: f64, means: &[f32], m2s: &[f32]) {
        if self.layers.len() <= self.next {
            self.layers.push(vec![(0.0, 0.0, 0.0); means.len()]);
        }
        for (acc, (&m, &m2)) in self.layers[self.next].iter_mut().zip(means.iter().zip(m2s)) {
            let (n_a, mean_a, m2_a) = *acc;
            let (m, m2) = (f64::from(m), f64::from(m2));
            let n = n_a + count;
            let delta = m - mean_a;
            *acc = (
                n,
                mean_a + delta * count / n,
                m2_a + m2 + delta * delta * n_a * count / n,
            );
        }
        self.next += 1;
    }

    /// `(mean, var)` tensors of shape `(b, groups, 1)` for every layer.
    fn finish(&self, b: usize, device: &candle_core::Device) -> Result<Vec<(Tensor, Tensor)>> {
        self.layers
            .iter()
            .map(|layer| {
                let groups = layer.len() / b.max(1);
                let mean: Vec<f32> = layer.iter().map(|a| a.1 as f32).collect();
                let var: Vec<f32> = layer.iter().map(|a| (a.2 / a.0.max(1.0)) as f32).collect();
                Ok((
                    Tensor::from_vec(mean, (b, groups, 1), device)?,
                    Tensor::from_vec(var, (b, groups, 1), device)?,
                ))
            })
            .collect()
    }
}

/// A tile's core cell as fractions of its extended window, `(y0, y1, x0, x1)`: at a layer of
/// `h × w` the core is rows `y0·h..y1·h` and columns `x0·w..x1·w`.
type Core = (f64, f64, f64, f64);

/// Per-pass state: how GroupNorms get statistics, and the attention score budget.
struct Ctx {
    record: Option<Vec<(Tensor, Tensor)>>,
    replay: Option<(Vec<(Tensor, Tensor)>, usize)>,
    accumulate: Option<(Accumulator, Core)>,
    budget: usize,
}

impl Ctx {
    fn plain(budget: usize) -> Self {
        Ctx {
            record: None,
            replay: None,
            accumulate: None,
            budget,
        }
    }
}

/// GroupNorm whose statistics can be recorded and replayed.
#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl Norm {
    fn new(vb: VarBuilder, groups: usize, channels: usize) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {channels} channels in {groups} groups");
        }
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Norm {
            weight,
            bias,
            groups,
            eps: EPS,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let internal = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let per_group = c / self.groups * h * w;
        let (mean, var) = match &mut ctx.replay {
            Some((stats, next)) => {
                let s = stats
                    .get(*next)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("GroupNorm replay ran out".into()))?;
                *next += 1;
                s
            }
            None => {
                let xg = x.reshape((b, self.groups, per_group))?.to_dtype(internal)?;
                let mean = (xg.sum_keepdim(2)? / per_group as f64)?;
                let var = (xg.broadcast_sub(&mean)?.sqr()?.sum_keepdim(2)? / per_group as f64)?;
                (mean, var)
            }
        };
        if let Some(record) = &mut ctx.record {
            record.push((mean.clone(), var.clone()));
        }
        if let Some((acc, (y0, y1, x0, x1))) = &mut ctx.accumulate {
            // This tile's share of the whole-image statistics: its core cell only.
            let at = |f: f64, n: usize| ((f * n as f64).round() as usize).min(n);
            let (ys, xs) = (at(*y0, h)..at(*y1, h), at(*x0, w)..at(*x1, w));
            let count = (ys.len() * xs.len() * (c / self.groups)) as f64;
            if count > 0.0 {
                let core = x
                    .narrow(2, ys.start, ys.len())?
                    .narrow(3, xs.start, xs.len())?
                    .contiguous()?
                    .reshape((b, self.groups, count as usize))?
                    .to_dtype(internal)?;
                let m = (core.sum_keepdim(2)? / count)?;
                let m2 = core.broadcast_sub(&m)?.sqr()?.sum_keepdim(2)?;
                let flat = |t: Tensor| -> Result<Vec<f32>> {
                    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
                };
                acc.add(count, &flat(m)?, &flat(m2)?);
            } else {
                acc.next += 1;
            }
        }
        // y = x·s + t per channel, with s = weight / √(var + eps), t = bias − mean·s.
        let per_channel = |t: &Tensor| -> Result<Tensor> {
            t.broadcast_as((b, self.groups, c / self.groups))?
                .reshape((b, c, 1, 1))
        };
        let inv = per_channel(&(var + self.eps)?.sqrt()?.recip()?)?;
        let mean = per_channel(&mean)?;
        let weight = self.weight.to_dtype(internal)?.reshape((1, c, 1, 1))?;
        let bias = self.bias.to_dtype(internal)?.reshape((1, c, 1, 1))?;
        let scale = inv.broadcast_mul(&weight)?;
        let shift = bias.broadcast_sub(&mean.mul(&scale)?)?;
        x.broadcast_mul(&scale.to_dtype(dtype)?)?
            .broadcast_add(&shift.to_dtype(dtype)?)
    }
}

/// A residual block (two GroupNorm–SiLU–conv layers and an optional 1×1 shortcut).
#[derive(Debug)]
struct Resnet {
    norm1: Norm,
    conv1: Conv2d,
    norm2: Norm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Resnet {
            norm1: Norm::new(vb.pp("norm1"), groups, cin)?,
            conv1: conv3(vb.pp("conv1"), cin, cout)?,
            norm2: Norm::new(vb.pp("norm2"), groups, cout)?,
            conv2: conv3(vb.pp("conv2"), cout, cout)?,
            shortcut: if cin != cout {
                Some(conv1(vb.pp("conv_shortcut"), cin, cout)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = candle_nn::ops::silu(&self.norm1.forward(x, ctx)?)?;
        let h = self.conv1.forward(&h)?;
        let h = candle_nn::ops::silu(&self.norm2.forward(&h, ctx)?)?;
        let h = self.conv2.forward(&h)?;
        match &self.shortcut {
            Some(conv) => conv.forward(x)? + h,
            None => x + h,
        }
    }
}

/// A q/k/v/out projection: a linear layer, or a 1×1 convolution in old checkpoints.
fn projection(vb: VarBuilder, channels: usize) -> Result<Linear> {
    let weight = match vb.get((channels, channels), "weight") {
        Ok(w) => w,
        Err(_) => vb
            .get((channels, channels, 1, 1), "weight")?
            .reshape((channels, channels))?,
    };
    Ok(Linear::new(weight, Some(vb.get(channels, "bias")?)))
}

/// Single-head self-attention over all latent pixels, through the blocked
/// [`attention::attention`].
#[derive(Debug)]
struct AttnBlock {
    norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl AttnBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // Current diffusers names, or the pre-0.14 ones.
        let names = if vb.contains_tensor("to_q.weight") || !vb.contains_tensor("query.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        Ok(AttnBlock {
            norm: Norm::new(vb.pp("group_norm"), groups, channels)?,
            q: projection(vb.pp(names[0]), channels)?,
            k: projection(vb.pp(names[1]), channels)?,
            v: projection(vb.pp(names[2]), channels)?,
            out: projection(vb.pp(names[3]), channels)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hs = self
            .norm
            .forward(x, ctx)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.q.forward(&hs)?;
        let k = self.k.forward(&hs)?;
        let v = self.v.forward(&hs)?;
        drop(hs);
        let o = attention::attention(&q, &k, &v, 1.0 / (c as f64).sqrt(), ctx.budget)?;
        drop((q, k, v));
        let o = self
            .out
            .forward(&o)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        o + x
    }
}

/// Resnet, attention, resnet.
#[derive(Debug)]
struct MidBlock {
    resnet0: Resnet,
    attn: AttnBlock,
    resnet1: Resnet,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let resnets = vb.pp("resnets");
        Ok(MidBlock {
            resnet0: Resnet::new(resnets.pp("0"), channels, channels, groups)?,
            attn: AttnBlock::new(vb.pp("attentions").pp("0"), channels, groups)?,
            resnet1: Resnet::new(resnets.pp("1"), channels, channels, groups)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.resnet0.forward(x, ctx)?;
        let x = self.attn.forward(&x, ctx)?;
        self.resnet1.forward(&x, ctx)
    }
}

/// Resnets, then an optional strided convolution (padding right and bottom by one, as
/// diffusers' encoder does).
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<Resnet>,
    down: Option<Conv2d>,
}

impl DownBlock {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x, ctx)?;
        }
        match &self.down {
            Some(conv) => conv.forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?),
            None => Ok(x),
        }
    }
}

/// Resnets, then an optional nearest-neighbour ×2 upsampling and convolution.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<Resnet>,
    up: Option<Conv2d>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x, ctx)?;
        }
        match &self.up {
            Some(conv) => {
                let (_, _, h, w) = x.dims4()?;
                let up = x.upsample_nearest2d(2 * h, 2 * w)?;
                drop(x);
                conv.forward(&up)
            }
            None => Ok(x),
        }
    }
}

/// The VAE.
#[derive(Debug)]
pub struct Vae {
    enc_conv_in: Conv2d,
    enc_down: Vec<DownBlock>,
    enc_mid: MidBlock,
    enc_norm: Norm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_up: Vec<UpBlock>,
    dec_norm: Norm,
    dec_conv_out: Conv2d,
    config: VaeFile,
    options: Mutex<VaeOptions>,
    /// Latents are `mean × scaling_factor`.
    pub scaling_factor: f64,
    /// Latent channels.
    pub latent_channels: usize,
    /// Pixels per latent, per side.
    pub downscale: usize,
}

/// Run-time options of [`Vae::encode`] and [`Vae::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeOptions {
    /// Tiling of encodes.
    pub encode: TileMode,
    /// Tiling of decodes.
    pub decode: TileMode,
    /// Bytes of attention scores held at once in the mid blocks.
    pub score_budget: usize,
    /// Bytes the automatic tiling may use; `None`: what the system has available.
    pub memory_limit: Option<u64>,
}

impl Default for VaeOptions {
    fn default() -> Self {
        VaeOptions {
            encode: TileMode::Auto,
            decode: TileMode::Auto,
            score_budget: DEFAULT_SCORE_BUDGET,
            memory_limit: None,
        }
    }
}

/// Near-equal cells of at most `tile` over `0..n`.
fn cells(n: usize, tile: usize) -> Vec<Range<usize>> {
    let count = n.div_ceil(tile.max(1)).max(1);
    (0..count)
        .map(|i| (i * n / count)..((i + 1) * n / count))
        .collect()
}

/// Feathering weights, in output pixels, of a tile covering `ext` (output pixels) whose cell
/// is `cell`, over an axis of `n` pixels: 1 inside the cell, linear ramps of width `band`
/// centred on each inner cell boundary (none at the image border). Neighbours' ramps are
/// complementary, so the weights of all tiles sum to one everywhere.
fn feather(ext: &Range<usize>, cell: &Range<usize>, n: usize, band: usize) -> Vec<f32> {
    let half = band as f64 / 2.0;
    let ramp = |x: f64, edge: f64| -> f64 {
        if band == 0 {
            if x >= edge { 1.0 } else { 0.0 }
        } else {
            ((x - (edge - half)) / band as f64).clamp(0.0, 1.0)
        }
    };
    ext.clone()
        .map(|p| {
            let x = p as f64 + 0.5;
            let mut w = 1.0;
            if cell.start > 0 {
                w *= ramp(x, cell.start as f64);
            }
            if cell.end < n {
                w *= 1.0 - ramp(x, cell.end as f64);
            }
            w as f32
        })
        .collect()
}

/// One tile: its cell and extended window in latent pixels along each axis.
struct Tile {
    cell: (Range<usize>, Range<usize>),
    ext: (Range<usize>, Range<usize>),
}

fn tiles(h: usize, w: usize, tiling: &Tiling) -> Vec<Tile> {
    let mut out = Vec::new();
    let halo = tiling.halo;
    let extend = |c: &Range<usize>, n: usize| c.start.saturating_sub(halo)..(c.end + halo).min(n);
    for cy in cells(h, tiling.tile) {
        for cx in cells(w, tiling.tile) {
            out.push(Tile {
                ext: (extend(&cy, h), extend(&cx, w)),
                cell: (cy.clone(), cx),
            });
        }
    }
    out
}

/// The feathering band in latent pixels: at most `2 × halo` (both tiles of a boundary cover
/// it) and at most the smallest cell (bands of neighbouring boundaries never overlap, so the
/// weights stay a partition of unity).
fn band(h: usize, w: usize, t: &Tiling) -> usize {
    let smallest = cells(h, t.tile)
        .iter()
        .chain(cells(w, t.tile).iter())
        .map(tile_len)
        .min()
        .unwrap_or(0);
    t.blend.min(2 * t.halo).min(smallest)
}

/// `(1, 1, h, w)` weights of a tile in output units (`scale` output pixels per latent), with
/// a feathering band of `band` latent pixels.
fn tile_weights(
    tile: &Tile,
    (h, w): (usize, usize),
    scale: usize,
    band: usize,
    like: &Tensor,
) -> Result<Tensor> {
    let s = |r: &Range<usize>| (r.start * scale)..(r.end * scale);
    let band = band * scale;
    let wy = feather(&s(&tile.ext.0), &s(&tile.cell.0), h * scale, band);
    let wx = feather(&s(&tile.ext.1), &s(&tile.cell.1), w * scale, band);
    let wy = Tensor::from_vec(wy, (1, 1, tile_len(&tile.ext.0) * scale, 1), like.device())?;
    let wx = Tensor::from_vec(wx, (1, 1, 1, tile_len(&tile.ext.1) * scale), like.device())?;
    wy.broadcast_mul(&wx)
}

fn tile_len(r: &Range<usize>) -> usize {
    r.end - r.start
}

/// `x` cropped to `(ys, xs)` on its last two axes, contiguous.
fn crop(x: &Tensor, ys: &Range<usize>, xs: &Range<usize>) -> Result<Tensor> {
    x.narrow(2, ys.start, tile_len(ys))?
        .narrow(3, xs.start, tile_len(xs))?
        .contiguous()
}

/// Adds `src` into `canvas` at `(ys, xs)` (output units).
fn accumulate(canvas: &Tensor, src: &Tensor, ys: Range<usize>, xs: Range<usize>) -> Result<Tensor> {
    let (b, c, _, _) = canvas.dims4()?;
    let current = crop(canvas, &ys, &xs)?;
    canvas.slice_assign(&[0..b, 0..c, ys, xs], &(current + src)?)
}

/// The downscale factor that brings a `(h, w)` grid to about one `tile`-sized cell.
fn estimate_factor(h: usize, w: usize, tile: usize) -> usize {
    h.max(w).div_ceil(tile.max(1)).max(1)
}

impl Vae {
    /// Builds the VAE from `vb` with the shape of `cfg`.
    pub fn new(vb: VarBuilder, cfg: &VaeFile) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        if ch.is_empty() {
            candle_core::bail!("block_out_channels is empty");
        }
        let groups = cfg.norm_num_groups;
        let last = ch[ch.len() - 1];
        let latent = cfg.latent_channels;

        let enc = vb.pp("encoder");
        let enc_down = (0..ch.len())
            .map(|i| {
                let vb = enc.pp("down_blocks").pp(i.to_string());
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                let resnets = (0..cfg.layers_per_block)
                    .map(|j| {
                        let c = if j == 0 { cin } else { ch[i] };
                        Resnet::new(vb.pp("resnets").pp(j.to_string()), c, ch[i], groups)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let down = if i + 1 < ch.len() {
                    Some(Conv2d::new(
                        vb.pp("downsamplers").pp("0").pp("conv"),
                        ch[i],
                        ch[i],
                        3,
                        2,
                        0,
                    )?)
                } else {
                    None
                };
                Ok(DownBlock { resnets, down })
            })
            .collect::<Result<Vec<_>>>()?;

        let dec = vb.pp("decoder");
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let dec_up = (0..reversed.len())
            .map(|i| {
                let vb = dec.pp("up_blocks").pp(i.to_string());
                let cin = if i == 0 { reversed[0] } else { reversed[i - 1] };
                let resnets = (0..cfg.layers_per_block + 1)
                    .map(|j| {
                        let c = if j == 0 { cin } else { reversed[i] };
                        Resnet::new(vb.pp("resnets").pp(j.to_string()), c, reversed[i], groups)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let up = if i + 1 < reversed.len() {
                    Some(conv3(
                        vb.pp("upsamplers").pp("0").pp("conv"),
                        reversed[i],
                        reversed[i],
                    )?)
                } else {
                    None
                };
                Ok(UpBlock { resnets, up })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Vae {
            enc_conv_in: conv3(enc.pp("conv_in"), cfg.in_channels, ch[0])?,
            enc_down,
            enc_mid: MidBlock::new(enc.pp("mid_block"), last, groups)?,
            enc_norm: Norm::new(enc.pp("conv_norm_out"), groups, last)?,
            enc_conv_out: conv3(enc.pp("conv_out"), last, 2 * latent)?,
            quant_conv: if cfg.use_quant_conv {
                Some(conv1(vb.pp("quant_conv"), 2 * latent, 2 * latent)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(conv1(vb.pp("post_quant_conv"), latent, latent)?)
            } else {
                None
            },
            dec_conv_in: conv3(dec.pp("conv_in"), latent, last)?,
            dec_mid: MidBlock::new(dec.pp("mid_block"), last, groups)?,
            dec_up,
            dec_norm: Norm::new(dec.pp("conv_norm_out"), groups, ch[0])?,
            dec_conv_out: conv3(dec.pp("conv_out"), ch[0], cfg.out_channels)?,
            config: cfg.clone(),
            options: Mutex::new(VaeOptions::default()),
            scaling_factor: cfg.scaling_factor,
            latent_channels: latent,
            downscale: cfg.downscale(),
        })
    }

    /// The config this VAE was built with.
    pub fn config(&self) -> &VaeFile {
        &self.config
    }

    /// The current run-time options.
    pub fn options(&self) -> VaeOptions {
        match self.options.lock() {
            Ok(o) => *o,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Replaces the run-time options (tiling, attention budget, memory limit).
    pub fn set_options(&self, options: VaeOptions) {
        match self.options.lock() {
            Ok(mut o) => *o = options,
            Err(poisoned) => *poisoned.into_inner() = options,
        }
    }

    /// Resolves `mode` for a pass over `(h, w)` latents of batch `b`.
    fn resolve(
        &self,
        mode: TileMode,
        decode: bool,
        like: &Tensor,
        h: usize,
        w: usize,
    ) -> Option<Tiling> {
        let b = like.dim(0).unwrap_or(1);
        let dtype = like.dtype();
        let make = |tile| {
            if decode {
                Tiling::decode(tile)
            } else {
                Tiling::encode(tile)
            }
        };
        match mode {
            TileMode::Never => None,
            TileMode::Always(tile) => Some(make(tile)),
            TileMode::Auto => {
                let options = self.options();
                let pass = if decode {
                    crate::engine::memory::VaePass::Decode
                } else {
                    crate::engine::memory::VaePass::Encode
                };
                // Without a limit, only the CPU's available memory is known.
                let limit = match options.memory_limit {
                    Some(limit) => Some(limit),
                    None if like.device().is_cpu() => crate::engine::memory::available_bytes(),
                    None => None,
                };
                crate::engine::memory::vae_tiling(
                    &self.config,
                    pass,
                    dtype,
                    b,
                    (h, w),
                    options.score_budget,
                    limit,
                )
                .tiling
            }
        }
    }

    /// The mean of the latent distribution of `image` (NCHW, values in [−1, 1]), unscaled;
    /// tiled as the options say.
    pub fn encode_mean(&self, image: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = image.dims4()?;
        let d = self.downscale;
        let tiling = self.resolve(self.options().encode, false, image, h / d, w / d);
        self.encode_mean_with(image, tiling.as_ref())
    }

    /// [`Vae::encode_mean`] whole (`None`) or with the given tiling.
    pub fn encode_mean_with(&self, image: &Tensor, tiling: Option<&Tiling>) -> Result<Tensor> {
        let budget = self.options().score_budget;
        let features = match tiling {
            None => self.encoder_body(image, &mut Ctx::plain(budget))?,
            Some(t) => self.encoder_body_tiled(image, t, budget)?,
        };
        let mut ctx = Ctx::plain(budget);
        let xs = self.enc_mid.forward(&features, &mut ctx)?;
        drop(features);
        let xs = candle_nn::ops::silu(&self.enc_norm.forward(&xs, &mut ctx)?)?;
        let mut moments = self.enc_conv_out.forward(&xs)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        moments.narrow(1, 0, self.latent_channels)
    }

    /// Scaled latents for the diffusion model: `encode_mean(image) × scaling_factor`.
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        self.encode_mean(image)? * self.scaling_factor
    }

    /// The image (NCHW, nominally in [−1, 1]) for scaled latents; tiled as the options say.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = latents.dims4()?;
        let tiling = self.resolve(self.options().decode, true, latents, h, w);
        self.decode_with(latents, tiling.as_ref())
    }

    /// [`Vae::decode`] whole (`None`) or with the given tiling.
    pub fn decode_with(&self, latents: &Tensor, tiling: Option<&Tiling>) -> Result<Tensor> {
        let budget = self.options().score_budget;
        let mut xs = (latents / self.scaling_factor)?;
        if let Some(conv) = &self.post_quant_conv {
            xs = conv.forward(&xs)?;
        }
        let xs = self.dec_conv_in.forward(&xs)?;
        let features = self.dec_mid.forward(&xs, &mut Ctx::plain(budget))?;
        drop(xs);
        match tiling {
            None => self.decoder_tail(&features, &mut Ctx::plain(budget)),
            Some(t) => self.decoder_tail_tiled(&features, t, budget),
        }
    }

    /// `conv_in` and the down blocks: pixels → latent-resolution features.
    fn encoder_body(&self, image: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut xs = self.enc_conv_in.forward(image)?;
        for block in &self.enc_down {
            xs = block.forward(&xs, ctx)?;
        }
        Ok(xs)
    }

    /// The up blocks and the output layers: latent-resolution features → pixels.
    fn decoder_tail(&self, features: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut xs = features.clone();
        for block in &self.dec_up {
            xs = block.forward(&xs, ctx)?;
        }
        let xs = candle_nn::ops::silu(&self.dec_norm.forward(&xs, ctx)?)?;
        self.dec_conv_out.forward(&xs)
    }

    /// GroupNorm statistics of a pass of `run` over `input` downscaled (area average) by
    /// `factor`, for [`NormStats::Estimated`].
    fn estimate_stats(
        &self,
        input: &Tensor,
        factor: usize,
        budget: usize,
        run: impl Fn(&Tensor, &mut Ctx) -> Result<Tensor>,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let (_, _, h, w) = input.dims4()?;
        let small = if factor > 1 {
            let (h2, w2) = ((h / factor).max(1) * factor, (w / factor).max(1) * factor);
            crop(input, &(0..h2.min(h)), &(0..w2.min(w)))?.avg_pool2d(factor)?
        } else {
            input.clone()
        };
        let mut ctx = Ctx {
            record: Some(Vec::new()),
            ..Ctx::plain(budget)
        };
        run(&small, &mut ctx)?;
        Ok(ctx.record.unwrap_or_default())
    }

    fn tile_ctx(stats: &Option<Vec<(Tensor, Tensor)>>, budget: usize) -> Ctx {
        Ctx {
            replay: stats.as_ref().map(|s| (s.clone(), 0)),
            ..Ctx::plain(budget)
        }
    }

    /// Whole-image GroupNorm statistics for [`NormStats::Accumulated`]: `passes` runs of
    /// [`Self::accumulate_pass`], each normalising with the previous one's statistics.
    fn accumulate_stats(
        &self,
        input: &Tensor,
        t: &Tiling,
        scale: usize,
        passes: usize,
        budget: usize,
        run: impl Fn(&Tensor, &mut Ctx) -> Result<Tensor>,
    ) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        let mut stats = None;
        for _ in 0..passes {
            stats = Some(self.accumulate_pass(input, t, scale, &stats, budget, &run)?);
        }
        Ok(stats)
    }

    /// Runs `run` over every tile of `input` (`scale` input pixels per latent), normalising
    /// with `stats` (per-tile statistics when `None`), and accumulates each GroupNorm's
    /// statistics over the tiles' core cells.
    fn accumulate_pass(
        &self,
        input: &Tensor,
        t: &Tiling,
        scale: usize,
        stats: &Option<Vec<(Tensor, Tensor)>>,
        budget: usize,
        run: &impl Fn(&Tensor, &mut Ctx) -> Result<Tensor>,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let (b, _, ih, iw) = input.dims4()?;
        let (h, w) = (ih / scale, iw / scale);
        let mut acc = Accumulator::default();
        for tile in tiles(h, w, t) {
            let s = |r: &Range<usize>| (r.start * scale)..(r.end * scale);
            let x = crop(input, &s(&tile.ext.0), &s(&tile.ext.1))?;
            let frac = |cell: &Range<usize>, ext: &Range<usize>| {
                let len = tile_len(ext) as f64;
                (
                    (cell.start - ext.start) as f64 / len,
                    (cell.end - ext.start) as f64 / len,
                )
            };
            let (y0, y1) = frac(&tile.cell.0, &tile.ext.0);
            let (x0, x1) = frac(&tile.cell.1, &tile.ext.1);
            acc.next = 0;
            let mut ctx = Ctx {
                accumulate: Some((acc, (y0, y1, x0, x1))),
                ..Self::tile_ctx(stats, budget)
            };
            run(&x, &mut ctx)?;
            acc = match ctx.accumulate {
                Some((acc, _)) => acc,
                None => Accumulator::default(),
            };
        }
        acc.finish(b, input.device())
    }

    fn decoder_tail_tiled(&self, features: &Tensor, t: &Tiling, budget: usize) -> Result<Tensor> {
        let (b, _, h, w) = features.dims4()?;
        let d = self.downscale;
        let stats = match t.stats {
            NormStats::PerTile => None,
            NormStats::Estimated => Some(self.estimate_stats(
                features,
                estimate_factor(h, w, t.tile),
                budget,
                |x, ctx| self.decoder_tail(x, ctx),
            )?),
            NormStats::Exact => {
                Some(self.estimate_stats(features, 1, budget, |x, ctx| self.decoder_tail(x, ctx))?)
            }
            NormStats::Accumulated(passes) => {
                self.accumulate_stats(features, t, 1, passes, budget, |x, ctx| {
                    self.decoder_tail(x, ctx)
                })?
            }
        };
        let out_channels = self.config.out_channels;
        let mut canvas = Tensor::zeros(
            (b, out_channels, h * d, w * d),
            DType::F32,
            features.device(),
        )?;
        for tile in tiles(h, w, t) {
            let x = crop(features, &tile.ext.0, &tile.ext.1)?;
            let y = self
                .decoder_tail(&x, &mut Self::tile_ctx(&stats, budget))?
                .to_dtype(DType::F32)?;
            let weights = tile_weights(&tile, (h, w), d, band(h, w, t), &y)?;
            let s = |r: &Range<usize>| (r.start * d)..(r.end * d);
            canvas = accumulate(
                &canvas,
                &y.broadcast_mul(&weights)?,
                s(&tile.ext.0),
                s(&tile.ext.1),
            )?;
        }
        canvas.to_dtype(features.dtype())
    }

    fn encoder_body_tiled(&self, image: &Tensor, t: &Tiling, budget: usize) -> Result<Tensor> {
        let (b, _, ph, pw) = image.dims4()?;
        let d = self.downscale;
        let (h, w) = (ph / d, pw / d);
        let stats = match t.stats {
            NormStats::PerTile => None,
            NormStats::Estimated => {
                // Downscale by a multiple of the VAE's own factor so the small pass stays
                // divisible.
                let f = estimate_factor(h, w, t.tile);
                Some(self.estimate_stats(image, f, budget, |x, ctx| self.encoder_body(x, ctx))?)
            }
            NormStats::Exact => {
                Some(self.estimate_stats(image, 1, budget, |x, ctx| self.encoder_body(x, ctx))?)
            }
            NormStats::Accumulated(passes) => {
                self.accumulate_stats(image, t, d, passes, budget, |x, ctx| {
                    self.encoder_body(x, ctx)
                })?
            }
        };
        let channels = self.config.block_out_channels[self.config.block_out_channels.len() - 1];
        let mut canvas = Tensor::zeros((b, channels, h, w), DType::F32, image.device())?;
        for tile in tiles(h, w, t) {
            let s = |r: &Range<usize>| (r.start * d)..(r.end * d);
            let x = crop(image, &s(&tile.ext.0), &s(&tile.ext.1))?;
            let y = self
                .encoder_body(&x, &mut Self::tile_ctx(&stats, budget))?
                .to_dtype(DType::F32)?;
            let weights = tile_weights(&tile, (h, w), 1, band(h, w, t), &y)?;
            canvas = accumulate(
                &canvas,
                &y.broadcast_mul(&weights)?,
                tile.ext.0.clone(),
                tile.ext.1.clone(),
            )?;
        }
        canvas.to_dtype(image.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_the_axis() {
        for n in [1, 7, 64, 100, 257] {
            for tile in [1, 4, 16, 64, 300] {
                let c = cells(n, tile);
                assert_eq!(c[0].start, 0);
                assert_eq!(c.last().unwrap().end, n);
                assert!(c.windows(2).all(|p| p[0].end == p[1].start));
                assert!(
                    c.iter()
                        .all(|r| r.end - r.start <= tile.max(1) && r.end > r.start)
                );
            }
        }
    }

    #[test]
    fn feathering_weights_sum_to_one() {
        let n = 200;
        for (tile, halo, band) in [(64, 12, 8), (50, 8, 16), (33, 4, 0), (200, 4, 4)] {
            let t = Tiling {
                tile,
                halo,
                blend: band,
                stats: NormStats::PerTile,
            };
            let mut sum = vec![0f32; n * n];
            let band = super::band(n, n, &t);
            for tl in tiles(n, n, &t) {
                let wy = feather(&tl.ext.0, &tl.cell.0, n, band);
                let wx = feather(&tl.ext.1, &tl.cell.1, n, band);
                for (i, y) in tl.ext.0.clone().enumerate() {
                    for (j, x) in tl.ext.1.clone().enumerate() {
                        sum[y * n + x] += wy[i] * wx[j];
                    }
                }
            }
            let worst = sum.iter().map(|s| (s - 1.0).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-5, "tile {tile} band {band}: off by {worst}");
        }
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;
    use candle_core::Device;

    fn vae() -> Vae {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd/vae");
        let cfg: VaeFile =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let path = dir.join("diffusion_pytorch_model.safetensors");
        // SAFETY: a read-only test fixture.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
            .unwrap();
        Vae::new(vb, &cfg).unwrap()
    }

    #[test]
    fn accumulated_statistics_make_the_first_layers_exact() {
        let vae = vae();
        let image = Tensor::randn(0f32, 1.0, (1, 3, 128, 128), &Device::Cpu).unwrap();
        let mut whole = Ctx {
            record: Some(Vec::new()),
            ..Ctx::plain(1 << 28)
        };
        vae.encoder_body(&image, &mut whole).unwrap();
        let exact = whole.record.unwrap();
        let t = Tiling {
            tile: 6,
            halo: 4,
            blend: 2,
            stats: NormStats::Accumulated(1),
        };
        for passes in 1..=3 {
            let acc = vae
                .accumulate_stats(&image, &t, 8, passes, 1 << 28, |x, ctx| {
                    vae.encoder_body(x, ctx)
                })
                .unwrap()
                .unwrap();
            assert_eq!(acc.len(), exact.len());
            let errs: Vec<String> = acc
                .iter()
                .zip(&exact)
                .map(|((m, v), (em, ev))| {
                    let d = crate::engine::model::max_abs_diff;
                    format!("{:.1e}/{:.1e}", d(m, em), d(v, ev))
                })
                .collect();
            eprintln!("passes {passes}: {}", errs.join(" "));
            // The first `passes` GroupNorms see exact whole-image statistics.
            for ((m, v), (em, ev)) in acc.iter().zip(&exact).take(passes) {
                let d = |a: &Tensor, b: &Tensor| {
                    (a - b)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                };
                assert!(
                    d(m, em) < 1e-5 && d(v, ev) < 1e-5,
                    "passes {passes}: {}",
                    errs.join(" ")
                );
            }
        }
    }
}
