//! The UNet's first half: the time (and SDXL's added) embedding, `conv_in`, the down blocks and
//! the mid block. The UNet runs it before its up blocks; a ControlNet is this same encoder
//! (same weight names) with a hint added after `conv_in` and a zero convolution on each
//! output.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::blocks::{Downsample, ResnetBlock, conv3, timestep_embedding};
use super::transformer::SpatialTransformer;
use crate::kernels::compute::Compute;
use crate::kernels::conv::Conv2d;
use crate::model::config::{Level, TextTime, UNetFile};

/// Resnets, each optionally followed by a transformer, then an optional down/upsampler.
#[derive(Debug)]
pub(super) struct Stage<S> {
    pub(super) resnets: Vec<ResnetBlock>,
    pub(super) attentions: Vec<SpatialTransformer>,
    pub(super) sampler: Option<S>,
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

/// What the encoder hands on: every skip connection (`conv_in`'s output first, in diffusers'
/// `down_block_res_samples` order), the mid block's output, and the SiLU of the time
/// embedding the up blocks need too.
#[derive(Debug)]
pub struct Encoded {
    /// The skip connections, in the order they were made.
    pub skips: Vec<Tensor>,
    /// The mid block's output.
    pub mid: Tensor,
    /// `silu(time embedding)`.
    pub silu_emb: Tensor,
}

/// The transformers of one block: one per resnet when the level has attention.
pub(super) fn transformers(
    vb: &VarBuilder,
    count: usize,
    level: &Level,
    cfg: &UNetFile,
    compute: Compute,
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
                (cfg.use_linear_projection, compute),
            )
        })
        .collect()
}

/// The encoder.
#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    add_embedding: Option<AddEmbedding>,
    down: Vec<Stage<Downsample>>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: SpatialTransformer,
    time_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    center_input: bool,
    mid_scale: f64,
}

impl Encoder {
    /// Builds it from `vb` (the UNet's or ControlNet's root: `conv_in`, `time_embedding`,
    /// `add_embedding`, `down_blocks`, `mid_block`), with its products in `compute`.
    pub(crate) fn build(
        vb: &VarBuilder,
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
                    compute,
                )?)
            } else {
                None
            };
            down.push(Stage {
                resnets,
                attentions: transformers(&vb, cfg.layers_per_block, level, cfg, compute)?,
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
            (cfg.use_linear_projection, compute),
        )?;
        let add_embedding = match text_time {
            Some(tt) => Some(AddEmbedding {
                linear_1: candle_nn::linear(tt.input_dim, temb, vb.pp("add_embedding.linear_1"))?,
                linear_2: candle_nn::linear(temb, temb, vb.pp("add_embedding.linear_2"))?,
                time_embed_dim: tt.time_embed_dim,
            }),
            None => None,
        };
        Ok(Encoder {
            conv_in: conv3(vb.pp("conv_in"), cfg.in_channels, c0, 1, compute)?,
            time_linear_1: candle_nn::linear(c0, temb, vb.pp("time_embedding.linear_1"))?,
            time_linear_2: candle_nn::linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
            add_embedding,
            down,
            mid_resnets,
            mid_attention,
            time_dim: c0,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            center_input: cfg.center_input_sample,
            mid_scale: cfg.mid_block_scale_factor,
        })
    }

    /// Whether it needs SDXL's [`AddedCond`].
    pub fn needs_added_cond(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// The sinusoidal embedding of `timestep` for the time MLPs.
    pub(super) fn sinusoids(&self, timestep: f64, batch: usize, device: &Device) -> Result<Tensor> {
        timestep_embedding(
            timestep,
            batch,
            self.time_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            device,
        )
    }

    /// The time embedding plus, for SDXL, the added embedding of `added`.
    fn time_embedding(
        &self,
        timestep: f64,
        batch: usize,
        dtype: DType,
        device: &Device,
        added: Option<&AddedCond>,
    ) -> Result<Tensor> {
        let t = self.sinusoids(timestep, batch, device)?.to_dtype(dtype)?;
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
        let ids: Vec<Vec<f32>> = added.time_ids.to_dtype(DType::F32)?.to_vec2()?;
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

    /// Runs the encoder on `sample` at `timestep`. `hint` (a ControlNet's embedded control
    /// image, `conv_in`'s shape) is added to `conv_in`'s output.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
        hint: Option<&Tensor>,
        budget: usize,
    ) -> Result<Encoded> {
        let batch = sample.dim(0)?;
        let emb = self.time_embedding(timestep, batch, sample.dtype(), sample.device(), added)?;
        let silu_emb = emb.silu()?;

        let sample = if self.center_input {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let mut xs = self.conv_in.forward(&sample)?;
        if let Some(hint) = hint {
            xs = (xs + hint)?;
        }
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
        Ok(Encoded {
            skips,
            mid: xs,
            silu_emb,
        })
    }
}
