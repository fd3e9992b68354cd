//! Batched matrix transposes on the CPU: `(batch, rows, cols)` → `(batch, cols, rows)` in
//! f32, in square blocks that stay in L1 on both sides, on candle's threads. The UNet's
//! attention blocks turn `(batch, channels, h·w)` maps into `(batch, h·w, channels)` tokens and
//! back; candle's strided copy for that permutation reads one element at a time.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::kernels::storage::f32_slice;

/// Side of the blocks (16 × 16 f32: 16 cache lines each side).
const BLOCK: usize = 16;

/// `xs: (batch, rows, cols)` → `(batch, cols, rows)`, contiguous: the fast path for f32 CPU
/// tensors, candle's `transpose` + `contiguous` elsewhere.
pub fn transpose_last_two(xs: &Tensor) -> Result<Tensor> {
    let (batch, rows, cols) = xs.dims3()?;
    if !matches!(xs.device(), Device::Cpu) || xs.dtype() != DType::F32 {
        return xs.transpose(1, 2)?.contiguous();
    }
    let xs = xs.contiguous()?;
    let (store, layout) = xs.storage_and_layout();
    let src = f32_slice(&store, layout)?;
    let mut out = crate::kernels::filled::zeros(batch * rows * cols);
    if !out.is_empty() {
        // Per image, bands of BLOCK output rows (source columns).
        out.par_chunks_mut(rows * cols)
            .zip(src.par_chunks(rows * cols))
            .for_each(|(dst, src)| {
                dst.par_chunks_mut(BLOCK * rows)
                    .enumerate()
                    .for_each(|(band, dst)| {
                        let c0 = band * BLOCK;
                        let width = (cols - c0).min(BLOCK);
                        for r0 in (0..rows).step_by(BLOCK) {
                            let height = (rows - r0).min(BLOCK);
                            for c in 0..width {
                                let dst_row = &mut dst[c * rows + r0..][..height];
                                for (r, d) in dst_row.iter_mut().enumerate() {
                                    *d = src[(r0 + r) * cols + c0 + c];
                                }
                            }
                        }
                    });
            });
    }
    drop(store);
    Tensor::from_vec(out, (batch, cols, rows), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candles_transpose() {
        for (batch, rows, cols) in [(2, 5, 7), (1, 16, 16), (3, 40, 33), (2, 1, 300)] {
            let n = batch * rows * cols;
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let xs = Tensor::from_vec(data, (batch, rows, cols), &Device::Cpu).unwrap();
            let ours = transpose_last_two(&xs).unwrap();
            let reference = xs.transpose(1, 2).unwrap().contiguous().unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let (a, b): (Vec<f32>, Vec<f32>) = (
                ours.flatten_all().unwrap().to_vec1().unwrap(),
                reference.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "{batch}×{rows}×{cols}");
        }
    }
}
