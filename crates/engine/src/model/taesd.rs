//! TAESD, the tiny autoencoder of `madebyollin/taesd` (SD 1.x/2.x) and `madebyollin/taesdxl`
//! (SDXL): its decoder turns latents into a close approximation of the VAE's image for a
//! fraction of the cost, which makes per-step previews at image resolution affordable.
//!
//! The decoder (our own, small): `3·tanh(x/3)`, a 3×3 conv to C channels + ReLU, then per
//! stage `n` blocks (three 3×3 convs with ReLU between, plus the input, then ReLU), and
//! between stages a nearest 2× upsample and a bias-free 3×3 conv; a last 3×3 conv to RGB in
//! `[0, 1]`. Stages of 3, 3, 3 and 1 blocks with C = 64 in the published weights.
//!
//! Weight layouts read ([`TaesdDecoder::load`]):
//! - the diffusers `AutoencoderTiny` folder (`config.json` + `diffusion_pytorch_model.safetensors`,
//!   keys `decoder.layers.N…`), as both hub repositories ship it;
//! - the original `taesd_decoder.safetensors` / `taesdxl_decoder.safetensors` (keys `N…`, the
//!   indices of the original `nn.Sequential`, one more than diffusers' as it starts with the
//!   clamp).
//!
//! The latents are the UNet's (already multiplied by the VAE's scaling factor): TAESD was
//! trained on them directly.
//!
//! - [`find`]: where the weights are looked for.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::error::candle_msg;
use crate::error::engine_err;
use loopback_core::{Error, Result};

/// One residual block: `relu(conv(relu(conv(relu(conv(x))))) + x)`.
#[derive(Debug)]
struct Block {
    convs: [Conv2d; 3],
}

impl Block {
    fn new(vb: VarBuilder, channels: usize) -> candle_core::Result<Self> {
        let c = |i: usize| conv3(vb.pp("conv").pp(i), channels, channels, true);
        Ok(Block {
            convs: [c(0)?, c(2)?, c(4)?],
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.convs[0].forward(xs)?.relu()?;
        let h = self.convs[1].forward(&h)?.relu()?;
        let h = self.convs[2].forward(&h)?;
        (h + xs)?.relu()
    }
}

/// A 3×3 convolution with padding 1.
///
/// candle's layer rather than the UNet's [`crate::kernels::conv::Conv2d`] (which always has a
/// bias): TAESD's upsampling convolutions have none, and the decoder is small enough that the
/// faster kernels do not matter for a preview.
fn conv3(vb: VarBuilder, cin: usize, cout: usize, bias: bool) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    if bias {
        candle_nn::conv2d(cin, cout, 3, cfg, vb)
    } else {
        candle_nn::conv2d_no_bias(cin, cout, 3, cfg, vb)
    }
}

/// One stage: blocks, then (but for the last) upsample + conv.
#[derive(Debug)]
struct Stage {
    blocks: Vec<Block>,
    up_conv: Option<Conv2d>,
}

/// The shape of a decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaesdConfig {
    /// Latent channels (4 for SD 1.x/2.x and SDXL).
    pub latent_channels: usize,
    /// Channels of every stage (64 in the published weights).
    pub channels: usize,
    /// Blocks per stage ((3, 3, 3, 1) in the published weights).
    pub blocks: Vec<usize>,
}

impl Default for TaesdConfig {
    fn default() -> Self {
        TaesdConfig {
            latent_channels: 4,
            channels: 64,
            blocks: vec![3, 3, 3, 1],
        }
    }
}

/// The part of diffusers' `AutoencoderTiny` `config.json` the decoder needs.
#[derive(Debug, serde::Deserialize)]
struct TinyConfig {
    #[serde(default = "four")]
    latent_channels: usize,
    decoder_block_out_channels: Vec<usize>,
    num_decoder_blocks: Vec<usize>,
    #[serde(default = "two")]
    upsampling_scaling_factor: usize,
    #[serde(default = "nearest")]
    upsample_fn: String,
    #[serde(default = "relu")]
    act_fn: String,
}

fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn nearest() -> String {
    "nearest".into()
}
fn relu() -> String {
    "relu".into()
}

/// The TAESD decoder.
#[derive(Debug)]
pub struct TaesdDecoder {
    conv_in: Conv2d,
    stages: Vec<Stage>,
    conv_out: Conv2d,
}

impl TaesdDecoder {
    /// Loads a decoder from `path`: a diffusers `AutoencoderTiny` folder, or an original
    /// `taesd*_decoder.safetensors` file.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if path.is_dir() {
            let config_path = path.join("config.json");
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| Error::input(&config_path, format!("cannot read: {e}")))?;
            let tiny: TinyConfig = serde_json::from_str(&text).map_err(|e| {
                Error::input(&config_path, format!("not an AutoencoderTiny config: {e}"))
            })?;
            let channels = tiny
                .decoder_block_out_channels
                .first()
                .copied()
                .unwrap_or(0);
            let supported = tiny.upsampling_scaling_factor == 2
                && tiny.upsample_fn == "nearest"
                && tiny.act_fn == "relu"
                && channels > 0
                && tiny
                    .decoder_block_out_channels
                    .iter()
                    .all(|&c| c == channels)
                && tiny.decoder_block_out_channels.len() == tiny.num_decoder_blocks.len();
            if !supported {
                return Err(Error::input(
                    &config_path,
                    "unsupported AutoencoderTiny decoder (TAESD: equal channels, ReLU, nearest 2x)",
                ));
            }
            let cfg = TaesdConfig {
                latent_channels: tiny.latent_channels,
                channels,
                blocks: tiny.num_decoder_blocks,
            };
            let weights = path.join("diffusion_pytorch_model.safetensors");
            let vb = mmap(&weights, dtype, device)?;
            Self::build(vb.pp("decoder.layers"), &cfg, 0).map_err(|e| {
                Error::input(
                    &weights,
                    format!("not a matching TAESD decoder: {}", candle_msg(&e)),
                )
            })
        } else {
            let vb = mmap(path, dtype, device)?;
            let channels = vb
                .get_unchecked("1.weight")
                .ok()
                .and_then(|w| w.dims().first().copied())
                .ok_or_else(|| {
                    Error::input(path, "not a TAESD decoder (no `1.weight` convolution)")
                })?;
            let cfg = TaesdConfig {
                channels,
                ..TaesdConfig::default()
            };
            Self::build(vb, &cfg, 1).map_err(|e| {
                Error::input(
                    path,
                    format!("not a matching TAESD decoder: {}", candle_msg(&e)),
                )
            })
        }
    }

    /// Builds the decoder of `cfg` from `vb`, whose layer `i` of the decoder's sequence
    /// (starting with the first convolution) is named `i + offset`.
    pub fn build(vb: VarBuilder, cfg: &TaesdConfig, offset: usize) -> candle_core::Result<Self> {
        let c = cfg.channels;
        let mut index = offset;
        let conv_in = conv3(vb.pp(index), cfg.latent_channels, c, true)?;
        index += 2; // conv, ReLU
        let mut stages = Vec::with_capacity(cfg.blocks.len());
        let mut conv_out = None;
        for (s, &n) in cfg.blocks.iter().enumerate() {
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push(Block::new(vb.pp(index), c)?);
                index += 1;
            }
            let last = s + 1 == cfg.blocks.len();
            let up_conv = if last {
                conv_out = Some(conv3(vb.pp(index), c, 3, true)?);
                None
            } else {
                index += 1; // upsample
                let conv = conv3(vb.pp(index), c, c, false)?;
                index += 1;
                Some(conv)
            };
            stages.push(Stage { blocks, up_conv });
        }
        let conv_out =
            conv_out.ok_or_else(|| candle_core::Error::Msg("no decoder stages".into()))?;
        Ok(TaesdDecoder {
            conv_in,
            stages,
            conv_out,
        })
    }

    /// Decodes `(batch, 4, h, w)` latents to `(batch, 3, 8h, 8w)` RGB in about `[0, 1]` (not
    /// clamped).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.forward(latents).map_err(engine_err("TAESD decode"))
    }

    fn forward(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = self.conv_in.weight().dtype();
        let xs = latents.to_dtype(dtype)?;
        let xs = ((xs / 3.0)?.tanh()? * 3.0)?;
        let mut xs = self.conv_in.forward(&xs)?.relu()?;
        for stage in &self.stages {
            for block in &stage.blocks {
                xs = block.forward(&xs)?;
            }
            if let Some(conv) = &stage.up_conv {
                let (_, _, h, w) = xs.dims4()?;
                xs = conv.forward(&xs.upsample_nearest2d(2 * h, 2 * w)?)?;
            }
        }
        self.conv_out.forward(&xs)
    }
}

/// Memory-maps a safetensors file as a var builder.
fn mmap(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the file is memory-mapped read-only and must not be truncated while the
    // decoder loads; model files are not modified in place.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }
        .map_err(|e| Error::input(path, format!("cannot read weights: {}", candle_msg(&e))))
}
