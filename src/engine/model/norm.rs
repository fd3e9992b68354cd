//! GroupNorm, optionally followed by SiLU, with a fused f32 CPU path.
//!
//! candle-nn's `GroupNorm` makes seven passes over the activations (sum, subtract, square,
//! sum, divide, scale, shift), each into a new tensor, and the UNet's SiLU after it an eighth.
//! Here each (image, group) block is read twice (mean, then variance about the mean, both
//! accumulated in f64) and written once, normalised, scaled, shifted and — when asked —
//! passed through SiLU, with the blocks spread over candle's CPU threads. Other devices and
//! dtypes use candle-nn's `GroupNorm` and `silu`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::conv::f32_slice;
use super::fastmath;

/// GroupNorm with affine parameters.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    channels: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` for `channels` channels in `groups` groups.
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(channels, "weight")?;
        let bias = vb.get(channels, "bias")?;
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(GroupNorm {
            inner,
            weight,
            bias,
            groups,
            channels,
            eps,
        })
    }

    /// `silu(group_norm(xs))`.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        if self.fast(xs) {
            return self.forward_cpu(xs, true);
        }
        self.inner.forward(xs)?.silu()
    }

    fn fast(&self, xs: &Tensor) -> bool {
        matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 && xs.rank() >= 3
    }

    fn forward_cpu(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let channels = dims[1];
        if channels != self.channels {
            candle_core::bail!(
                "group norm: {channels} channels, expected {}",
                self.channels
            );
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let block = per_group * spatial;
        let xs = xs.contiguous()?;
        let weight = self.weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias = self.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (store, layout) = xs.storage_and_layout();
        let data = f32_slice(&store, layout)?;
        let mut out = vec![0f32; data.len()];
        let eps = self.eps;
        out.par_chunks_mut(block)
            .zip(data.par_chunks(block))
            .enumerate()
            .for_each(|(index, (dst, src))| {
                let group = index % self.groups;
                let n = src.len() as f64;
                let mean = src.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = src
                    .iter()
                    .map(|&v| {
                        let d = f64::from(v) - mean;
                        d * d
                    })
                    .sum::<f64>()
                    / n;
                let inv = (1.0 / (var + eps).sqrt()) as f32;
                let mean = mean as f32;
                for (c, (dst, src)) in dst.chunks_mut(spatial).zip(src.chunks(spatial)).enumerate()
                {
                    let channel = group * per_group + c;
                    let scale = inv * weight[channel];
                    let shift = bias[channel] - mean * scale;
                    if silu {
                        fastmath::affine_silu(dst, src, scale, shift);
                    } else {
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d = s * scale + shift;
                        }
                    }
                }
            });
        drop(store);
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.fast(xs) {
            return self.forward_cpu(xs, false);
        }
        self.inner.forward(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn matches_candle_group_norm_and_silu() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        for (i, &(groups, channels, h, w)) in [(4, 8, 5, 3), (32, 64, 9, 9), (1, 3, 2, 2)]
            .iter()
            .enumerate()
        {
            let vb = vb.pp(i.to_string());
            // Non-trivial affine parameters.
            let weight = Tensor::randn(1f32, 0.5, channels, &Device::Cpu).unwrap();
            let bias = Tensor::randn(0f32, 0.5, channels, &Device::Cpu).unwrap();
            let _ = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(0.0));
            let _ = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0));
            let data = map.data().lock().unwrap();
            data[&format!("{i}.weight")].set(&weight).unwrap();
            data[&format!("{i}.bias")].set(&bias).unwrap();
            drop(data);
            let norm = GroupNorm::new(vb, groups, channels, 1e-5).unwrap();
            let xs = (Tensor::randn(0.5f32, 2.0, (2, channels, h, w), &Device::Cpu).unwrap())
                .contiguous()
                .unwrap();
            let reference = norm.inner.forward(&xs).unwrap();
            let diff = super::super::max_abs_diff;
            assert!(diff(&norm.forward(&xs).unwrap(), &reference) < 1e-5);
            let silu = norm.forward_silu(&xs).unwrap();
            assert!(diff(&silu, &reference.silu().unwrap()) < 1e-5);
        }
    }
}
