//! ControlNet (diffusers' `ControlNetModel`): a copy of the UNet's encoder that also sees a
//! control image, whose outputs, through zero-initialised 1×1 convolutions, are added to the
//! UNet's skip connections and mid block ([`ControlResiduals`]).
//!
//! The control image (`(batch, 3, H, W)` in [0, 1], H and W eight times the latents') goes
//! through a small conditioning embedding (3×3 convolutions with SiLU, three of stride 2)
//! and is added to the encoder's `conv_in` output. Weight names are diffusers'; the original
//! ControlNet layout is mapped to them when a single file is read (`load::controlnet`).

use std::path::Path;

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::kernels::compute::Compute;
use crate::kernels::conv::Conv2d;
use crate::model::config::{Level, UNetFile, read_json};
use crate::model::unet::{AddedCond, ControlResiduals, Encoder, conv3};

/// A ControlNet's `config.json`: the UNet keys of its encoder plus its own.
#[derive(Debug, Clone)]
pub struct ControlNetFile {
    /// The encoder's configuration (up blocks mirrored from the down blocks: a ControlNet
    /// has none).
    pub unet: UNetFile,
    /// Channels of the conditioning embedding's stages (`(16, 32, 96, 256)` in every
    /// released model); each stage after the first halves the resolution.
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// Channels of the control image (3).
    pub conditioning_channels: usize,
    /// The control image's channel order: RGB, or BGR for a few early models.
    pub bgr: bool,
    /// Average every residual over the image (the shuffle model).
    pub global_pool_conditions: bool,
}

/// The ControlNet-only keys of `config.json`.
#[derive(Debug, Deserialize)]
struct ControlKeys {
    #[serde(default = "default_embedding")]
    conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "three")]
    conditioning_channels: usize,
    #[serde(default)]
    controlnet_conditioning_channel_order: Option<String>,
    #[serde(default)]
    global_pool_conditions: bool,
}

/// The conditioning embedding's widths in every released ControlNet.
pub const DEFAULT_EMBEDDING: [usize; 4] = [16, 32, 96, 256];

fn default_embedding() -> Vec<usize> {
    DEFAULT_EMBEDDING.to_vec()
}
fn three() -> usize {
    3
}

impl ControlNetFile {
    /// Reads `path`, a diffusers ControlNet `config.json`.
    pub fn read(path: &Path) -> loopback_core::Result<Self> {
        let mut json: serde_json::Value = read_json(path)?;
        Self::from_json(&mut json, path)
    }

    /// The configuration in `json` (read from `path`, named in errors).
    pub fn from_json(json: &mut serde_json::Value, path: &Path) -> loopback_core::Result<Self> {
        let bad = |e: serde_json::Error| loopback_core::Error::input(path, e.to_string());
        if let Some(map) = json.as_object_mut()
            && !map.contains_key("up_block_types")
            && let Some(down) = map.get("down_block_types").and_then(|d| d.as_array())
        {
            let up: Vec<serde_json::Value> = down
                .iter()
                .rev()
                .map(|kind| match kind.as_str() {
                    Some("CrossAttnDownBlock2D") => "CrossAttnUpBlock2D".into(),
                    _ => "UpBlock2D".into(),
                })
                .collect();
            map.insert("up_block_types".into(), up.into());
        }
        let unet: UNetFile = serde_json::from_value(json.clone()).map_err(bad)?;
        let keys: ControlKeys = serde_json::from_value(json.clone()).map_err(bad)?;
        let bgr = match keys.controlnet_conditioning_channel_order.as_deref() {
            None | Some("rgb") => false,
            Some("bgr") => true,
            Some(other) => {
                return Err(loopback_core::Error::input(
                    path,
                    format!("controlnet_conditioning_channel_order {other:?} is not rgb or bgr"),
                ));
            }
        };
        if keys.conditioning_embedding_out_channels.is_empty() {
            return Err(loopback_core::Error::input(
                path,
                "conditioning_embedding_out_channels is empty",
            ));
        }
        Ok(ControlNetFile {
            unet,
            conditioning_embedding_out_channels: keys.conditioning_embedding_out_channels,
            conditioning_channels: keys.conditioning_channels,
            bgr,
            global_pool_conditions: keys.global_pool_conditions,
        })
    }

    /// The configuration of a ControlNet for a model with the UNet config `base` (whose
    /// encoder it copies) and a conditioning embedding of `embedding` widths (`path`, named
    /// in errors, is where the weights come from).
    pub fn for_unet(
        base: &UNetFile,
        embedding: Vec<usize>,
        path: &Path,
    ) -> loopback_core::Result<Self> {
        let mut json = serde_json::json!({
            "block_out_channels": base.block_out_channels,
            "down_block_types": base.down_block_types,
            "up_block_types": base.up_block_types,
            "in_channels": base.in_channels,
            "layers_per_block": base.layers_per_block,
            "cross_attention_dim": base.cross_attention_dim,
            "norm_num_groups": base.norm_num_groups,
            "norm_eps": base.norm_eps,
            "use_linear_projection": base.use_linear_projection,
            "flip_sin_to_cos": base.flip_sin_to_cos,
            "freq_shift": base.freq_shift,
            "downsample_padding": base.downsample_padding,
            "conditioning_embedding_out_channels": embedding,
        });
        let optional = [
            (
                "attention_head_dim",
                serde_json::to_value(&base.attention_head_dim),
            ),
            (
                "num_attention_heads",
                serde_json::to_value(&base.num_attention_heads),
            ),
            (
                "transformer_layers_per_block",
                serde_json::to_value(&base.transformer_layers_per_block),
            ),
            (
                "addition_embed_type",
                serde_json::to_value(&base.addition_embed_type),
            ),
            (
                "addition_time_embed_dim",
                serde_json::to_value(base.addition_time_embed_dim),
            ),
            (
                "projection_class_embeddings_input_dim",
                serde_json::to_value(base.projection_class_embeddings_input_dim),
            ),
        ];
        if let Some(map) = json.as_object_mut() {
            for (key, value) in optional {
                if let Ok(value) = value
                    && !value.is_null()
                {
                    map.insert(key.into(), value);
                }
            }
        }
        Self::from_json(&mut json, path)
    }

    /// How many times the conditioning embedding halves the control image (3: pixels to
    /// latents).
    pub fn hint_downscale(&self) -> usize {
        1 << (self.conditioning_embedding_out_channels.len() - 1)
    }
}

/// diffusers' `ControlNetConditioningEmbedding`: `conv_in`, then per later stage a 3×3
/// convolution and a stride-2 one, SiLU after each, and `conv_out` to the encoder's width.
#[derive(Debug)]
struct CondEmbedding {
    conv_in: Conv2d,
    blocks: Vec<Conv2d>,
    conv_out: Conv2d,
}

impl CondEmbedding {
    fn new(vb: VarBuilder, cfg: &ControlNetFile, out: usize, compute: Compute) -> Result<Self> {
        let ch = &cfg.conditioning_embedding_out_channels;
        let mut blocks = Vec::with_capacity(2 * ch.len());
        for (i, pair) in ch.windows(2).enumerate() {
            let vb = vb.pp("blocks");
            let name = |j: usize| vb.pp(j.to_string());
            blocks.push(conv3(name(2 * i), pair[0], pair[0], 1, compute)?);
            blocks.push(conv3(name(2 * i + 1), pair[0], pair[1], 2, compute)?);
        }
        let cin = cfg.conditioning_channels;
        Ok(CondEmbedding {
            conv_in: conv3(vb.pp("conv_in"), cin, ch[0], 1, compute)?,
            blocks,
            conv_out: conv3(vb.pp("conv_out"), ch[ch.len() - 1], out, 1, compute)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?.silu()?;
        for block in &self.blocks {
            xs = block.forward(&xs)?.silu()?;
        }
        self.conv_out.forward(&xs)
    }
}

/// A ControlNet.
#[derive(Debug)]
pub struct ControlNet {
    encoder: Encoder,
    cond_embedding: CondEmbedding,
    down_zero: Vec<Conv2d>,
    mid_zero: Conv2d,
    bgr: bool,
    global_pool: bool,
    hint_downscale: usize,
    score_budget: usize,
}

/// The channels of every skip connection the encoder of `levels` makes, in order.
fn skip_channels(levels: &[Level], layers_per_block: usize) -> Vec<usize> {
    let mut out = vec![levels[0].channels];
    for (i, level) in levels.iter().enumerate() {
        out.extend(std::iter::repeat_n(level.channels, layers_per_block));
        if i + 1 < levels.len() {
            out.push(level.channels);
        }
    }
    out
}

impl ControlNet {
    /// Builds the ControlNet described by `cfg` (read from `config_path`, named in errors)
    /// from `vb`. bf16 weights on the CPU build it as the model's networks are built there
    /// ([`Compute::for_weights`]): f32 activations, every kernel and projection held in bf16.
    pub fn new(
        vb: VarBuilder,
        cfg: &ControlNetFile,
        config_path: &Path,
    ) -> loopback_core::Result<Self> {
        let levels = cfg.unet.levels(config_path)?;
        let text_time = cfg.unet.text_time(config_path)?;
        let (compute, dtype) = Compute::for_weights(vb.device(), vb.dtype());
        let vb = vb.set_dtype(dtype);
        let build = || -> Result<Self> {
            let encoder = Encoder::build(&vb, &cfg.unet, (&levels, text_time), compute)?;
            let down_zero = skip_channels(&levels, cfg.unet.layers_per_block)
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let vb = vb.pp("controlnet_down_blocks").pp(i.to_string());
                    Conv2d::with_compute(vb, (c, c), 1, 1, 0, compute)
                })
                .collect::<Result<Vec<_>>>()?;
            let last = levels[levels.len() - 1].channels;
            Ok(ControlNet {
                encoder,
                cond_embedding: CondEmbedding::new(
                    vb.pp("controlnet_cond_embedding"),
                    cfg,
                    levels[0].channels,
                    compute,
                )?,
                down_zero,
                mid_zero: Conv2d::with_compute(
                    vb.pp("controlnet_mid_block"),
                    (last, last),
                    1,
                    1,
                    0,
                    compute,
                )?,
                bgr: cfg.bgr,
                global_pool: cfg.global_pool_conditions,
                hint_downscale: cfg.hint_downscale(),
                score_budget: crate::kernels::attention::DEFAULT_SCORE_BUDGET,
            })
        };
        build().map_err(|e| {
            loopback_core::Error::input(
                config_path,
                format!(
                    "the ControlNet weights do not match this config: {}",
                    crate::error::candle_msg(&e)
                ),
            )
        })
    }

    /// Bytes of attention scores held at once (as [`crate::model::unet::UNet::set_score_budget`]).
    pub fn set_score_budget(&mut self, bytes: usize) {
        self.score_budget = bytes.max(1);
    }

    /// Whether it needs SDXL's [`AddedCond`].
    pub fn needs_added_cond(&self) -> bool {
        self.encoder.needs_added_cond()
    }

    /// How many times smaller than the control image the latents are (8).
    pub fn hint_downscale(&self) -> usize {
        self.hint_downscale
    }

    /// The residuals for `sample` at `timestep` with `context` (and SDXL's `added`), given
    /// the control image `control: (batch, 3, 8h, 8w)` in [0, 1], RGB. Unscaled: diffusers'
    /// `ControlNetModel` output at `conditioning_scale` 1 (the caller weights them).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
        control: &Tensor,
    ) -> Result<ControlResiduals> {
        let control = control.to_dtype(sample.dtype())?;
        let control = if self.bgr {
            Tensor::cat(
                &[
                    control.narrow(1, 2, 1)?,
                    control.narrow(1, 1, 1)?,
                    control.narrow(1, 0, 1)?,
                ],
                1,
            )?
        } else {
            control
        };
        let hint = self.cond_embedding.forward(&control)?;
        let encoded = self.encoder.forward(
            sample,
            timestep,
            context,
            added,
            Some(&hint),
            self.score_budget,
        )?;
        if encoded.skips.len() != self.down_zero.len() {
            return Err(candle_core::Error::Msg(format!(
                "{} skip connections for {} zero convolutions",
                encoded.skips.len(),
                self.down_zero.len()
            )));
        }
        let pool = |t: Tensor| -> Result<Tensor> {
            if self.global_pool {
                t.mean_keepdim(3)?.mean_keepdim(2)
            } else {
                Ok(t)
            }
        };
        let down = encoded
            .skips
            .iter()
            .zip(&self.down_zero)
            .map(|(skip, conv)| pool(conv.forward(skip)?))
            .collect::<Result<Vec<_>>>()?;
        let mid = pool(self.mid_zero.forward(&encoded.mid)?)?;
        crate::kernels::release_scratch();
        Ok(ControlResiduals { down, mid })
    }
}
