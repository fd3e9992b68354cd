//! The VAE's blocks (diffusers' weight names): residual blocks, the mid-block attention,
//! and the encoder's down and the decoder's up blocks. Every block takes the arithmetic of
//! its CPU products ([`Compute`]): bf16 keeps the convolution kernels and the attention's
//! projections packed in bf16; the GroupNorms and the softmax stay f32.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::attention;
use crate::kernels::compute::Compute;
use crate::kernels::conv::{BAND_INPUT_BYTES, Conv2d, Residual};
use crate::kernels::linear::Linear;
use crate::model::vae::norm::{Ctx, Norm, Prepared};

/// A 3×3 convolution with padding 1, products in `compute`.
pub(super) fn conv3(vb: VarBuilder, cin: usize, cout: usize, compute: Compute) -> Result<Conv2d> {
    Conv2d::with_compute(vb, (cin, cout), 3, 1, 1, compute)
}

/// A 1×1 convolution, products in `compute`.
pub(super) fn conv1(vb: VarBuilder, cin: usize, cout: usize, compute: Compute) -> Result<Conv2d> {
    Conv2d::with_compute(vb, (cin, cout), 1, 1, 0, compute)
}

/// A residual block (two GroupNorm–SiLU–conv layers and an optional 1×1 shortcut).
#[derive(Debug)]
pub(super) struct Resnet {
    pub(super) norm1: Norm,
    pub(super) conv1: Conv2d,
    pub(super) norm2: Norm,
    pub(super) conv2: Conv2d,
    pub(super) shortcut: Option<Conv2d>,
}

impl Resnet {
    pub(super) fn new(
        vb: VarBuilder,
        (cin, cout): (usize, usize),
        groups: usize,
        compute: Compute,
    ) -> Result<Self> {
        Ok(Resnet {
            norm1: Norm::new(vb.pp("norm1"), groups, cin)?,
            conv1: conv3(vb.pp("conv1"), cin, cout, compute)?,
            norm2: Norm::new(vb.pp("norm2"), groups, cout)?,
            conv2: conv3(vb.pp("conv2"), cout, cout, compute)?,
            shortcut: if cin != cout {
                Some(conv1(vb.pp("conv_shortcut"), cin, cout, compute)?)
            } else {
                None
            },
        })
    }

    /// The first normalised activation is made and convolved a band of rows at a time, the
    /// second SiLU runs in place, and the skip connection is summed into the last
    /// convolution's output, so beyond bands at most the input, one hidden activation and the
    /// output are alive at once.
    pub(super) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        // The first normalised activation exists only a band of rows at a time.
        let h = match self.norm1.prepare(x, ctx)? {
            Prepared::Affine(affine) => {
                let (b, _, height, width) = x.dims4()?;
                self.conv1
                    .forward_banded((b, height, width), BAND_INPUT_BYTES, |lo, hi| {
                        Norm::rows(x, &affine, lo, hi, true)
                    })?
            }
            prepared => {
                let h = self.norm1.apply_prepared(x, prepared, true, false)?;
                self.conv1.forward(&h)?
            }
        };
        let h = self.norm2.silu_in_place(h, ctx)?;
        let residual = match &self.shortcut {
            Some(conv) => Residual::Conv(conv, x),
            None => Residual::Tensor(x),
        };
        self.conv2.forward_residual(&h, residual)
    }
}

/// A q/k/v/out projection: a linear layer, or a 1×1 convolution in old checkpoints;
/// products in `compute`.
pub(super) fn projection(vb: VarBuilder, channels: usize, compute: Compute) -> Result<Linear> {
    let weight = match vb.get((channels, channels), "weight") {
        Ok(w) => w,
        Err(_) => vb
            .get((channels, channels, 1, 1), "weight")?
            .reshape((channels, channels))?,
    };
    let bias = Some(vb.get(channels, "bias")?);
    Linear::from_candle(candle_nn::Linear::new(weight, bias), compute)
}

/// Single-head self-attention over all latent pixels, through the blocked
/// [`attention::attention`].
#[derive(Debug)]
pub(super) struct AttnBlock {
    pub(super) norm: Norm,
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) out: Linear,
    pub(super) compute: Compute,
}

impl AttnBlock {
    pub(super) fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        compute: Compute,
    ) -> Result<Self> {
        // Current diffusers names, or the pre-0.14 ones.
        let names = if vb.contains_tensor("to_q.weight") || !vb.contains_tensor("query.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        Ok(AttnBlock {
            norm: Norm::new(vb.pp("group_norm"), groups, channels)?,
            q: projection(vb.pp(names[0]), channels, compute)?,
            k: projection(vb.pp(names[1]), channels, compute)?,
            v: projection(vb.pp(names[2]), channels, compute)?,
            out: projection(vb.pp(names[3]), channels, compute)?,
            compute,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
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
        let scale = 1.0 / (c as f64).sqrt();
        let o = attention::attention(&q, &k, &v, scale, ctx.budget, self.compute)?;
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
pub(super) struct MidBlock {
    pub(super) resnet0: Resnet,
    pub(super) attn: AttnBlock,
    pub(super) resnet1: Resnet,
}

impl MidBlock {
    pub(super) fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        compute: Compute,
    ) -> Result<Self> {
        let resnets = vb.pp("resnets");
        let c = (channels, channels);
        Ok(MidBlock {
            resnet0: Resnet::new(resnets.pp("0"), c, groups, compute)?,
            attn: AttnBlock::new(vb.pp("attentions").pp("0"), channels, groups, compute)?,
            resnet1: Resnet::new(resnets.pp("1"), c, groups, compute)?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.resnet0.forward(x, ctx)?;
        let x = self.attn.forward(&x, ctx)?;
        self.resnet1.forward(&x, ctx)
    }
}

/// Resnets, then an optional strided convolution (padding right and bottom by one, as
/// diffusers' encoder does).
#[derive(Debug)]
pub(super) struct DownBlock {
    pub(super) resnets: Vec<Resnet>,
    pub(super) down: Option<Conv2d>,
}

impl DownBlock {
    /// Takes `x` so that it is freed as soon as the first residual block has used it.
    pub(super) fn forward(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut x = x;
        for r in &self.resnets {
            x = r.forward(&x, ctx)?;
        }
        match &self.down {
            Some(conv) => conv.forward_pad_end(&x),
            None => Ok(x),
        }
    }
}

/// Resnets, then an optional nearest-neighbour ×2 upsampling and convolution.
#[derive(Debug)]
pub(super) struct UpBlock {
    pub(super) resnets: Vec<Resnet>,
    pub(super) up: Option<Conv2d>,
}

impl UpBlock {
    /// Takes `x` so that it is freed as soon as the first residual block has used it.
    pub(super) fn forward(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut x = x;
        for r in &self.resnets {
            x = r.forward(&x, ctx)?;
        }
        match &self.up {
            Some(conv) => conv.forward_upsampled(&x),
            None => Ok(x),
        }
    }
}
