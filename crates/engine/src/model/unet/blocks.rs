//! The UNet's convolutional pieces: diffusers' `ResnetBlock2D`, `Downsample2D` and
//! `Upsample2D`, and the sinusoidal timestep embedding.
//!
//! Our own (over candle-nn layers) because candle 0.11's `DownBlock2D`/`UpBlock2D` ignore the
//! configured GroupNorm groups (always 32), which breaks small fine-tunes and test models.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::kernels::compute::Compute;
use crate::kernels::conv::Conv2d;
use crate::kernels::norm::GroupNorm;

/// A 3×3 convolution with padding 1 and the given stride, products in `compute`.
pub fn conv3(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    stride: usize,
    compute: Compute,
) -> Result<Conv2d> {
    Conv2d::with_compute(vb, (cin, cout), 3, stride, 1, compute)
}

/// GroupNorm, SiLU, 3×3 conv, plus the projected time embedding; GroupNorm, SiLU, 3×3 conv;
/// added to the input (through a 1×1 conv when the channels change).
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// Builds one from `vb`: `cin` → `cout` channels, time embeddings of width `temb`,
    /// GroupNorms of `groups` groups and epsilon `eps`, products in `compute`.
    pub fn new(
        vb: VarBuilder,
        (cin, cout): (usize, usize),
        temb: usize,
        (groups, eps): (usize, f64),
        compute: Compute,
    ) -> Result<Self> {
        let shortcut = if cin == cout {
            None
        } else {
            let vb = vb.pp("conv_shortcut");
            Some(Conv2d::with_compute(vb, (cin, cout), 1, 1, 0, compute)?)
        };
        Ok(ResnetBlock {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, cin, eps)?,
            conv1: conv3(vb.pp("conv1"), cin, cout, 1, compute)?,
            time_emb_proj: candle_nn::linear(temb, cout, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, cout, eps)?,
            conv2: conv3(vb.pp("conv2"), cout, cout, 1, compute)?,
            shortcut,
        })
    }

    /// Applies the block to `xs` with `temb`, the SiLU of the time embedding.
    pub fn forward(&self, xs: &Tensor, silu_temb: &Tensor) -> Result<Tensor> {
        // The projected time embedding is added by the convolution itself.
        let t = self.time_emb_proj.forward(silu_temb)?;
        let h = self
            .conv1
            .forward_plus(&self.norm1.forward_silu(xs)?, Some(&t))?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(conv) => conv.forward(xs)? + h,
            None => xs + h,
        }
    }
}

/// Halves the resolution with a 3×3 convolution of stride 2.
#[derive(Debug)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    /// Builds one from `vb` for `channels` channels, products in `compute`.
    pub fn new(vb: VarBuilder, channels: usize, padding: usize, compute: Compute) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Downsample {
            conv: Conv2d::with_compute(vb, (channels, channels), 3, 2, padding, compute)?,
        })
    }

    /// Applies it (padding 0 pads one row and column at the end, as diffusers does).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.conv.padding() == 0 {
            let xs = xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            return self.conv.forward(&xs);
        }
        self.conv.forward(xs)
    }
}

/// Doubles the resolution (nearest neighbour, to the skip connection's size) and applies a
/// 3×3 convolution.
#[derive(Debug)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// Builds one from `vb` for `channels` channels, products in `compute`.
    pub fn new(vb: VarBuilder, channels: usize, compute: Compute) -> Result<Self> {
        Ok(Upsample {
            conv: conv3(vb.pp("conv"), channels, channels, 1, compute)?,
        })
    }

    /// Upsamples `xs` to `(h, w)` — twice its size, or the size of the skip connection it
    /// meets when the input was not divisible (diffusers' `upsample_size`).
    pub fn forward(&self, xs: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        self.conv.forward(&xs.upsample_nearest2d(size.0, size.1)?)
    }
}

/// diffusers' `get_timestep_embedding`: `dim` sinusoids of the timestep, computed in f32.
pub fn timestep_embedding(
    timestep: f64,
    batch: usize,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let mut sin = Vec::with_capacity(half);
    let mut cos = Vec::with_capacity(half);
    for i in 0..half {
        // As PyTorch: exponent in f32, exp in f32, product with the f32 timestep.
        let exponent = -(10000f32.ln()) * i as f32 / (half as f32 - freq_shift as f32);
        let arg = timestep as f32 * exponent.exp();
        sin.push(arg.sin());
        cos.push(arg.cos());
    }
    let mut row = if flip_sin_to_cos {
        [cos, sin].concat()
    } else {
        [sin, cos].concat()
    };
    row.resize(dim, 0.0);
    Tensor::from_vec(row, (1, dim), device)?
        .to_dtype(DType::F32)?
        .repeat((batch, 1))
}
