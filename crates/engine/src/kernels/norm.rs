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

use crate::kernels::fastmath;
use crate::kernels::storage::f32_slice;

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
        let block = channels / self.groups * spatial;
        let xs = xs.contiguous()?;
        let weight = self.weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let bias = self.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (store, layout) = xs.storage_and_layout();
        let data = f32_slice(&store, layout)?;
        let moments = block_moments(data, block);
        let affine = channel_affine(&moments, self.groups, &weight, &bias, self.eps);
        let mut out = crate::kernels::filled::zeros(data.len());
        apply_affine(&mut out, Some((data, spatial)), &affine, spatial, silu);
        drop(store);
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}

/// Mean and variance of every block of `block` consecutive values of `data` — one block per
/// (image, group) of a contiguous NCHW buffer — on candle's CPU threads, in one reading pass
/// per block ([`moments`]).
pub(crate) fn block_moments(data: &[f32], block: usize) -> Vec<(f64, f64)> {
    data.par_chunks(block.max(1))
        .map(|src| {
            let (mean, m2) = moments(src);
            (mean, m2 / src.len() as f64)
        })
        .collect()
}

crate::kernels::fastmath::dispatch! {
    /// `(mean, Σ (x − mean)²)` of `src`: each run of 256 values in f32 (its mean, then its
    /// squared deviations from that mean, sixteen lanes each, while the run is in L1), the
    /// runs combined in f64 (Chan et al.'s pairwise update). One pass over memory, and loops
    /// that vectorise; the two f64 passes it replaces were chains of dependent scalar
    /// additions (15 % of a 512² VAE decode).
    pub fn moments(src: &[f32]) -> (f64, f64) = moments_generic
}

#[inline(always)]
fn moments_generic(src: &[f32]) -> (f64, f64) {
    const RUN: usize = 256;
    const LANES: usize = 16;
    // Σ f(x) over a run in sixteen f32 lanes.
    #[inline(always)]
    fn lane_sum(run: &[f32], f: impl Fn(f32) -> f32) -> f32 {
        let mut lanes = [0f32; LANES];
        let mut chunks = run.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += f(v);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        tail + lanes.iter().sum::<f32>()
    }
    let (mut count, mut mean, mut m2) = (0f64, 0f64, 0f64);
    for run in src.chunks(RUN) {
        let len = run.len() as f32;
        let run_mean = lane_sum(run, |v| v) / len;
        let run_m2 = lane_sum(run, |v| (v - run_mean) * (v - run_mean));
        let (n, delta) = (f64::from(len), f64::from(run_mean) - mean);
        let total = count + n;
        mean += delta * n / total;
        m2 += f64::from(run_m2) + delta * delta * count * n / total;
        count = total;
    }
    (mean, m2)
}

/// Per (image, channel) `(scale, shift)` such that `x · scale + shift` is GroupNorm with the
/// affine `weight` and `bias`, given the `(mean, variance)` of each (image, group) block.
pub(crate) fn channel_affine(
    moments: &[(f64, f64)],
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f64,
) -> Vec<(f32, f32)> {
    let channels = weight.len();
    let per_group = channels / groups.max(1);
    let mut affine = Vec::with_capacity(moments.len() * per_group);
    for (index, &(mean, var)) in moments.iter().enumerate() {
        let group = index % groups;
        let inv = (1.0 / (var + eps).sqrt()) as f32;
        let mean = mean as f32;
        for channel in group * per_group..(group + 1) * per_group {
            let scale = inv * weight[channel];
            affine.push((scale, bias[channel] - mean * scale));
        }
    }
    affine
}

/// `dst ← src · scale + shift` per channel plane of `spatial` values of `dst` (then SiLU when
/// `silu`), with `affine[i]` for plane `i`, whose source values start at `i · stride` in
/// `src = Some((src, stride))`; in place on `dst` when `src` is `None`. Planes are spread over
/// candle's CPU threads.
pub(crate) fn apply_affine(
    dst: &mut [f32],
    src: Option<(&[f32], usize)>,
    affine: &[(f32, f32)],
    spatial: usize,
    silu: bool,
) {
    let spatial = spatial.max(1);
    let apply = |(index, dst): (usize, &mut [f32])| {
        let (scale, shift) = affine[index];
        match (src, silu) {
            (Some((src, stride)), true) => {
                fastmath::affine_silu(dst, &src[index * stride..][..dst.len()], scale, shift)
            }
            (Some((src, stride)), false) => {
                for (d, &s) in dst.iter_mut().zip(&src[index * stride..]) {
                    *d = s * scale + shift;
                }
            }
            (None, true) => fastmath::affine_silu_in_place(dst, scale, shift),
            (None, false) => {
                for d in dst.iter_mut() {
                    *d = *d * scale + shift;
                }
            }
        }
    };
    dst.par_chunks_mut(spatial).enumerate().for_each(apply);
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
            let diff = crate::test_util::max_abs_diff;
            assert!(diff(&norm.forward(&xs).unwrap(), &reference) < 1e-5);
            let silu = norm.forward_silu(&xs).unwrap();
            assert!(diff(&silu, &reference.silu().unwrap()) < 1e-5);
        }
    }

    /// The one-pass moments against two f64 passes: lengths that are not whole runs or lane
    /// groups, and a mean far from zero (where a sum of squares would cancel).
    #[test]
    fn moments_match_two_f64_passes() {
        let mut state = 7u64;
        for (len, offset) in [
            (1, 0.0),
            (15, 3.0),
            (256, -2.0),
            (1000, 1000.0),
            (70_001, 0.25),
        ] {
            let data: Vec<f32> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    offset + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                })
                .collect();
            let n = len as f64;
            let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let m2: f64 = data.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum();
            let (got_mean, got_m2) = moments(&data);
            let scale = mean.abs().max(1.0);
            assert!(
                (got_mean - mean).abs() <= 1e-6 * scale,
                "{len}: mean {got_mean} vs {mean}"
            );
            assert!(
                (got_m2 - m2).abs() <= 1e-5 * m2 + 1e-9,
                "{len}: m2 {got_m2} vs {m2}"
            );
        }
    }
}
