//! Attention's probabilities packed straight into bf16: each row of scores becomes
//! `exp(score · scale − max · scale)` rounded to bf16 in the left operand's layout (`pack.rs`),
//! with the row's normaliser `1 / Σ exp` (summed in f32 before rounding), in one pass after
//! the row's maximum — no f32 copy of the probabilities is written and packed again.
//!
//! On AVX-512 the `exp` is a degree-5 polynomial after the usual `2^k` reduction (relative
//! error below 3e-6, far under bf16's 2⁻⁹ rounding of the result) with fused multiply-adds and
//! `vscalefps`; elsewhere it is the f32 path's `exp_row` followed by the ordinary packing.

use super::pack::PackedLhs;
use crate::kernels::fastmath::exp_row;

impl PackedLhs {
    /// Packs `softmax(scores · scale)` before its normalisation: `scores` is `rows × n` (row
    /// stride `n`; it may be overwritten), the operand becomes `rows × n`, and `norms[r]`
    /// gets row `r`'s normaliser.
    pub(crate) fn repack_softmax(
        &mut self,
        scores: &mut [f32],
        (rows, n): (usize, usize),
        scale: f32,
        norms: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if super::simd::available() && n > 0 {
            let kp = super::pack::padded_k(n);
            let data = self.reshape(rows, n);
            for (r, norm) in norms[..rows].iter_mut().enumerate() {
                let row = &scores[r * n..][..n];
                // SAFETY: the CPU has the features; `data` holds the operand's row tiles.
                *norm = unsafe { x86::exp_pack_row(row, scale, data, r, kp) };
            }
            let padding = rows.div_ceil(16) * 16 - rows;
            for r in rows..rows + padding {
                for chunk in 0..kp / 32 {
                    let at = r / 16 * 16 * kp + chunk * super::scalar::TILE + r % 16 * 32;
                    data[at..at + 32].fill(0);
                }
            }
            return;
        }
        for (row, norm) in scores.chunks_mut(n.max(1)).zip(norms[..rows].iter_mut()) {
            *norm = exp_row(row, scale);
        }
        self.repack(rows, n, (scores, n, 1), false);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::scalar::TILE;
    use std::arch::x86_64::*;

    /// `e^x` for `x ≤ 0`, 16 lanes (see the module's notes); lanes below −87 give about 0.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.0 / 120.0);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 24.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 6.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        let p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
        _mm512_scalef_ps(_mm512_add_ps(p, _mm512_set1_ps(1.0)), k)
    }

    /// 32 finite, non-negative f32 lanes (`lo` then `hi`) rounded to bf16 (nearest even), in
    /// order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn to_bf16(lo: __m512, hi: __m512) -> __m512i {
        let round = |x: __m512| {
            let x = _mm512_castps_si512(x);
            let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
            _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)))
        };
        let odd_words = _mm512_set_epi16(
            63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21,
            19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
        );
        _mm512_permutex2var_epi16(round(lo), odd_words, round(hi))
    }

    /// Row `r` of the packed operand (row tiles of `kp` padded columns in `data`) ←
    /// bf16(`exp(row · scale − max · scale)`), zero past the row's end; returns `1 / Σ exp`.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512BW; `data` holds row `r`'s tile.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn exp_pack_row(
        row: &[f32],
        scale: f32,
        data: &mut [u16],
        r: usize,
        kp: usize,
    ) -> f32 {
        let n = row.len();
        let mask = |start: usize| -> __mmask16 {
            let left = n.saturating_sub(start).min(16);
            ((1u32 << left) - 1) as __mmask16
        };
        // SAFETY (loads): masked to the row's `n` values.
        let load = |start: usize| unsafe {
            _mm512_maskz_loadu_ps(mask(start), row.as_ptr().add(start.min(n)))
        };
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for start in (0..n).step_by(16) {
            let v =
                _mm512_mask_blend_ps(mask(start), _mm512_set1_ps(f32::NEG_INFINITY), load(start));
            max = _mm512_max_ps(max, v);
        }
        let shift = _mm512_set1_ps(_mm512_reduce_max_ps(max) * scale);
        let scale = _mm512_set1_ps(scale);
        let tile = &mut data[r / 16 * 16 * kp + r % 16 * 32..];
        let mut sum = _mm512_setzero_ps();
        for chunk in 0..kp / 32 {
            let start = 32 * chunk;
            let e = |s: usize| {
                let x = _mm512_fmsub_ps(load(s), scale, shift);
                _mm512_maskz_mov_ps(mask(s), exp(x))
            };
            let (lo, hi) = (e(start), e(start + 16));
            sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
            let dst = tile[chunk * TILE..][..32].as_mut_ptr();
            // SAFETY: 32 elements of the tile row.
            unsafe { _mm512_storeu_si512(dst.cast(), to_bf16(lo, hi)) };
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }
}
