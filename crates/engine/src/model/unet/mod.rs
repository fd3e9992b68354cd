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
mod transformer;

use std::path::Path;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::kernels::attention::DEFAULT_SCORE_BUDGET;
use crate::kernels::conv::Conv2d;
use crate::kernels::norm::GroupNorm;
use crate::model::config::{Level, TextTime, UNetFile};
use blocks::{Downsample, ResnetBlock, Upsample, conv3, timestep_embedding};
use transformer::SpatialTransformer;

/// Resnets, each optionally followed by a transformer, then an optional down/upsampler.
#[derive(Debug)]
struct Stage<S> {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    sampler: Option<S>,
}

/// SDXL's added conditioning for one UNet call (diffusers' `added_cond_kwargs`).
#[derive(Debug, Clone)]
pub struct AddedCond {
    /// The pooled, projected text embedding of the second text encoder,
    /// `(batch, projection)` (diffusers' `text_embeds`).
    pub text_embeds: Tensor,
    /// The six size ids per row, `(batch, 6)`: original height and width, crop top and
    /// left, target height and width (diffusers' `time_ids`).
    pub time_ids: Tensor,
}

/// The `add_embedding` MLP of the `"text_time"` conditioning.
#[derive(Debug)]
struct AddEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    time_embed_dim: usize,
}

/// The UNet.
#[derive(Debug)]
pub struct UNet {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    add_embedding: Option<AddEmbedding>,
    down: Vec<Stage<Downsample>>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: SpatialTransformer,
    up: Vec<Stage<Upsample>>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    time_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    center_input: bool,
    mid_scale: f64,
    score_budget: usize,
}

/// The transformers of one block: one per resnet when the level has attention.
fn transformers(
    vb: &VarBuilder,
    count: usize,
    level: &Level,
    cfg: &UNetFile,
) -> Result<Vec<SpatialTransformer>> {
    if !level.attention {
        return Ok(Vec::new());
    }
    (0..count)
        .map(|j| {
            SpatialTransformer::new(
                vb.pp("attentions").pp(j.to_string()),
                level.channels,
                level.heads,
                level.transformer_layers,
                cfg.cross_attention_dim,
                cfg.norm_num_groups,
                cfg.use_linear_projection,
            )
        })
        .collect()
}

impl UNet {
    /// Builds the UNet described by `cfg` (read from `config_path`, named in errors) from
    /// `vb`.
    pub fn new(vb: VarBuilder, cfg: &UNetFile, config_path: &Path) -> loopback_core::Result<Self> {
        let levels = cfg.levels(config_path)?;
        let text_time = cfg.text_time(config_path)?;
        Self::build(vb, cfg, &levels, text_time).map_err(|e| {
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
        levels: &[Level],
        text_time: Option<TextTime>,
    ) -> Result<Self> {
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let c0 = levels[0].channels;
        let temb = 4 * c0;
        let n = levels.len();
        let resnet = |vb: VarBuilder, cin, cout| ResnetBlock::new(vb, cin, cout, temb, groups, eps);

        let mut down = Vec::with_capacity(n);
        let mut cin = c0;
        for (i, level) in levels.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i.to_string());
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let from = if j == 0 { cin } else { level.channels };
                    resnet(vb.pp("resnets").pp(j.to_string()), from, level.channels)
                })
                .collect::<Result<Vec<_>>>()?;
            let sampler = if i + 1 < n {
                Some(Downsample::new(
                    vb.pp("downsamplers").pp("0"),
                    level.channels,
                    cfg.downsample_padding,
                )?)
            } else {
                None
            };
            down.push(Stage {
                resnets,
                attentions: transformers(&vb, cfg.layers_per_block, level, cfg)?,
                sampler,
            });
            cin = level.channels;
        }

        let last = levels[n - 1];
        let mid = vb.pp("mid_block");
        let mid_resnets = [
            resnet(mid.pp("resnets.0"), last.channels, last.channels)?,
            resnet(mid.pp("resnets.1"), last.channels, last.channels)?,
        ];
        let mid_attention = SpatialTransformer::new(
            mid.pp("attentions.0"),
            last.channels,
            last.heads,
            last.transformer_layers,
            cfg.cross_attention_dim,
            groups,
            cfg.use_linear_projection,
        )?;

        let mut up = Vec::with_capacity(n);
        let mut prev = last.channels;
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
                Some(Upsample::new(vb.pp("upsamplers").pp("0"), level.channels)?)
            } else {
                None
            };
            up.push(Stage {
                resnets,
                attentions: transformers(&vb, count, level, cfg)?,
                sampler,
            });
            prev = level.channels;
        }

        let add_embedding = match text_time {
            Some(tt) => Some(AddEmbedding {
                linear_1: candle_nn::linear(tt.input_dim, temb, vb.pp("add_embedding.linear_1"))?,
                linear_2: candle_nn::linear(temb, temb, vb.pp("add_embedding.linear_2"))?,
                time_embed_dim: tt.time_embed_dim,
            }),
            None => None,
        };

        Ok(UNet {
            add_embedding,
            conv_in: conv3(vb.pp("conv_in"), cfg.in_channels, c0, 1)?,
            time_linear_1: candle_nn::linear(c0, temb, vb.pp("time_embedding.linear_1"))?,
            time_linear_2: candle_nn::linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, c0, eps)?,
            conv_out: conv3(vb.pp("conv_out"), c0, cfg.out_channels, 1)?,
            time_dim: c0,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            center_input: cfg.center_input_sample,
            mid_scale: cfg.mid_block_scale_factor,
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
        self.add_embedding.is_some()
    }

    /// The predicted noise (or v) for `sample: (batch, in_channels, h, w)` at `timestep`,
    /// conditioned on `context: (batch, tokens, cross_attention_dim)`. For UNets without
    /// added conditioning (SD 1.x/2.x); an SDXL UNet needs [`UNet::forward_with`].
    pub fn forward(&self, sample: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_with(sample, timestep, context, None)
    }

    /// The time embedding plus, for SDXL, the added embedding of `added`.
    fn time_embedding(
        &self,
        timestep: f64,
        batch: usize,
        dtype: candle_core::DType,
        device: &candle_core::Device,
        added: Option<&AddedCond>,
    ) -> Result<Tensor> {
        let t = timestep_embedding(
            timestep,
            batch,
            self.time_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            device,
        )?
        .to_dtype(dtype)?;
        let emb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&t)?.silu()?)?;
        let (add, added) = match (&self.add_embedding, added) {
            (None, None) => return Ok(emb),
            (Some(add), Some(added)) => (add, added),
            (Some(_), None) => {
                return Err(candle_core::Error::Msg(
                    "this UNet needs SDXL's pooled text embedding and size ids".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(candle_core::Error::Msg(
                    "this UNet has no added conditioning (not an SDXL UNet)".into(),
                ));
            }
        };
        // diffusers: add_time_proj(time_ids.flatten()) reshaped to (batch, 6 × dim), after
        // the pooled text embedding; each id embedded as a timestep, in f32.
        let ids: Vec<Vec<f32>> = added
            .time_ids
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?;
        if ids.len() != batch {
            return Err(candle_core::Error::Msg(format!(
                "{} rows of size ids for a batch of {batch}",
                ids.len()
            )));
        }
        let rows = ids
            .iter()
            .map(|row| {
                let parts = row
                    .iter()
                    .map(|&id| {
                        timestep_embedding(
                            f64::from(id),
                            1,
                            add.time_embed_dim,
                            self.flip_sin_to_cos,
                            self.freq_shift,
                            device,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)
            })
            .collect::<Result<Vec<_>>>()?;
        let time_embeds = Tensor::cat(&rows, 0)?.to_dtype(dtype)?;
        let add_in = Tensor::cat(&[&added.text_embeds.to_dtype(dtype)?, &time_embeds], 1)?;
        let aug = add
            .linear_2
            .forward(&add.linear_1.forward(&add_in)?.silu()?)?;
        emb + aug
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
        let (batch, _, height, width) = sample.dims4()?;
        let dtype = sample.dtype();
        let budget = self.score_budget;

        let emb = self.time_embedding(timestep, batch, dtype, sample.device(), added)?;
        let silu_emb = emb.silu()?;

        let sample = if self.center_input {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let mut xs = self.conv_in.forward(&sample)?;
        let mut skips = vec![xs.clone()];
        for stage in &self.down {
            for (j, resnet) in stage.resnets.iter().enumerate() {
                xs = resnet.forward(&xs, &silu_emb)?;
                if let Some(attn) = stage.attentions.get(j) {
                    xs = attn.forward(&xs, context, budget)?;
                }
                skips.push(xs.clone());
            }
            if let Some(down) = &stage.sampler {
                xs = down.forward(&xs)?;
                skips.push(xs.clone());
            }
        }

        // The mid block's resnets divide their output by `mid_block_scale_factor` (1 in
        // every released model).
        let scaled = |xs: Tensor| {
            if self.mid_scale == 1.0 {
                Ok(xs)
            } else {
                xs / self.mid_scale
            }
        };
        xs = scaled(self.mid_resnets[0].forward(&xs, &silu_emb)?)?;
        xs = self.mid_attention.forward(&xs, context, budget)?;
        xs = scaled(self.mid_resnets[1].forward(&xs, &silu_emb)?)?;

        for stage in &self.up {
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
        }
        debug_assert_eq!(xs.dims4()?.2, height);
        debug_assert_eq!(xs.dims4()?.3, width);
        let out = self.conv_out.forward(&self.norm_out.forward_silu(&xs)?);
        // The transformed kernels are kept from one convolution to the next within a pass,
        // not between passes (the VAE and the rest of a run get the memory back).
        crate::kernels::winograd::release_scratch();
        out
    }
}
