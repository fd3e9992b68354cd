//! Tiled diffusion (MultiDiffusion): a loop past the model's native size denoises overlapping
//! latent tiles of about that size at every step and blends their noise predictions with
//! feathered weights, so the UNet never sees more than a tile (memory and time grow with the
//! area, not its square, and subjects do not repeat).
//!
//! Tile starts along an axis of length `L` with tile `T`, overlap `O` and grid offset `off`:
//! one tile at 0 when `L ≤ T`; else `{0, L − T} ∪ {off + k·(T − O) strictly between}`. A
//! tile's weight is the product of per-axis ramps `min(1, (i + 1)/(O + 1), (n − i)/(O + 1))`,
//! each ramp only on a side inside the image. The runner moves the grid's offset from loop to
//! loop, so seams never fall in the same place twice. One tile covering the image gives
//! exactly the untiled result.

use candle_core::{DType, Device, Tensor};

use crate::error::engine_err;
use loopback_core::Result;
use loopback_core::plan::LoopSpec;
use loopback_core::settings::{Settings, Tiling};

/// The tiled-diffusion settings of a run (the `tile*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSettings {
    /// Auto, off or always.
    pub mode: Tiling,
    /// Tile side in pixels; 0: the model's native size.
    pub size: u32,
    /// Overlap in pixels.
    pub overlap: u32,
}

impl TileSettings {
    /// The tiling settings of `settings`.
    pub fn of(settings: &Settings) -> Self {
        TileSettings {
            mode: settings.tile,
            size: settings.tile_size,
            overlap: settings.tile_overlap,
        }
    }

    /// The tiling of loop `spec` for a model whose native size is `native` pixels (the UNet's
    /// `sample_size` × the VAE's `downscale`), or `None` when the loop runs untiled. Auto
    /// tiles loops whose larger side is past 1.5 × native; a loop no larger than one tile is
    /// never tiled. Tiles are at least 8 latent pixels, the overlap at most half a tile, and
    /// the grid's offset moves by a third of a tile each loop (modulo the stride), so seams
    /// do not fall in the same place twice.
    pub fn for_loop(&self, spec: &LoopSpec, native: usize, downscale: usize) -> Option<TileSpec> {
        let down = downscale.max(1);
        let largest = spec.width.max(spec.height) as usize;
        let wanted = match self.mode {
            Tiling::Off => false,
            Tiling::On => true,
            Tiling::Auto => largest * 2 > native * 3,
        };
        let tile_px = if self.size == 0 {
            native
        } else {
            self.size as usize
        };
        let tile = (tile_px / down).max(8);
        let overlap = (self.overlap as usize / down).min(tile / 2);
        if !wanted || largest <= tile_px {
            return None;
        }
        let stride = (tile - overlap).max(1);
        Some(TileSpec {
            tile,
            overlap,
            offset: (spec.index.max(1) as usize - 1) * (tile / 3).max(1) % stride,
        })
    }
}

/// A tiling's grid over `(h, w)` latent pixels: (rows, columns) of tiles.
pub fn grid(h: usize, w: usize, spec: &TileSpec) -> (usize, usize) {
    (starts(h, spec).0.len(), starts(w, spec).0.len())
}

/// A tiling in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileSpec {
    /// Tile side.
    pub tile: usize,
    /// Overlap between neighbouring tiles.
    pub overlap: usize,
    /// Offset of the grid's inner tiles (`0 ≤ offset < tile − overlap`).
    pub offset: usize,
}

/// The tile starts along an axis of `len` latent pixels, and the tile length.
pub fn starts(len: usize, spec: &TileSpec) -> (Vec<usize>, usize) {
    if len <= spec.tile {
        return (vec![0], len);
    }
    let stride = spec.tile.saturating_sub(spec.overlap).max(1);
    let last = len - spec.tile;
    let mut starts = vec![0, last];
    let mut at = spec.offset % stride;
    while at < last {
        if at > 0 {
            starts.push(at);
        }
        at += stride;
    }
    starts.sort_unstable();
    starts.dedup();
    (starts, spec.tile)
}

/// A tile's weights along one axis (float32).
fn ramp(start: usize, n: usize, len: usize, overlap: usize) -> Vec<f32> {
    let o = (overlap + 1) as f32;
    (0..n)
        .map(|i| {
            let lo = if start > 0 { (i + 1) as f32 / o } else { 1.0 };
            let hi = if start + n < len {
                (n - i) as f32 / o
            } else {
                1.0
            };
            lo.min(hi).min(1.0)
        })
        .collect()
}

/// The tiles of a latent image, with their weights and the weights' sum.
#[derive(Debug)]
pub struct Tiles {
    /// `(y, x, h, w)` of each tile, rows first.
    pub rects: Vec<(usize, usize, usize, usize)>,
    weights: Vec<Tensor>,
    sum: Tensor,
}

impl Tiles {
    /// The tiles of an `h × w` latent image.
    pub fn new(h: usize, w: usize, spec: &TileSpec, device: &Device) -> Result<Self> {
        let (ys, th) = starts(h, spec);
        let (xs, tw) = starts(w, spec);
        let mut rects = Vec::new();
        let mut weights = Vec::new();
        let mut sum = vec![0f32; h * w];
        for &y in &ys {
            for &x in &xs {
                let (ry, rx) = (ramp(y, th, h, spec.overlap), ramp(x, tw, w, spec.overlap));
                let values: Vec<f32> = ry
                    .iter()
                    .flat_map(|a| rx.iter().map(move |b| a * b))
                    .collect();
                for (i, v) in values.iter().enumerate() {
                    sum[(y + i / tw) * w + x + i % tw] += v;
                }
                weights.push(
                    Tensor::from_vec(values, (1, 1, th, tw), device)
                        .map_err(engine_err("tiles"))?,
                );
                rects.push((y, x, th, tw));
            }
        }
        let sum = Tensor::from_vec(sum, (1, 1, h, w), device).map_err(engine_err("tiles"))?;
        Ok(Tiles {
            rects,
            weights,
            sum,
        })
    }

    /// The blended prediction over `like`'s shape `(1, c, h, w)`: `predict` gives each tile's
    /// prediction for its crop of the input, told where the crop lies (`(y, x, h, w)` in
    /// latent pixels).
    pub fn blend(
        &self,
        like: &Tensor,
        mut predict: impl FnMut(&Tensor, (usize, usize, usize, usize)) -> Result<Tensor>,
        input: &Tensor,
    ) -> Result<Tensor> {
        let err = || engine_err("tiled prediction");
        let mut canvas = like
            .zeros_like()
            .map_err(err())?
            .to_dtype(DType::F32)
            .map_err(err())?;
        for (&(y, x, h, w), weight) in self.rects.iter().zip(&self.weights) {
            let crop = input
                .narrow(2, y, h)
                .and_then(|t| t.narrow(3, x, w))
                .map_err(err())?;
            let predicted = predict(&crop, (y, x, h, w))?;
            let region = canvas
                .narrow(2, y, h)
                .and_then(|t| t.narrow(3, x, w))
                .map_err(err())?;
            let sum = (region + predicted.broadcast_mul(weight).map_err(err())?).map_err(err())?;
            canvas = canvas
                .slice_assign(
                    &[0..1, 0..canvas.dim(1).map_err(err())?, y..y + h, x..x + w],
                    &sum,
                )
                .map_err(err())?;
        }
        canvas.broadcast_div(&self.sum).map_err(err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis_and_move_with_the_offset() {
        let spec = |offset| TileSpec {
            tile: 6,
            overlap: 2,
            offset,
        };
        assert_eq!(starts(5, &spec(0)), (vec![0], 5));
        assert_eq!(starts(12, &spec(0)), (vec![0, 4, 6], 6));
        assert_eq!(starts(12, &spec(1)), (vec![0, 1, 5, 6], 6));
        assert_eq!(starts(6, &spec(1)), (vec![0], 6));
    }

    #[test]
    fn ramps_fade_only_inside_the_image() {
        assert_eq!(ramp(0, 4, 4, 2), [1.0; 4]);
        let r = ramp(2, 4, 10, 2);
        assert_eq!(r, [1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0]);
        assert_eq!(
            ramp(0, 6, 12, 2),
            [1.0, 1.0, 1.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]
        );
    }
}
