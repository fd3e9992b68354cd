//! The VAE (AutoencoderKL): image ↔ latents.
//!
//! Built from candle's public blocks (`DownEncoderBlock2D`, `UpDecoderBlock2D`,
//! `UNetMidBlock2D`). Our own top level because candle 0.11's `AutoEncoderKL::encode` only
//! returns a distribution whose mean is private (PR #3841 is open), and img2img must encode
//! deterministically with the distribution's mean; it also lets the latent scale come from
//! the model's config.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
    UpDecoderBlock2D, UpDecoderBlock2DConfig,
};

use super::config::VaeFile;

const EPS: f64 = 1e-6;

fn conv3(vb: VarBuilder, cin: usize, cout: usize) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    candle_nn::conv2d(cin, cout, 3, cfg, vb)
}

fn conv1(vb: VarBuilder, cin: usize, cout: usize) -> candle_core::Result<Conv2d> {
    candle_nn::conv2d(cin, cout, 1, Conv2dConfig::default(), vb)
}

fn mid_block(
    vb: VarBuilder,
    channels: usize,
    groups: usize,
) -> candle_core::Result<UNetMidBlock2D> {
    let cfg = UNetMidBlock2DConfig {
        resnet_eps: EPS,
        output_scale_factor: 1.0,
        attn_num_head_channels: None,
        resnet_groups: Some(groups),
        ..Default::default()
    };
    UNetMidBlock2D::new(vb, channels, None, cfg)
}

/// The VAE.
#[derive(Debug)]
pub struct Vae {
    enc_conv_in: Conv2d,
    enc_down: Vec<DownEncoderBlock2D>,
    enc_mid: UNetMidBlock2D,
    enc_norm: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: UNetMidBlock2D,
    dec_up: Vec<UpDecoderBlock2D>,
    dec_norm: GroupNorm,
    dec_conv_out: Conv2d,
    /// Latents are `mean × scaling_factor`.
    pub scaling_factor: f64,
    /// Latent channels.
    pub latent_channels: usize,
    /// Pixels per latent, per side.
    pub downscale: usize,
}

impl Vae {
    /// Builds the VAE from `vb` with the shape of `cfg`.
    pub fn new(vb: VarBuilder, cfg: &VaeFile) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = ch[ch.len() - 1];
        let latent = cfg.latent_channels;

        let enc = vb.pp("encoder");
        let enc_down = (0..ch.len())
            .map(|i| {
                let block = DownEncoderBlock2DConfig {
                    num_layers: cfg.layers_per_block,
                    resnet_eps: EPS,
                    resnet_groups: groups,
                    add_downsample: i + 1 < ch.len(),
                    downsample_padding: 0,
                    ..Default::default()
                };
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                DownEncoderBlock2D::new(enc.pp("down_blocks").pp(i.to_string()), cin, ch[i], block)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;

        let dec = vb.pp("decoder");
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let dec_up = (0..reversed.len())
            .map(|i| {
                let block = UpDecoderBlock2DConfig {
                    num_layers: cfg.layers_per_block + 1,
                    resnet_eps: EPS,
                    resnet_groups: groups,
                    add_upsample: i + 1 < reversed.len(),
                    ..Default::default()
                };
                let cin = if i == 0 { reversed[0] } else { reversed[i - 1] };
                UpDecoderBlock2D::new(
                    dec.pp("up_blocks").pp(i.to_string()),
                    cin,
                    reversed[i],
                    block,
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;

        Ok(Vae {
            enc_conv_in: conv3(enc.pp("conv_in"), cfg.in_channels, ch[0])?,
            enc_down,
            enc_mid: mid_block(enc.pp("mid_block"), last, groups)?,
            enc_norm: candle_nn::group_norm(groups, last, EPS, enc.pp("conv_norm_out"))?,
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
            dec_mid: mid_block(dec.pp("mid_block"), last, groups)?,
            dec_up,
            dec_norm: candle_nn::group_norm(groups, ch[0], EPS, dec.pp("conv_norm_out"))?,
            dec_conv_out: conv3(dec.pp("conv_out"), ch[0], cfg.out_channels)?,
            scaling_factor: cfg.scaling_factor,
            latent_channels: latent,
            downscale: cfg.downscale(),
        })
    }

    /// The mean of the latent distribution of `image` (NCHW, values in [−1, 1]), unscaled.
    pub fn encode_mean(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = self.enc_conv_in.forward(image)?;
        for block in &self.enc_down {
            xs = block.forward(&xs)?;
        }
        let xs = self.enc_mid.forward(&xs, None)?;
        let xs = candle_nn::ops::silu(&self.enc_norm.forward(&xs)?)?;
        let mut moments = self.enc_conv_out.forward(&xs)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments)?;
        }
        moments.narrow(1, 0, self.latent_channels)
    }

    /// Scaled latents for the diffusion model: `encode_mean(image) × scaling_factor`.
    pub fn encode(&self, image: &Tensor) -> candle_core::Result<Tensor> {
        self.encode_mean(image)? * self.scaling_factor
    }

    /// The image (NCHW, nominally in [−1, 1]) for scaled latents.
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let mut xs = (latents / self.scaling_factor)?;
        if let Some(conv) = &self.post_quant_conv {
            xs = conv.forward(&xs)?;
        }
        let mut xs = self
            .dec_mid
            .forward(&self.dec_conv_in.forward(&xs)?, None)?;
        for block in &self.dec_up {
            xs = block.forward(&xs)?;
        }
        let xs = candle_nn::ops::silu(&self.dec_norm.forward(&xs)?)?;
        self.dec_conv_out.forward(&xs)
    }
}
