//! AVX2 versions of the resampling kernels, chosen at run time. They compute exactly the same
//! i32 sums as the portable kernels in [`super::kernel`], 8 lanes at a time.
//!
//! On other architectures [`available`] is false and the entry points are never called.

use super::kernel::{Coefficients, HALF, clip8};

/// Rows the horizontal AVX2 kernel processes together.
pub(crate) const QUAD: usize = 4;

/// Whether this CPU runs the AVX2 kernels.
#[inline]
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Four rows of the horizontal pass from `buf`, where each input pixel is 16 bytes: rows
/// 0–3, 4 samples each (the first `C` used). Writes the `C` samples of each output pixel into
/// the four `out_stride` rows of `dst`.
#[inline]
pub(crate) fn horizontal_quad<const C: usize>(
    buf: &[u8],
    dst: &mut [u8],
    out_stride: usize,
    coeffs: &Coefficients,
) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { x86::horizontal_quad::<C>(buf, dst, out_stride, coeffs) };
        return;
    }
    quad_portable::<C>(buf, dst, out_stride, coeffs);
}

/// The portable equivalent of [`horizontal_quad`].
fn quad_portable<const C: usize>(
    buf: &[u8],
    dst: &mut [u8],
    out_stride: usize,
    coeffs: &Coefficients,
) {
    for o in 0..coeffs.bounds.len() {
        let (xmin, k) = coeffs.taps(o);
        let mut acc = [HALF; 16];
        for (p, &w) in buf[xmin * 16..(xmin + k.len()) * 16]
            .chunks_exact(16)
            .zip(k)
        {
            for (a, &v) in acc.iter_mut().zip(p) {
                *a += i32::from(v) * w;
            }
        }
        for (r, lanes) in acc.chunks_exact(4).enumerate() {
            let start = r * out_stride + o * C;
            for (d, &a) in dst[start..start + C].iter_mut().zip(lanes) {
                *d = clip8(a);
            }
        }
    }
}

/// [`super::kernel::vertical_row`] compiled for AVX2 (the compiler vectorises it with 256-bit
/// multiplies). Falls back to the portable code without AVX2.
#[inline]
pub(crate) fn vertical_row(rows: &[u8], stride: usize, k: &[i32], acc: &mut [i32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { x86::vertical_row(rows, stride, k, acc, dst) };
        return;
    }
    super::kernel::vertical_row(rows, stride, k, acc, dst);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _mm_set_epi64x, _mm_srli_si128, _mm256_add_epi32, _mm256_cvtepu8_epi32,
        _mm256_extract_epi64, _mm256_mullo_epi32, _mm256_packs_epi32, _mm256_packus_epi16,
        _mm256_set1_epi32, _mm256_setzero_si256, _mm256_srai_epi32,
    };

    use super::super::kernel::{Coefficients, HALF, PRECISION_BITS};

    /// 16 bytes of `p` (at least 16 long) as a vector.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load16(p: &[u8]) -> __m128i {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&p[..8]);
        hi.copy_from_slice(&p[8..16]);
        _mm_set_epi64x(i64::from_le_bytes(hi), i64::from_le_bytes(lo))
    }

    /// See [`super::horizontal_quad`].
    #[target_feature(enable = "avx2")]
    pub(super) fn horizontal_quad<const C: usize>(
        buf: &[u8],
        dst: &mut [u8],
        out_stride: usize,
        coeffs: &Coefficients,
    ) {
        let (d0, rest) = dst.split_at_mut(out_stride);
        let (d1, rest) = rest.split_at_mut(out_stride);
        let (d2, d3) = rest.split_at_mut(out_stride);
        let outs = d0
            .chunks_exact_mut(C)
            .zip(d1.chunks_exact_mut(C))
            .zip(d2.chunks_exact_mut(C).zip(d3.chunks_exact_mut(C)));
        let half = _mm256_set1_epi32(HALF);
        let zero = _mm256_setzero_si256();
        for (o, ((p0, p1), (p2, p3))) in outs.enumerate() {
            let (xmin, k) = coeffs.taps(o);
            let taps = &buf[xmin * 16..(xmin + k.len()) * 16];
            // Lanes: rows 0 and 1 in `lo`, rows 2 and 3 in `hi`, 4 samples each.
            let (mut lo, mut hi) = (half, half);
            for (p, &w) in taps.chunks_exact(16).zip(k) {
                let v = load16(p);
                let w = _mm256_set1_epi32(w);
                lo = _mm256_add_epi32(lo, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v), w));
                hi = _mm256_add_epi32(
                    hi,
                    _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v)), w),
                );
            }
            // clip8: shift, then saturate to i16 and u8 (the shifted sums fit i16).
            let lo = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(lo);
            let hi = _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(hi);
            // Per 128-bit half: [row 0 | row 2] and [row 1 | row 3], 4 bytes each.
            let bytes = _mm256_packus_epi16(_mm256_packs_epi32(lo, hi), zero);
            let a = _mm256_extract_epi64::<0>(bytes).to_le_bytes();
            let b = _mm256_extract_epi64::<2>(bytes).to_le_bytes();
            p0.copy_from_slice(&a[..C]);
            p2.copy_from_slice(&a[4..4 + C]);
            p1.copy_from_slice(&b[..C]);
            p3.copy_from_slice(&b[4..4 + C]);
        }
    }

    /// See [`super::vertical_row`].
    #[target_feature(enable = "avx2")]
    pub(super) fn vertical_row(
        rows: &[u8],
        stride: usize,
        k: &[i32],
        acc: &mut [i32],
        dst: &mut [u8],
    ) {
        super::super::kernel::vertical_row(rows, stride, k, acc, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernel::{self, Filter};
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn noise(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect()
    }

    fn interleave<const C: usize>(rows: &[u8], width: usize) -> Vec<u8> {
        let mut buf = vec![0u8; width * 16];
        for (r, row) in rows.chunks_exact(width * C).enumerate() {
            for (p, s) in buf.chunks_exact_mut(16).zip(row.chunks_exact(C)) {
                p[4 * r..4 * r + C].copy_from_slice(s);
            }
        }
        buf
    }

    fn check_quad<const C: usize>(width: usize, out_w: usize, filter: Filter) {
        let rows = noise(width * C * QUAD, (width * 31 + out_w) as u32);
        let coeffs = Coefficients::new(width, 0.0, width as f32, out_w, filter);
        let buf = interleave::<C>(&rows, width);
        let mut simd = vec![0u8; out_w * C * QUAD];
        let mut portable = simd.clone();
        horizontal_quad::<C>(&buf, &mut simd, out_w * C, &coeffs);
        quad_portable::<C>(&buf, &mut portable, out_w * C, &coeffs);
        let mut reference = vec![0u8; out_w * C * QUAD];
        for (row, out) in rows
            .chunks_exact(width * C)
            .zip(reference.chunks_exact_mut(out_w * C))
        {
            kernel::horizontal_row::<C>(row, out, &coeffs);
        }
        assert_eq!(simd, reference, "{C} channels {width}->{out_w}");
        assert_eq!(portable, reference, "{C} channels {width}->{out_w}");
    }

    #[test]
    fn horizontal_kernels_agree() {
        for (w, o) in [(97, 203), (97, 31), (1, 5), (7, 300), (300, 7), (64, 64)] {
            check_quad::<3>(w, o, Filter::Lanczos);
            check_quad::<4>(w, o, Filter::Bicubic);
        }
    }

    #[test]
    fn vertical_kernels_agree() {
        let stride = 3 * 37;
        let rows = noise(stride * 13, 7);
        let coeffs = Coefficients::new(13, 0.0, 13.0, 5, Filter::Lanczos);
        for o in 0..5 {
            let (ymin, k) = coeffs.taps(o);
            let src = &rows[ymin * stride..(ymin + k.len()) * stride];
            let mut acc = vec![0i32; stride];
            let (mut a, mut b) = (vec![0u8; stride], vec![0u8; stride]);
            vertical_row(src, stride, k, &mut acc, &mut a);
            kernel::vertical_row(src, stride, k, &mut acc, &mut b);
            assert_eq!(a, b);
        }
    }
}
