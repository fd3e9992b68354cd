//! The denoising UNet (diffusers' `UNet2DConditionModel` for SD 1.x, 2.x and SDXL), flat and
//! readable in the style of candle's examples.
//!
//! SDXL's differences are all configuration (levels without attention, transformer depth and
//! heads per level, linear projections, 2048-wide context) except one: the `"text_time"`
//! added conditioning ([`AddedCond`]), an MLP over the pooled text embedding and the
//! sinusoidal embeddings of the six size/crop ids, added to the time embedding.
//!
//! Our own rather than candle's `UNet2DConditionModel` (see the sub-modules for details):
//! exact GELU in the feed-forward (diffusers parity), attention with a memory budget
//! (1024² and beyond), GroupNorm groups from the config in every block, and upsampling to
//! the skip connection's size so any latent size works. Weight names are diffusers'.

mod blocks;
mod encoder;
mod transformer;

use std::path::Path;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::attention::DEFAULT_SCORE_BUDGET;
use crate::kernels::compute::Compute;
use crate::kernels::conv::Conv2d;
use crate::kernels::norm::GroupNorm;
use crate::model::config::{Level, TextTime, UNetFile};
pub(crate) use blocks::conv3;
use blocks::{ResnetBlock, Upsample};
pub use encoder::{AddedCond, Encoded, Encoder};
use encoder::{Stage, transformers};

/// A ControlNet's output for one call, already scaled: one residual per skip connection
/// (added to it before the up blocks use it) and one for the mid block's output (diffusers'
/// `down_block_additional_residuals` and `mid_block_additional_residual`).
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    /// One per skip connection, in the order the encoder makes them.
    pub down: Vec<Tensor>,
    /// Added to the mid block's output.
    pub mid: Tensor,
}

/// The UNet.
#[derive(Debug)]
pub struct UNet {
    encoder: Encoder,
    up: Vec<Stage<Upsample>>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    score_budget: usize,
}

impl UNet {
    /// Builds the UNet described by `cfg` (read from `config_path`, named in errors) from
    /// `vb`, its CPU products in f32.
    pub fn new(vb: VarBuilder, cfg: &UNetFile, config_path: &Path) -> loopback_core::Result<Self> {
        Self::with_compute(vb, cfg, config_path, Compute::F32)
    }

    /// [`UNet::new`] with the CPU products (convolutions, attention, linear layers) in
    /// `compute`'s arithmetic.
    pub fn with_compute(
        vb: VarBuilder,
        cfg: &UNetFile,
        config_path: &Path,
        compute: Compute,
    ) -> loopback_core::Result<Self> {
        let levels = cfg.levels(config_path)?;
        let text_time = cfg.text_time(config_path)?;
        Self::build(vb, cfg, (&levels, text_time), compute).map_err(|e| {
            loopback_core::Error::input(
                config_path,
                format!(
                    "the UNet weights do not match this config: {}",
                    crate::error::candle_msg(&e)
                ),
            )
        })
    }

    fn build(
        vb: VarBuilder,
        cfg: &UNetFile,
        (levels, text_time): (&[Level], Option<TextTime>),
        compute: Compute,
    ) -> Result<Self> {
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let c0 = levels[0].channels;
        let temb = 4 * c0;
        let n = levels.len();
        let resnet = |vb: VarBuilder, cin, cout| {
            ResnetBlock::new(vb, (cin, cout), temb, (groups, eps), compute)
        };
        let encoder = Encoder::build(&vb, cfg, (levels, text_time), compute)?;

        let mut up = Vec::with_capacity(n);
        let mut prev = levels[n - 1].channels;
        for i in 0..n {
            let level = &levels[n - 1 - i];
            let skip_level = levels[n - 1 - (i + 1).min(n - 1)].channels;
            let vb = vb.pp("up_blocks").pp(i.to_string());
            let count = cfg.layers_per_block + 1;
            let resnets = (0..count)
                .map(|j| {
                    let skip = if j + 1 == count {
                        skip_level
                    } else {
                        level.channels
                    };
                    let from = if j == 0 { prev } else { level.channels };
                    resnet(
                        vb.pp("resnets").pp(j.to_string()),
                        from + skip,
                        level.channels,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let sampler = if i + 1 < n {
                Some(Upsample::new(
                    vb.pp("upsamplers").pp("0"),
                    level.channels,
                    compute,
                )?)
            } else {
                None
            };
            up.push(Stage {
                resnets,
                attentions: transformers(&vb, count, level, cfg, compute)?,
                sampler,
            });
            prev = level.channels;
        }

        Ok(UNet {
            encoder,
            up,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, c0, eps)?,
            conv_out: conv3(vb.pp("conv_out"), c0, cfg.out_channels, 1, compute)?,
            score_budget: DEFAULT_SCORE_BUDGET,
        })
    }

    /// Bytes of attention scores held at once (default
    /// [`DEFAULT_SCORE_BUDGET`]); smaller saves memory at some speed.
    pub fn set_score_budget(&mut self, bytes: usize) {
        self.score_budget = bytes.max(1);
    }

    /// The current attention score budget in bytes.
    pub fn score_budget(&self) -> usize {
        self.score_budget
    }

    /// Whether the UNet needs SDXL's [`AddedCond`] (its config has `"text_time"`).
    pub fn needs_added_cond(&self) -> bool {
        self.encoder.needs_added_cond()
    }

    /// The predicted noise (or v) for `sample: (batch, in_channels, h, w)` at `timestep`,
    /// conditioned on `context: (batch, tokens, cross_attention_dim)`. For UNets without
    /// added conditioning (SD 1.x/2.x); an SDXL UNet needs [`UNet::forward_with`].
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_with(sample, timestep, context, None)
    }

    /// [`UNet::forward`] with SDXL's added conditioning (required by SDXL UNets, refused by
    /// the others).
    pub fn forward_with(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
    ) -> Result<Tensor> {
        self.forward_controlled(sample, timestep, context, added, None)
    }

    /// [`UNet::forward_with`] with a ControlNet's residuals added to the skip connections and
    /// the mid block's output.
    pub fn forward_controlled(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        self.forward_observed(sample, timestep, context, added, control, &mut |_, _| {})
    }

    /// [`UNet::forward_controlled`], showing `observe` every block's output as it is made:
    /// `skip.N` (the encoder's skip connections: `conv_in` and every down block's resnets and
    /// downsamplers), `mid`, `up.N` (each up block) and `out` (for tests that look for
    /// overflow).
    pub fn forward_observed(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
        control: Option<&ControlResiduals>,
        observe: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor> {
        let (_, _, height, width) = sample.dims4()?;
        let budget = self.score_budget;
        let Encoded {
            mut skips,
            mut mid,
            silu_emb,
        } = self
            .encoder
            .forward(sample, timestep, context, added, None, budget)?;
        if let Some(control) = control {
            if control.down.len() != skips.len() {
                return Err(candle_core::Error::Msg(format!(
                    "the ControlNet gives {} residuals for the UNet's {} skip connections",
                    control.down.len(),
                    skips.len()
                )));
            }
            for (skip, residual) in skips.iter_mut().zip(&control.down) {
                *skip = skip.broadcast_add(&residual.to_dtype(skip.dtype())?)?;
            }
            mid = mid.broadcast_add(&control.mid.to_dtype(sample.dtype())?)?;
        }

        for (i, skip) in skips.iter().enumerate() {
            observe(&format!("skip.{i}"), skip);
        }
        observe("mid", &mid);
        let mut xs = mid;
        for (i, stage) in self.up.iter().enumerate() {
            for (j, resnet) in stage.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| {
                    candle_core::Error::Msg("UNet skip connections ran out".into())
                })?;
                xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, &silu_emb)?;
                if let Some(attn) = stage.attentions.get(j) {
                    xs = attn.forward(&xs, context, budget)?;
                }
            }
            if let Some(up) = &stage.sampler {
                let size = skips.last().map(|s| (s.dim(2), s.dim(3))).ok_or_else(|| {
                    candle_core::Error::Msg("UNet skip connections ran out".into())
                })?;
                xs = up.forward(&xs, (size.0?, size.1?))?;
            }
            observe(&format!("up.{i}"), &xs);
        }
        debug_assert_eq!(xs.dims4()?.2, height);
        debug_assert_eq!(xs.dims4()?.3, width);
        let out = self.conv_out.forward(&self.norm_out.forward_silu(&xs)?);
        if let Ok(out) = &out {
            observe("out", out);
        }
        // The kernels' scratch buffers are kept from one convolution to the next within a
        // pass, and between passes only while a sampling loop holds them
        // (`kernels::ScratchHold`); otherwise the VAE and the rest of a run get the memory back.
        crate::kernels::release_scratch();
        out
    }
}
