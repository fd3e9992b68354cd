//! Attention's probabilities packed straight into bf16: each row of scores becomes
//! `exp(score · scale − max · scale)` rounded to bf16 in the left operand's layout (`pack.rs`),
//! with the row's normaliser `1 / Σ exp` (summed in f32 before rounding), in one pass after
//! the row's maximum — no f32 copy of the probabilities is written and packed again.
//!
//! On AVX-512 the `exp` is taken in base 2 (the scale times log₂e folded into one fused
//! multiply-subtract), `2^f` a degree-4 polynomial after the `2^k` reduction (relative error
//! below 3e-6, far under bf16's 2⁻⁹ rounding of the result) and `vscalefps`: nine vector
//! operations where the natural-base degree-5 form took thirteen. The rounding to bf16 is
//! `vcvtne2ps2bf16` where the CPU has AVX512-BF16; elsewhere (no AVX-512) the probabilities
//! come from the f32 path's `exp_row`, followed by the ordinary packing.

use super::pack::PackedLhs;
use crate::kernels::fastmath::exp_row;

impl PackedLhs {
    /// Packs `softmax(scores · scale)` before its normalisation: `scores` is `rows × n` (rows
    /// `stride` ≥ `n` apart; it may be overwritten), the operand becomes `rows × n`, and
    /// `norms[r]` gets row `r`'s normaliser.
    pub(crate) fn repack_softmax(
        &mut self,
        scores: &mut [f32],
        (rows, n, stride): (usize, usize, usize),
        scale: f32,
        norms: &mut [f32],
    ) {
        assert!(stride >= n && (rows == 0 || scores.len() >= (rows - 1) * stride + n));
        #[cfg(target_arch = "x86_64")]
        if super::simd::available() && n > 0 {
            let kp = super::pack::padded_k(n);
            let data = self.reshape(rows, n);
            let native = super::native_conversion();
            for (r, norm) in norms[..rows].iter_mut().enumerate() {
                let row = &scores[r * stride..][..n];
                // SAFETY: the CPU has the features; `data` holds the operand's row tiles.
                *norm = unsafe {
                    if native {
                        x86::exp_pack_row_native(row, scale, data, r, kp)
                    } else {
                        x86::exp_pack_row(row, scale, data, r, kp)
                    }
                };
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
        for (r, norm) in norms[..rows].iter_mut().enumerate() {
            *norm = exp_row(&mut scores[r * stride..][..n], scale);
        }
        self.repack(rows, n, (scores, stride, 1), false);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::scalar::TILE;
    use super::super::simd::bf16x32;
    use crate::kernels::fastmath::EXP2_POLY;
    use std::arch::x86_64::*;

    /// `2^t` for `t ≤ 0`, 16 lanes (see the module's notes): `t = k + f` with `k` the nearest
    /// integer, `2^f` a degree-4 polynomial on [−½, ½] (fitted for relative error, at most
    /// 2.9e-6), times `2^k` by `vscalefps` (0 below f32's range; the clamp keeps `−∞` from
    /// becoming NaN).
    #[inline(always)]
    unsafe fn exp2(t: __m512) -> __m512 {
        // SAFETY: the caller has AVX512F.
        unsafe {
            let t = _mm512_max_ps(t, _mm512_set1_ps(-150.0));
            let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
            let f = _mm512_sub_ps(t, k);
            let [first, rest @ ..] = EXP2_POLY;
            let mut p = _mm512_set1_ps(first);
            for c in rest {
                p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
            }
            _mm512_scalef_ps(p, k)
        }
    }

    /// 32 finite, non-negative f32 lanes (`lo` then `hi`) rounded to bf16 (nearest even), in
    /// order; with `vcvtne2ps2bf16` where the CPU has AVX512-BF16.
    #[inline(always)]
    unsafe fn to_bf16<const NATIVE: bool>(lo: __m512, hi: __m512) -> __m512i {
        // SAFETY: the caller has AVX512F and AVX512BW, and AVX512-BF16 when `NATIVE`; the
        // vector types are plain bit containers of the same size.
        unsafe {
            if NATIVE {
                return std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            }
            bf16x32(_mm512_castps_si512(lo), _mm512_castps_si512(hi))
        }
    }

    /// The 16 values of `row` from `start` (zero past its end).
    #[inline(always)]
    unsafe fn load_masked(row: &[f32], start: usize) -> __m512 {
        let n = row.len();
        let mask = ((1u32 << n.saturating_sub(start).min(16)) - 1) as __mmask16;
        // SAFETY: the caller has AVX512F; only lanes below `n` are read.
        unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(start.min(n))) }
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
        // SAFETY: the caller's guarantees.
        unsafe { exp_pack_row_with::<false>(row, scale, data, r, kp) }
    }

    /// [`exp_pack_row`] with `vcvtne2ps2bf16`.
    ///
    /// # Safety
    /// As [`exp_pack_row`], and the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn exp_pack_row_native(
        row: &[f32],
        scale: f32,
        data: &mut [u16],
        r: usize,
        kp: usize,
    ) -> f32 {
        // SAFETY: the caller's guarantees.
        unsafe { exp_pack_row_with::<true>(row, scale, data, r, kp) }
    }

    /// The body of both: whole vectors unmasked, the row's last partial ones masked.
    #[inline(always)]
    unsafe fn exp_pack_row_with<const NATIVE: bool>(
        row: &[f32],
        scale: f32,
        data: &mut [u16],
        r: usize,
        kp: usize,
    ) -> f32 {
        let n = row.len();
        let whole = n / 32;
        let tile = &mut data[r / 16 * 16 * kp + r % 16 * 32..];
        // SAFETY: loads stay inside the row (whole vectors below `n`, the rest masked); the
        // stores write 32 elements of the row's tile; the caller has the features. No
        // closures: they would not inherit the callers' target features.
        unsafe {
            let p = row.as_ptr();
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for chunk in 0..whole {
                let lo = _mm512_loadu_ps(p.add(32 * chunk));
                let hi = _mm512_loadu_ps(p.add(32 * chunk + 16));
                max = _mm512_max_ps(max, _mm512_max_ps(lo, hi));
            }
            let mut tail_max = f32::NEG_INFINITY;
            for &v in &row[32 * whole..] {
                tail_max = tail_max.max(v);
            }
            let max = _mm512_reduce_max_ps(max).max(tail_max);
            // In base 2: `e^(x·scale − max·scale) = 2^(x·scale·log₂e − max·scale·log₂e)`.
            let scale = scale * std::f32::consts::LOG2_E;
            let shift = _mm512_set1_ps(max * scale);
            let scale = _mm512_set1_ps(scale);
            let mut sums = [_mm512_setzero_ps(); 2];
            for chunk in 0..kp / 32 {
                let start = 32 * chunk;
                let (lo, hi) = if chunk < whole {
                    let lo = _mm512_fmsub_ps(_mm512_loadu_ps(p.add(start)), scale, shift);
                    let hi = _mm512_fmsub_ps(_mm512_loadu_ps(p.add(start + 16)), scale, shift);
                    (exp2(lo), exp2(hi))
                } else {
                    let lo = _mm512_fmsub_ps(load_masked(row, start), scale, shift);
                    let hi = _mm512_fmsub_ps(load_masked(row, start + 16), scale, shift);
                    let valid = |s: usize| ((1u32 << n.saturating_sub(s).min(16)) - 1) as __mmask16;
                    (
                        _mm512_maskz_mov_ps(valid(start), exp2(lo)),
                        _mm512_maskz_mov_ps(valid(start + 16), exp2(hi)),
                    )
                };
                sums[0] = _mm512_add_ps(sums[0], lo);
                sums[1] = _mm512_add_ps(sums[1], hi);
                let dst = tile[chunk * TILE..][..32].as_mut_ptr();
                _mm512_storeu_si512(dst.cast(), to_bf16::<NATIVE>(lo, hi));
            }
            1.0 / _mm512_reduce_add_ps(_mm512_add_ps(sums[0], sums[1]))
        }
    }
}
