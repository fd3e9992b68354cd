//! The VAE's GroupNorm, whose statistics a tiled pass can record, replay or accumulate over
//! tiles ([`NormStats`]), and the per-pass context that carries them.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

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

impl Default for NormStats {
    /// Per-tile statistics: one pass, and on the random-weight VAEs measured so far the
    /// closest of the bounded-memory choices for decoding (`docs/memory.md`).
    fn default() -> Self {
        NormStats::PerTile
    }
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

    pub(super) fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let internal = if dtype == DType::F64 {
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
        // y = x·s + t per channel, with s = weight / √(var + eps), t = bias − mean·s.
        let per_channel = |t: &Tensor| -> Result<Tensor> {
            t.broadcast_as((b, self.groups, c / self.groups))?
                .reshape((b, c, 1, 1))
        };
        let inv = per_channel(&(var + self.eps)?.sqrt()?.recip()?)?;
        let mean = per_channel(&mean)?;
        let weight = self.weight.to_dtype(internal)?.reshape((1, c, 1, 1))?;
        let bias = self.bias.to_dtype(internal)?.reshape((1, c, 1, 1))?;
        let scale = inv.broadcast_mul(&weight)?;
        let shift = bias.broadcast_sub(&mean.mul(&scale)?)?;
        x.broadcast_mul(&scale.to_dtype(dtype)?)?
            .broadcast_add(&shift.to_dtype(dtype)?)
    }
}
