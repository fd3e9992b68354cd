//! The UNet's attention blocks: diffusers' `Transformer2DModel` with its
//! `BasicTransformerBlock`s (self-attention, cross-attention on the text, GEGLU feed-forward).
//!
//! Our own instead of candle's `SpatialTransformer` for two reasons (`docs/candle.md`):
//! - candle's GEGLU uses the tanh approximation of GELU where diffusers uses the exact erf
//!   form, which moves final latents by up to 4.5e-3 against diffusers;
//! - candle's attention materialises every score matrix (16 GiB at 1024²) and its sliced
//!   variant crashes; here attention goes through [`attention::attention`] with a byte budget.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use rayon::prelude::*;

use crate::kernels::attention;
use crate::kernels::compute::Compute;
use crate::kernels::conv::{Conv2d, Residual};
use crate::kernels::fastmath;
use crate::kernels::linear::Linear;
use crate::kernels::norm::GroupNorm;
use crate::kernels::storage::f32_slice;
use crate::kernels::transpose::transpose_last_two;

/// Multi-head attention (`attn1` on the image itself, `attn2` on the text).
#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    compute: Compute,
}

impl Attention {
    fn new(
        vb: VarBuilder,
        (dim, context_dim): (usize, usize),
        heads: usize,
        compute: Compute,
    ) -> Result<Self> {
        let head_dim = dim / heads;
        let linear =
            |inputs, name: &str, bias| Linear::new(vb.pp(name), (inputs, dim), bias, compute);
        Ok(Attention {
            to_q: linear(dim, "to_q", false)?,
            to_k: linear(context_dim, "to_k", false)?,
            to_v: linear(context_dim, "to_v", false)?,
            to_out: Linear::new(vb.pp("to_out").pp("0"), (dim, dim), true, compute)?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
            compute,
        })
    }

    fn forward(&self, xs: &Tensor, context: Option<&Tensor>, budget: usize) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let (heads, scale) = (self.heads, self.scale);
        let out = attention::attention_heads((&q, &k, &v), heads, scale, budget, self.compute)?;
        self.to_out.forward(&out)
    }
}

/// GEGLU feed-forward: `Linear(dim → 2·4dim)`, halves `h, g`, `h · gelu(g)` with the exact
/// (erf) GELU as PyTorch's default, then `Linear(4dim → dim)`.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize, compute: Compute) -> Result<Self> {
        let inner = 4 * dim;
        Ok(FeedForward {
            proj: Linear::new(vb.pp("net.0.proj"), (dim, 2 * inner), true, compute)?,
            out: Linear::new(vb.pp("net.2"), (inner, dim), true, compute)?,
        })
    }

    /// On the CPU in f32, in chunks of about [`FF_CHUNK_BYTES`] of projection per chunk of
    /// token rows: the whole projection (84 MB per level-0 block at 512², batch 2) would be
    /// a fresh `mmap` paid in page faults on every call; chunks come from the heap, reused.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_in_chunks(xs, FF_CHUNK_BYTES)
    }

    /// [`FeedForward::forward`] with about `chunk_bytes` of projection per chunk.
    fn forward_in_chunks(&self, xs: &Tensor, chunk_bytes: usize) -> Result<Tensor> {
        let run = |xs: &Tensor| self.out.forward(&geglu(&self.proj.forward(xs)?)?);
        let dims = xs.dims().to_vec();
        let (Some(&dim), true) = (
            dims.last(),
            xs.device().is_cpu() && xs.dtype() == DType::F32,
        ) else {
            return run(xs);
        };
        let rows = xs.elem_count() / dim.max(1);
        let per_row = 4 * self.proj.outputs();
        let chunk = (chunk_bytes / per_row.max(1)).max(1);
        if rows <= chunk {
            return run(xs);
        }
        let flat = xs.reshape((rows, dim))?;
        let parts = (0..rows)
            .step_by(chunk)
            .map(|r0| run(&flat.narrow(0, r0, chunk.min(rows - r0))?))
            .collect::<Result<Vec<_>>>()?;
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = parts[0].dim(1)?;
        }
        Tensor::cat(&parts, 0)?.reshape(shape)
    }
}

/// Bytes of feed-forward projection computed at once (see [`FeedForward::forward`]); under
/// glibc's 32 MiB mmap threshold.
const FF_CHUNK_BYTES: usize = 30 << 20;

/// `h · gelu(g)` for the halves `h, g` of the last dimension, with the exact (erf) GELU.
/// On the CPU in f32 one fused pass ([`fastmath::geglu`]) instead of candle's three
/// (strided GELU copy with a scalar `erf`, then the product).
fn geglu(projected: &Tensor) -> Result<Tensor> {
    let inner = projected.dim(D::Minus1)? / 2;
    if !(projected.device().is_cpu() && projected.dtype() == DType::F32) {
        let hidden = projected.narrow(D::Minus1, 0, inner)?;
        let gate = projected.narrow(D::Minus1, inner, inner)?.gelu_erf()?;
        return hidden * gate;
    }
    let projected = projected.contiguous()?;
    let mut shape = projected.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = inner;
    }
    let (store, layout) = projected.storage_and_layout();
    let src = f32_slice(&store, layout)?;
    let mut out = crate::kernels::filled::zeros(src.len() / 2);
    if inner > 0 {
        out.par_chunks_mut(inner)
            .zip(src.par_chunks(2 * inner))
            .for_each(|(dst, row)| {
                let (hidden, gate) = row.split_at(inner);
                fastmath::geglu(dst, hidden, gate);
            });
    }
    drop(store);
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// Self-attention, cross-attention and feed-forward, each after a LayerNorm and added back.
#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(
        vb: VarBuilder,
        (dim, context_dim): (usize, usize),
        heads: usize,
        compute: Compute,
    ) -> Result<Self> {
        let norm = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        Ok(BasicTransformerBlock {
            norm1: norm("norm1")?,
            attn1: Attention::new(vb.pp("attn1"), (dim, dim), heads, compute)?,
            norm2: norm("norm2")?,
            attn2: Attention::new(vb.pp("attn2"), (dim, context_dim), heads, compute)?,
            norm3: norm("norm3")?,
            ff: FeedForward::new(vb.pp("ff"), dim, compute)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor, budget: usize) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None, budget)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context), budget)?
            + &xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// Projection in and out of the transformer: a 1×1 convolution on the feature map (SD 1.x)
/// or a linear layer on the token sequence (`use_linear_projection`, SD 2.x and XL).
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder, channels: usize, (linear, compute): (bool, Compute)) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::new(vb, (channels, channels), true, compute)?)
        } else {
            Projection::Conv(Conv2d::with_compute(
                vb,
                (channels, channels),
                1,
                1,
                0,
                compute,
            )?)
        })
    }
}

/// diffusers' `Transformer2DModel` for a feature map: GroupNorm, projection in, the
/// transformer blocks over the `h × w` tokens, projection out, plus the input.
#[derive(Debug)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    /// Builds one from `vb` for `channels` channels, `heads` heads and `layers` blocks, with a
    /// linear (or else 1×1 convolution) projection when `linear`, products in `compute`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        context_dim: usize,
        groups: usize,
        projection: (bool, Compute),
    ) -> Result<Self> {
        let (_, compute) = projection;
        let blocks = (0..layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i.to_string()),
                    (channels, context_dim),
                    heads,
                    compute,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SpatialTransformer {
            // diffusers fixes this GroupNorm's epsilon at 1e-6.
            norm: GroupNorm::new(vb.pp("norm"), groups, channels, 1e-6)?,
            proj_in: Projection::new(vb.pp("proj_in"), channels, projection)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), channels, projection)?,
        })
    }

    /// Applies it to `xs: (batch, channels, h, w)` with the text `context`, holding at most
    /// about `budget` bytes of attention scores at once.
    pub fn forward(&self, xs: &Tensor, context: &Tensor, budget: usize) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        let to_tokens = |t: &Tensor| transpose_last_two(&t.reshape((b, c, h * w))?);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, budget)?;
        }
        let to_map = |t: &Tensor| transpose_last_two(t)?.reshape((b, c, h, w));
        match &self.proj_out {
            Projection::Conv(conv) => {
                conv.forward_residual(&to_map(&tokens)?, Residual::Tensor(xs))
            }
            Projection::Linear(linear) => to_map(&linear.forward(&tokens)?)? + xs,
        }
    }
}

#[cfg(test)]
mod ff_tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn chunked_feed_forward_matches_the_whole() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let ff = FeedForward::new(vb, 8, Compute::F32).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (2, 37, 8), &Device::Cpu).unwrap();
        let whole = ff.forward_in_chunks(&xs, usize::MAX).unwrap();
        // 4 · 64 bytes per row of projection: chunks of 1, 5 and 37 rows.
        for chunk_bytes in [1, 5 * 4 * 64, 37 * 4 * 64] {
            let chunked = ff.forward_in_chunks(&xs, chunk_bytes).unwrap();
            assert_eq!(chunked.dims(), whole.dims());
            let diff = crate::test_util::max_abs_diff(&chunked, &whole);
            assert!(diff < 1e-5, "{chunk_bytes} bytes: max abs diff {diff}");
        }
    }
}
