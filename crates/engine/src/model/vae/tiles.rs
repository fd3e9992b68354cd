//! Splitting a VAE pass into overlapping tiles and blending them back: the grid of core
//! cells, their halos, and the feathering weights that sum to one across neighbours.

use std::ops::Range;

use candle_core::{Result, Tensor};

use crate::model::vae::norm::NormStats;

/// How to split a VAE pass into tiles. Sizes are in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Side of a tile's core cell (the grid step).
    pub tile: usize,
    /// Context added on each side of a core cell.
    pub halo: usize,
    /// Width of the feathering band centred on each cell boundary (at most `2 × halo`).
    pub blend: usize,
    /// Where the GroupNorms get their statistics.
    pub stats: NormStats,
}

impl Tiling {
    /// Defaults for decoding with `tile`-latent-pixel cells: a 12-latent-pixel halo (the up
    /// blocks' receptive field is about 13), an 8-latent-pixel (64 px) feathering band and
    /// per-tile GroupNorm statistics (the closest to a whole decode of the bounded-memory
    /// choices measured: `docs/memory.md`).
    pub fn decode(tile: usize) -> Self {
        Tiling {
            tile: tile.max(4),
            halo: 12,
            blend: 8,
            stats: NormStats::PerTile,
        }
    }

    /// Defaults for encoding with `tile`-latent-pixel cells: an 8-latent-pixel (64 px) halo,
    /// a 4-latent-pixel feathering band and GroupNorm statistics estimated from the image
    /// downscaled to about one tile (for encoding, measured much closer to the whole pass
    /// than per-tile statistics: `docs/memory.md`).
    pub fn encode(tile: usize) -> Self {
        Tiling {
            tile: tile.max(4),
            halo: 8,
            blend: 4,
            stats: NormStats::Estimated,
        }
    }
}

/// Whether a VAE pass is tiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TileMode {
    /// The memory planner decides from the size and the memory available
    /// ([`crate::run::memory::vae_tiling`]).
    #[default]
    Auto,
    /// Always whole.
    Never,
    /// Always tiled with cells of this many latent pixels (defaults otherwise).
    Always(usize),
}

/// Near-equal cells of at most `tile` over `0..n`.
pub(super) fn cells(n: usize, tile: usize) -> Vec<Range<usize>> {
    let count = n.div_ceil(tile.max(1)).max(1);
    (0..count)
        .map(|i| (i * n / count)..((i + 1) * n / count))
        .collect()
}

/// Feathering weights, in output pixels, of a tile covering `ext` (output pixels) whose cell
/// is `cell`, over an axis of `n` pixels: 1 inside the cell, linear ramps of width `band`
/// centred on each inner cell boundary (none at the image border). Neighbours' ramps are
/// complementary, so the weights of all tiles sum to one everywhere.
pub(super) fn feather(ext: &Range<usize>, cell: &Range<usize>, n: usize, band: usize) -> Vec<f32> {
    let half = band as f64 / 2.0;
    let ramp = |x: f64, edge: f64| -> f64 {
        if band == 0 {
            if x >= edge { 1.0 } else { 0.0 }
        } else {
            ((x - (edge - half)) / band as f64).clamp(0.0, 1.0)
        }
    };
    ext.clone()
        .map(|p| {
            let x = p as f64 + 0.5;
            let mut w = 1.0;
            if cell.start > 0 {
                w *= ramp(x, cell.start as f64);
            }
            if cell.end < n {
                w *= 1.0 - ramp(x, cell.end as f64);
            }
            w as f32
        })
        .collect()
}

/// One tile: its cell and extended window in latent pixels along each axis.
pub(super) struct Tile {
    pub(super) cell: (Range<usize>, Range<usize>),
    pub(super) ext: (Range<usize>, Range<usize>),
}

pub(super) fn tiles(h: usize, w: usize, tiling: &Tiling) -> Vec<Tile> {
    let mut out = Vec::new();
    let halo = tiling.halo;
    let extend = |c: &Range<usize>, n: usize| c.start.saturating_sub(halo)..(c.end + halo).min(n);
    for cy in cells(h, tiling.tile) {
        for cx in cells(w, tiling.tile) {
            out.push(Tile {
                ext: (extend(&cy, h), extend(&cx, w)),
                cell: (cy.clone(), cx),
            });
        }
    }
    out
}

/// The feathering band in latent pixels: at most `2 × halo` (both tiles of a boundary cover
/// it) and at most the smallest cell (bands of neighbouring boundaries never overlap, so the
/// weights stay a partition of unity).
pub(super) fn band(h: usize, w: usize, t: &Tiling) -> usize {
    let smallest = cells(h, t.tile)
        .iter()
        .chain(cells(w, t.tile).iter())
        .map(tile_len)
        .min()
        .unwrap_or(0);
    t.blend.min(2 * t.halo).min(smallest)
}

/// `(1, 1, h, w)` weights of a tile in output units (`scale` output pixels per latent), with
/// a feathering band of `band` latent pixels.
pub(super) fn tile_weights(
    tile: &Tile,
    (h, w): (usize, usize),
    scale: usize,
    band: usize,
    like: &Tensor,
) -> Result<Tensor> {
    let s = |r: &Range<usize>| (r.start * scale)..(r.end * scale);
    let band = band * scale;
    let wy = feather(&s(&tile.ext.0), &s(&tile.cell.0), h * scale, band);
    let wx = feather(&s(&tile.ext.1), &s(&tile.cell.1), w * scale, band);
    let wy = Tensor::from_vec(wy, (1, 1, tile_len(&tile.ext.0) * scale, 1), like.device())?;
    let wx = Tensor::from_vec(wx, (1, 1, 1, tile_len(&tile.ext.1) * scale), like.device())?;
    wy.broadcast_mul(&wx)
}

pub(super) fn tile_len(r: &Range<usize>) -> usize {
    r.end - r.start
}

/// `x` cropped to `(ys, xs)` on its last two axes, contiguous.
pub(super) fn crop(x: &Tensor, ys: &Range<usize>, xs: &Range<usize>) -> Result<Tensor> {
    x.narrow(2, ys.start, tile_len(ys))?
        .narrow(3, xs.start, tile_len(xs))?
        .contiguous()
}

/// Adds `src` into `canvas` at `(ys, xs)` (output units).
pub(super) fn accumulate(
    canvas: &Tensor,
    src: &Tensor,
    ys: Range<usize>,
    xs: Range<usize>,
) -> Result<Tensor> {
    let (b, c, _, _) = canvas.dims4()?;
    let current = crop(canvas, &ys, &xs)?;
    canvas.slice_assign(&[0..b, 0..c, ys, xs], &(current + src)?)
}

/// The downscale factor that brings a `(h, w)` grid to about one `tile`-sized cell.
pub(super) fn estimate_factor(h: usize, w: usize, tile: usize) -> usize {
    h.max(w).div_ceil(tile.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_the_axis() {
        for n in [1, 7, 64, 100, 257] {
            for tile in [1, 4, 16, 64, 300] {
                let c = cells(n, tile);
                assert_eq!(c[0].start, 0);
                assert_eq!(c.last().unwrap().end, n);
                assert!(c.windows(2).all(|p| p[0].end == p[1].start));
                assert!(
                    c.iter()
                        .all(|r| r.end - r.start <= tile.max(1) && r.end > r.start)
                );
            }
        }
    }

    #[test]
    fn feathering_weights_sum_to_one() {
        let n = 200;
        for (tile, halo, band) in [(64, 12, 8), (50, 8, 16), (33, 4, 0), (200, 4, 4)] {
            let t = Tiling {
                tile,
                halo,
                blend: band,
                stats: NormStats::PerTile,
            };
            let mut sum = vec![0f32; n * n];
            let band = super::band(n, n, &t);
            for tl in tiles(n, n, &t) {
                let wy = feather(&tl.ext.0, &tl.cell.0, n, band);
                let wx = feather(&tl.ext.1, &tl.cell.1, n, band);
                for (i, y) in tl.ext.0.clone().enumerate() {
                    for (j, x) in tl.ext.1.clone().enumerate() {
                        sum[y * n + x] += wy[i] * wx[j];
                    }
                }
            }
            let worst = sum.iter().map(|s| (s - 1.0).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-5, "tile {tile} band {band}: off by {worst}");
        }
    }
}
