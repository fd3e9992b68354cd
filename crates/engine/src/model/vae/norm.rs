//! The VAE's GroupNorm, whose statistics a tiled pass can record, replay or accumulate over
//! tiles ([`NormStats`]), and the per-pass context that carries them.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::norm::{apply_affine, block_moments, channel_affine};
use crate::kernels::storage::f32_slice;

pub(super) const EPS: f64 = 1e-6;

/// How the GroupNorms of one pass get their statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormStats {
    /// Each tile normalises with its own statistics (one pass, as diffusers' tiled VAE does;
    /// tiles may differ slightly in colour).
    PerTile,
    /// Whole-image statistics estimated by an extra pass over the input downscaled to about
    /// the size of one tile (cheap, but poor for decoding: see `docs/memory.md`).
    Estimated,
    /// Whole-image statistics accumulated over the tiles: `n` statistics passes over all
    /// tiles, then the output pass. Each pass accumulates every GroupNorm's statistics over
    /// the tiles' core cells (which partition the image) while normalising with the previous
    /// pass's statistics (the first pass: per-tile ones), so after `k` passes the first `k`
    /// GroupNorms are exact and the rest converge. Costs `n + 1` times one pass.
    Accumulated(usize),
    /// Statistics of a whole (untiled) pass: no memory saved, for measuring what tiling costs
    /// with perfect statistics.
    Exact,
}

/// Running whole-image GroupNorm statistics, one entry per GroupNorm call of a pass and per
/// (batch, group): count, mean and sum of squared deviations (Chan et al.'s parallel update,
/// in f64 on the host).
#[derive(Debug, Default)]
pub(super) struct Accumulator {
    pub(super) layers: Vec<Vec<(f64, f64, f64)>>,
    pub(super) next: usize,
}

impl Accumulator {
    pub(super) fn add(&mut self, count: f64, means: &[f32], m2s: &[f32]) {
        if self.layers.len() <= self.next {
            self.layers.push(vec![(0.0, 0.0, 0.0); means.len()]);
        }
        for (acc, (&m, &m2)) in self.layers[self.next].iter_mut().zip(means.iter().zip(m2s)) {
            let (n_a, mean_a, m2_a) = *acc;
            let (m, m2) = (f64::from(m), f64::from(m2));
            let n = n_a + count;
            let delta = m - mean_a;
            *acc = (
                n,
                mean_a + delta * count / n,
                m2_a + m2 + delta * delta * n_a * count / n,
            );
        }
        self.next += 1;
    }

    /// `(mean, var)` tensors of shape `(b, groups, 1)` for every layer.
    pub(super) fn finish(
        &self,
        b: usize,
        device: &candle_core::Device,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        self.layers
            .iter()
            .map(|layer| {
                let groups = layer.len() / b.max(1);
                let mean: Vec<f32> = layer.iter().map(|a| a.1 as f32).collect();
                let var: Vec<f32> = layer.iter().map(|a| (a.2 / a.0.max(1.0)) as f32).collect();
                Ok((
                    Tensor::from_vec(mean, (b, groups, 1), device)?,
                    Tensor::from_vec(var, (b, groups, 1), device)?,
                ))
            })
            .collect()
    }
}

/// A tile's core cell as fractions of its extended window, `(y0, y1, x0, x1)`: at a layer of
/// `h × w` the core is rows `y0·h..y1·h` and columns `x0·w..x1·w`.
pub(super) type Core = (f64, f64, f64, f64);

/// Per-pass state: how GroupNorms get statistics, and the attention score budget.
pub(super) struct Ctx {
    pub(super) record: Option<Vec<(Tensor, Tensor)>>,
    pub(super) replay: Option<(Vec<(Tensor, Tensor)>, usize)>,
    pub(super) accumulate: Option<(Accumulator, Core)>,
    pub(super) budget: usize,
}

impl Ctx {
    pub(super) fn plain(budget: usize) -> Self {
        Ctx {
            record: None,
            replay: None,
            accumulate: None,
            budget,
        }
    }
}

/// GroupNorm whose statistics can be recorded and replayed.
#[derive(Debug)]
pub(super) struct Norm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) groups: usize,
    pub(super) eps: f64,
}

impl Norm {
    pub(super) fn new(vb: VarBuilder, groups: usize, channels: usize) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {channels} channels in {groups} groups");
        }
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Norm {
            weight,
            bias,
            groups,
            eps: EPS,
        })
    }

    /// `group_norm(x)`.
    pub(super) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.apply(x, ctx, false, false)
    }

    /// `silu(group_norm(x))`, a new tensor.
    pub(super) fn forward_silu(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.apply(x, ctx, true, false)
    }

    /// `silu(group_norm(x))`, written over `x` where it can be (contiguous f32 on the CPU;
    /// elsewhere a new tensor). `x` must not share its storage with a tensor still in use:
    /// pass only a fresh result, such as a convolution's output.
    pub(super) fn silu_in_place(&self, x: Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.apply(&x, ctx, true, true)
    }

    /// Normalises `x` (then SiLU when `silu`), in place when `in_place` and the fast path
    /// applies (returning `x` itself), else into a new tensor.
    fn apply(&self, x: &Tensor, ctx: &mut Ctx, silu: bool, in_place: bool) -> Result<Tensor> {
        let prepared = self.prepare(x, ctx)?;
        self.apply_prepared(x, prepared, silu, in_place)
    }

    /// [`Norm::apply`] with statistics already [prepared](Norm::prepare) from `x`.
    pub(super) fn apply_prepared(
        &self,
        x: &Tensor,
        prepared: Prepared,
        silu: bool,
        in_place: bool,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        match prepared {
            Prepared::Moments(mean, var) => {
                let y = self.apply_generic(x, &mean, &var)?;
                if silu {
                    candle_nn::ops::silu(&y)
                } else {
                    Ok(y)
                }
            }
            Prepared::Affine(affine) if in_place => {
                x.inplace_op1(&AffineOp {
                    affine,
                    spatial: h * w,
                    silu,
                })?;
                Ok(x.clone())
            }
            Prepared::Affine(affine) => Self::rows(x, &affine, 0, h, silu),
        }
    }

    /// The statistics of `x` (taken, recorded or accumulated as `ctx` says) in the form the
    /// normalisation needs: per-channel `(scale, shift)` for contiguous f32 on the CPU,
    /// `(mean, var)` tensors elsewhere.
    pub(super) fn prepare(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Prepared> {
        let fast = x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous();
        let (mean, var) = self.statistics(x, ctx, fast)?;
        if !fast {
            return Ok(Prepared::Moments(mean, var));
        }
        let flat = |t: &Tensor| -> Result<Vec<f32>> {
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        };
        let moments: Vec<(f64, f64)> = flat(&mean)?
            .into_iter()
            .zip(flat(&var)?)
            .map(|(m, v)| (f64::from(m), f64::from(v)))
            .collect();
        Ok(Prepared::Affine(channel_affine(
            &moments,
            self.groups,
            &flat(&self.weight)?,
            &flat(&self.bias)?,
            self.eps,
        )))
    }

    /// `group_norm(x)` (then SiLU when `silu`) for rows `lo..hi` of `x` only, a new
    /// `(b, c, hi − lo, w)` tensor, with `affine` from [`Norm::prepare`] on the whole of `x`
    /// (contiguous f32 on the CPU).
    pub(super) fn rows(
        x: &Tensor,
        affine: &[(f32, f32)],
        lo: usize,
        hi: usize,
        silu: bool,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (store, layout) = x.storage_and_layout();
        let data = f32_slice(&store, layout)?;
        let rows = hi.min(h).saturating_sub(lo);
        let mut out = vec![0f32; b * c * rows * w];
        apply_affine(
            &mut out,
            Some((&data[lo * w..], h * w)),
            affine,
            rows * w,
            silu,
        );
        drop(store);
        Tensor::from_vec(out, (b, c, rows, w), x.device())
    }

    /// The `(mean, var)` of every (image, group), shape `(b, groups, 1)`: replayed, or
    /// computed from `x` (in one vectorised pass when `fast`); recorded and accumulated as the
    /// context asks.
    fn statistics(&self, x: &Tensor, ctx: &mut Ctx, fast: bool) -> Result<(Tensor, Tensor)> {
        let (b, c, h, w) = x.dims4()?;
        let internal = if x.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let per_group = c / self.groups * h * w;
        let (mean, var) = match &mut ctx.replay {
            Some((stats, next)) => {
                let s = stats
                    .get(*next)
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("GroupNorm replay ran out".into()))?;
                *next += 1;
                s
            }
            None if fast => {
                let (store, layout) = x.storage_and_layout();
                let moments = block_moments(f32_slice(&store, layout)?, per_group);
                drop(store);
                let column = |pick: fn(&(f64, f64)) -> f64| {
                    let values: Vec<f32> = moments.iter().map(|m| pick(m) as f32).collect();
                    Tensor::from_vec(values, (b, self.groups, 1), x.device())
                };
                (column(|m| m.0)?, column(|m| m.1)?)
            }
            None => {
                let xg = x.reshape((b, self.groups, per_group))?.to_dtype(internal)?;
                let mean = (xg.sum_keepdim(2)? / per_group as f64)?;
                let var = (xg.broadcast_sub(&mean)?.sqr()?.sum_keepdim(2)? / per_group as f64)?;
                (mean, var)
            }
        };
        if let Some(record) = &mut ctx.record {
            record.push((mean.clone(), var.clone()));
        }
        if let Some((acc, (y0, y1, x0, x1))) = &mut ctx.accumulate {
            // This tile's share of the whole-image statistics: its core cell only.
            let at = |f: f64, n: usize| ((f * n as f64).round() as usize).min(n);
            let (ys, xs) = (at(*y0, h)..at(*y1, h), at(*x0, w)..at(*x1, w));
            let count = (ys.len() * xs.len() * (c / self.groups)) as f64;
            if count > 0.0 {
                let core = x
                    .narrow(2, ys.start, ys.len())?
                    .narrow(3, xs.start, xs.len())?
                    .contiguous()?
                    .reshape((b, self.groups, count as usize))?
                    .to_dtype(internal)?;
                let m = (core.sum_keepdim(2)? / count)?;
                let m2 = core.broadcast_sub(&m)?.sqr()?.sum_keepdim(2)?;
                let flat = |t: Tensor| -> Result<Vec<f32>> {
                    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
                };
                acc.add(count, &flat(m)?, &flat(m2)?);
            } else {
                acc.next += 1;
            }
        }
        Ok((mean, var))
    }

    /// `x · s + t` per channel with s = weight / √(var + eps), t = bias − mean·s, in candle
    /// ops (other devices and dtypes).
    fn apply_generic(&self, x: &Tensor, mean: &Tensor, var: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        let dtype = x.dtype();
        let internal = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let per_channel = |t: &Tensor| -> Result<Tensor> {
            t.broadcast_as((b, self.groups, c / self.groups))?
                .reshape((b, c, 1, 1))
        };
        let inv = per_channel(&(var.to_dtype(internal)? + self.eps)?.sqrt()?.recip()?)?;
        let mean = per_channel(&mean.to_dtype(internal)?)?;
        let weight = self.weight.to_dtype(internal)?.reshape((1, c, 1, 1))?;
        let bias = self.bias.to_dtype(internal)?.reshape((1, c, 1, 1))?;
        let scale = inv.broadcast_mul(&weight)?;
        let shift = bias.broadcast_sub(&mean.mul(&scale)?)?;
        x.broadcast_mul(&scale.to_dtype(dtype)?)?
            .broadcast_add(&shift.to_dtype(dtype)?)
    }
}

/// A GroupNorm's statistics, ready to apply (see [`Norm::prepare`]).
pub(super) enum Prepared {
    /// Per (image, channel) `(scale, shift)`: the fast CPU path.
    Affine(Vec<(f32, f32)>),
    /// `(mean, var)` per (image, group), shape `(b, groups, 1)`: candle ops.
    Moments(Tensor, Tensor),
}

/// [`apply_affine`] in place on a tensor's storage.
struct AffineOp {
    affine: Vec<(f32, f32)>,
    spatial: usize,
    silu: bool,
}

impl InplaceOp1 for AffineOp {
    fn name(&self) -> &'static str {
        "group-norm-affine"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => {
                apply_affine(
                    &mut data[start..end],
                    None,
                    &self.affine,
                    self.spatial,
                    self.silu,
                );
                Ok(())
            }
            _ => candle_core::bail!("group norm in place: expected a contiguous f32 tensor"),
        }
    }
}
