//! The two separable 8-bit passes of Pillow's resampler (`ImagingResampleHorizontal_8bpc`,
//! `ImagingResampleVertical_8bpc`), on interleaved `u8` buffers with `C` channels, output rows
//! computed independently on the rayon pool.
//!
//! Every kernel computes exactly Pillow's sums (i32, the same taps, the same clipping): the
//! portable one-row kernels are in [`super::kernel`]; the x86-64 AVX2 kernels in
//! [`super::avx2`] only do the same several lanes at a time.

use rayon::prelude::*;

use super::avx2;
use super::kernel::{Coefficients, horizontal_row, vertical_row};

/// Output rows handed to a rayon task at a time, so that small images stay cheap.
const MIN_ROWS_PER_TASK: usize = 4;

/// A borrowed interleaved 8-bit image: `height` rows of `width × channels` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plane<'a> {
    /// The samples, row-major.
    pub data: &'a [u8],
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

/// Resamples the input rows `[first, first + n)` of `src` horizontally to
/// `coeffs.bounds.len()` pixels; returns `n` rows.
pub(crate) fn horizontal<const C: usize>(
    src: Plane<'_>,
    first: usize,
    n: usize,
    coeffs: &Coefficients,
) -> Vec<u8> {
    let in_stride = src.width * C;
    let out_stride = coeffs.bounds.len() * C;
    let mut out = vec![0u8; out_stride * n];
    let rows = &src.data[first * in_stride..(first + n) * in_stride];
    if C >= 3 && avx2::available() {
        // Four rows at a time through the AVX2 kernel.
        out.par_chunks_mut(out_stride * avx2::QUAD)
            .zip(rows.par_chunks(in_stride * avx2::QUAD))
            .for_each_init(
                || vec![0u8; src.width * 4 * avx2::QUAD],
                |buf, (dst, block)| {
                    horizontal_block::<C>(block, in_stride, dst, out_stride, buf, coeffs)
                },
            );
    } else {
        out.par_chunks_exact_mut(out_stride)
            .zip(rows.par_chunks_exact(in_stride))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(dst, row)| horizontal_row::<C>(row, dst, coeffs));
    }
    out
}

/// Up to [`avx2::QUAD`] rows of the horizontal pass for 3 or 4 channels: a full block is
/// interleaved into `buf` and goes through the AVX2 kernel, a short last block row by row.
fn horizontal_block<const C: usize>(
    block: &[u8],
    in_stride: usize,
    dst: &mut [u8],
    out_stride: usize,
    buf: &mut [u8],
    coeffs: &Coefficients,
) {
    if block.len() != in_stride * avx2::QUAD {
        for (row, out_row) in block
            .chunks_exact(in_stride)
            .zip(dst.chunks_exact_mut(out_stride))
        {
            horizontal_row::<C>(row, out_row, coeffs);
        }
        return;
    }
    for (r, row) in block.chunks_exact(in_stride).enumerate() {
        for (p, s) in buf
            .chunks_exact_mut(4 * avx2::QUAD)
            .zip(row.chunks_exact(C))
        {
            p[4 * r..4 * r + C].copy_from_slice(s);
        }
    }
    avx2::horizontal_quad::<C>(buf, dst, out_stride, coeffs);
}

/// Resamples `src` vertically to `coeffs.bounds.len()` rows (row indices in `coeffs` are
/// relative to `src`'s first row); `channels` samples per pixel.
pub(crate) fn vertical(src: Plane<'_>, channels: usize, coeffs: &Coefficients) -> Vec<u8> {
    let stride = src.width * channels;
    let out_h = coeffs.bounds.len();
    let mut out = vec![0u8; stride * out_h];
    if stride == 0 {
        return out;
    }
    let simd = avx2::available();
    out.par_chunks_exact_mut(stride)
        .enumerate()
        .with_min_len(MIN_ROWS_PER_TASK)
        .for_each_init(
            || vec![0i32; stride],
            |acc, (o, dst)| {
                let (ymin, k) = coeffs.taps(o);
                let rows = &src.data[ymin * stride..(ymin + k.len()) * stride];
                if simd {
                    avx2::vertical_row(rows, stride, k, acc, dst);
                } else {
                    vertical_row(rows, stride, k, acc, dst);
                }
            },
        );
    out
}
