//! The VAE (AutoencoderKL): image ↔ latents, whole or in overlapping tiles.
//!
//! Our own blocks with diffusers' weight names (`encoder.down_blocks.N.resnets.M.norm1`, …),
//! not candle's, for three reasons:
//! - candle 0.11's `AutoEncoderKL::encode` only returns a distribution whose mean is private
//!   (PR #3841), and img2img must encode deterministically with the distribution's mean;
//! - candle's mid-block `AttentionBlock` materialises all `N²` scores (N = latent pixels:
//!   1 GiB at 1024², 16 GiB at 2048²); ours goes through [`crate::kernels::attention::attention`]
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

mod blocks;
mod norm;
pub(crate) mod tiles;

use std::ops::Range;
use std::sync::Mutex;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::attention::DEFAULT_SCORE_BUDGET;
use crate::kernels::compute::Compute;
use crate::kernels::conv::Conv2d;
use crate::model::config::VaeFile;
use blocks::{DownBlock, MidBlock, Resnet, UpBlock, conv1, conv3};
pub use norm::NormStats;
use norm::{Accumulator, Ctx, Norm};
pub use tiles::{TileMode, Tiling};
use tiles::{accumulate, band, crop, estimate_factor, tile_len, tile_weights, tiles};

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

impl Vae {
    /// Builds the VAE from `vb` with the shape of `cfg`, its CPU products in f32.
    pub fn new(vb: VarBuilder, cfg: &VaeFile) -> Result<Self> {
        Self::with_compute(vb, cfg, Compute::F32)
    }

    /// [`Vae::new`] with the CPU products (convolutions, the mid blocks' attention) in
    /// `compute`'s arithmetic (bf16: kernels and projections packed into bf16 as they load,
    /// when `vb` gives f32 CPU tensors).
    pub fn with_compute(vb: VarBuilder, cfg: &VaeFile, compute: Compute) -> Result<Self> {
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
                        let vb = vb.pp("resnets").pp(j.to_string());
                        Resnet::new(vb, (c, ch[i]), groups, compute)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let down = if i + 1 < ch.len() {
                    Some(Conv2d::with_compute(
                        vb.pp("downsamplers").pp("0").pp("conv"),
                        (ch[i], ch[i]),
                        3,
                        2,
                        0,
                        compute,
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
                        let vb = vb.pp("resnets").pp(j.to_string());
                        Resnet::new(vb, (c, reversed[i]), groups, compute)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let up = if i + 1 < reversed.len() {
                    let vb = vb.pp("upsamplers").pp("0").pp("conv");
                    Some(conv3(vb, reversed[i], reversed[i], compute)?)
                } else {
                    None
                };
                Ok(UpBlock { resnets, up })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Vae {
            enc_conv_in: conv3(enc.pp("conv_in"), cfg.in_channels, ch[0], compute)?,
            enc_down,
            enc_mid: MidBlock::new(enc.pp("mid_block"), last, groups, compute)?,
            enc_norm: Norm::new(enc.pp("conv_norm_out"), groups, last)?,
            enc_conv_out: conv3(enc.pp("conv_out"), last, 2 * latent, compute)?,
            quant_conv: if cfg.use_quant_conv {
                Some(conv1(vb.pp("quant_conv"), 2 * latent, 2 * latent, compute)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(conv1(vb.pp("post_quant_conv"), latent, latent, compute)?)
            } else {
                None
            },
            dec_conv_in: conv3(dec.pp("conv_in"), latent, last, compute)?,
            dec_mid: MidBlock::new(dec.pp("mid_block"), last, groups, compute)?,
            dec_up,
            dec_norm: Norm::new(dec.pp("conv_norm_out"), groups, ch[0])?,
            dec_conv_out: conv3(dec.pp("conv_out"), ch[0], cfg.out_channels, compute)?,
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
                    crate::run::memory::vae::VaePass::Decode
                } else {
                    crate::run::memory::vae::VaePass::Encode
                };
                // Without a limit, only the CPU's available memory is known.
                let limit = match options.memory_limit {
                    Some(limit) => Some(limit),
                    None if like.device().is_cpu() => crate::run::memory::system::available_bytes(),
                    None => None,
                };
                crate::run::memory::vae::vae_tiling(
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
        let xs = self.enc_norm.forward_silu(&xs, &mut ctx)?;
        let mut moments = self.enc_conv_out.forward(&xs)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        crate::kernels::release_scratch();
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
        let image = match tiling {
            None => self.decoder_tail(&features, &mut Ctx::plain(budget)),
            Some(t) => self.decoder_tail_tiled(&features, t, budget),
        };
        crate::kernels::release_scratch();
        image
    }

    /// `conv_in` and the down blocks: pixels → latent-resolution features.
    fn encoder_body(&self, image: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut xs = self.enc_conv_in.forward(image)?;
        for block in &self.enc_down {
            xs = block.forward(xs, ctx)?;
        }
        Ok(xs)
    }

    /// The up blocks and the output layers: latent-resolution features → pixels.
    fn decoder_tail(&self, features: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let xs = {
            let mut xs = features.clone();
            for block in &self.dec_up {
                xs = block.forward(xs, ctx)?;
            }
            self.dec_norm.forward_silu(&xs, ctx)?
        };
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
mod tests;
