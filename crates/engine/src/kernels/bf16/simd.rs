//! The packing loops with explicit AVX-512 (F + BW) conversions: 16 or 32 values per step,
//! the same bits as [`bf16_bits`](super::scalar::bf16_bits). The scalar code of `scalar.rs`
//! handles the edges.

use super::scalar::{TILE, lhs_segment, pack_lhs_tile as pack_lhs_tile_scalar, rhs_pairs};
use crate::kernels::gemm::View;
use std::arch::x86_64::*;

/// Whether the CPU has AVX512F and AVX512BW (every CPU with a fast bf16 path does).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// How many rows ahead the left operand's packing prefetches its source.
const PREFETCH_ROWS: usize = 2;

/// Asks for `values[start..start + len]` in L1 ahead of use (row segments of a k block are
/// too short for the hardware prefetchers to catch up).
#[inline]
fn prefetch(values: &[f32], start: usize, len: usize) {
    let end = (start + len).min(values.len());
    for i in (start..end).step_by(16) {
        // SAFETY: prefetching never faults; the address is inside `values`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(values.as_ptr().add(i).cast()) };
    }
}

/// 16 f32 lanes turned into lanes whose high 16 bits are their bf16 (round to nearest even;
/// NaN made quiet) and whose low 16 bits are to be dropped.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn rounded_high(x: __m512i) -> __m512i {
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    let magnitude = _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff));
    let nan = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
    _mm512_mask_blend_epi32(
        nan,
        rounded,
        _mm512_or_si512(x, _mm512_set1_epi32(0x0040_0000)),
    )
}

/// The bf16 of 32 consecutive f32 at `src`, in order (the high halves of both
/// [`rounded_high`]s).
///
/// # Safety
/// `src` points at 32 readable f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn convert32(src: *const f32) -> __m512i {
    // SAFETY: 32 readable values (caller).
    let (lo, hi) = unsafe {
        (
            _mm512_loadu_si512(src.cast()),
            _mm512_loadu_si512(src.add(16).cast()),
        )
    };
    bf16x32(lo, hi)
}

/// The bf16 of the 32 f32 lanes of `lo` then `hi` (as bits), in order: the high halves of
/// both [`rounded_high`]s.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn bf16x32(lo: __m512i, hi: __m512i) -> __m512i {
    let odd_words = _mm512_set_epi16(
        63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19,
        17, 15, 13, 11, 9, 7, 5, 3, 1,
    );
    _mm512_permutex2var_epi16(rounded_high(lo), odd_words, rounded_high(hi))
}

/// [`pack_lhs_tile_scalar`], 32 values at a time along contiguous rows.
///
/// # Safety
/// The CPU has AVX512F and AVX512BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_lhs_tile(
    tile: &mut [u16],
    row0: usize,
    m: usize,
    k: usize,
    chunk0: usize,
    lhs: View,
) {
    let (values, rs, cs) = lhs;
    if rs == 1 && cs != 1 && row0 + 16 <= m {
        // SAFETY: the CPU has the features (caller); 16 whole rows.
        return unsafe { pack_lhs_tile_columns(tile, row0, k, chunk0, lhs) };
    }
    if cs != 1 {
        return pack_lhs_tile_scalar(tile, row0, m, k, chunk0, lhs);
    }
    let rows = (m - row0).min(16);
    let chunks = tile.len() / TILE;
    for r in 0..16 {
        if row0 + r + PREFETCH_ROWS < m {
            prefetch(
                values,
                (row0 + r + PREFETCH_ROWS) * rs + chunk0 * 32,
                32 * chunks,
            );
        }
        for c in 0..chunks {
            let dst = &mut tile[c * TILE + r * 32..][..32];
            let kk0 = (chunk0 + c) * 32;
            if r >= rows {
                dst.fill(0);
            } else if kk0 + 32 <= k {
                let src = &values[(row0 + r) * rs + kk0..][..32];
                // SAFETY: 32 values each side.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), convert32(src.as_ptr())) };
            } else {
                lhs_segment(dst, row0 + r, kk0, k, lhs);
            }
        }
    }
}

/// [`pack_lhs_tile`] for a left operand stored by columns (`lhs_rs == 1`, e.g. a transposed
/// patch matrix) and 16 whole rows: each k's 16 rows are one contiguous load, converted at
/// once, then transposed into the tile's row order through a small buffer.
///
/// # Safety
/// The CPU has AVX512F and AVX512BW; rows `row0..row0 + 16` exist.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_lhs_tile_columns(tile: &mut [u16], row0: usize, k: usize, chunk0: usize, lhs: View) {
    let (values, _, cs) = lhs;
    let chunks = tile.len() / TILE;
    let mut by_k = [[0u16; 16]; 32];
    for c in 0..chunks {
        let kk0 = (chunk0 + c) * 32;
        for (e, row) in by_k.iter_mut().enumerate() {
            let kk = kk0 + e;
            if kk >= k {
                *row = [0; 16];
                continue;
            }
            let src = &values[row0 + kk * cs..][..16];
            // SAFETY: 16 readable values; 16 u16 written into `row`.
            unsafe {
                let x = _mm512_loadu_si512(src.as_ptr().cast());
                let high = _mm512_srli_epi32::<16>(rounded_high(x));
                _mm256_storeu_si256(row.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(high));
            }
        }
        let dst = &mut tile[c * TILE..][..TILE];
        for (r, out) in dst.chunks_exact_mut(32).enumerate() {
            for (e, v) in out.iter_mut().enumerate() {
                *v = by_k[e][r];
            }
        }
    }
}

/// One strip of the right operand (see `pack.rs`), 16 columns at a time where `rhs` has
/// contiguous rows, 32 values of a column at a time where it has contiguous columns.
///
/// # Safety
/// The CPU has AVX512F and AVX512BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pack_rhs_strip(strip: &mut [u16], col0: usize, n: usize, k: usize, rhs: View) {
    let (values, rs, cs) = rhs;
    let pairs = strip.len() / 32;
    let cols = (n - col0).min(16);
    let full_pairs = if cols == 16 { k / 2 } else { 0 };
    if cs == 1 && full_pairs > 0 {
        // Rows of 16 columns: pair p interleaves rows 2p and 2p + 1.
        for p in 0..full_pairs {
            let row0 = &values[2 * p * rs + col0..][..16];
            let row1 = &values[(2 * p + 1) * rs + col0..][..16];
            // SAFETY: 16 values in each row, 32 elements of `strip` from pair p.
            unsafe {
                let even = rounded_high(_mm512_loadu_si512(row0.as_ptr().cast()));
                let odd = rounded_high(_mm512_loadu_si512(row1.as_ptr().cast()));
                let pairs =
                    _mm512_mask_blend_epi16(0xaaaa_aaaa, _mm512_srli_epi32::<16>(even), odd);
                _mm512_storeu_si512(strip[p * 32..][..32].as_mut_ptr().cast(), pairs);
            }
        }
        rhs_pairs(strip, col0, cols, k, full_pairs..pairs, rhs);
    } else if rs == 1 && cols == 16 && k >= 32 {
        // Columns contiguous: 32 values of each column give its 16 pairs of a chunk, then a
        // 16 × 16 transpose of pairs.
        let full_chunks = k / 32;
        let mut block = [[0u32; 16]; 16];
        for chunk in 0..full_chunks {
            for (col, pairs) in block.iter_mut().enumerate() {
                let src = &values[(col0 + col) * cs + 32 * chunk..][..32];
                // SAFETY: 32 values; `pairs` is 16 u32.
                unsafe { _mm512_storeu_si512(pairs.as_mut_ptr().cast(), convert32(src.as_ptr())) };
            }
            let dst = &mut strip[chunk * TILE..][..TILE];
            for p in 0..16 {
                for col in 0..16 {
                    let pair = block[col][p];
                    dst[p * 32 + 2 * col] = pair as u16;
                    dst[p * 32 + 2 * col + 1] = (pair >> 16) as u16;
                }
            }
        }
        rhs_pairs(strip, col0, cols, k, 16 * full_chunks..pairs, rhs);
    } else {
        rhs_pairs(strip, col0, cols, k, 0..pairs, rhs);
    }
}
