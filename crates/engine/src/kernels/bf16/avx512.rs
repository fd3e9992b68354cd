//! The AVX512-BF16 path: `vdpbf16ps` (`_mm512_dpbf16_ps`) in a register-blocked micro-kernel
//! of 8 rows × 3 zmm (48 columns): 24 accumulators, 3 loads of B and 8 broadcast pairs of A
//! per pair of `k`. Compiled with `target_feature`s and called only after detection.

use super::problem::{Problem, Step};
use super::scalar::TILE;
use std::arch::x86_64::*;
use std::ops::Range;

/// `k` chunks (of 32) per block (`lhs` packed just before use, packed ahead): a 48-column B
/// panel of 24 KiB stays in L1.
pub(super) const KC_CHUNKS: (usize, usize) = (8, 8);

/// Rows of the micro-kernel.
const MR: usize = 8;

/// Columns of the micro-kernel (3 zmm of 16 f32).
pub(super) const NR: usize = 48;

/// `C[r][..16 · NV] ← C[r] (or 0 unless `load`) + Σ_p A[r, p] · B[p]` over `pairs` pairs of
/// `k`, for 8 rows of C `c_rs` apart from `c`. `a` points at the first of the 8 rows inside a
/// packed row tile (rows 32 elements apart, chunks [`TILE`] apart); `b[..NV]` at the strips'
/// first pair (pairs 32 elements apart).
///
/// # Safety
/// The CPU has AVX512F and AVX512-BF16; the pointers cover `pairs` pairs; `c` is 8 rows of
/// `16 · NV` writable f32 that no other thread touches.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const NV: usize>(
    pairs: usize,
    a: *const u16,
    b: [*const u16; 3],
    (c, c_rs): (*mut f32, usize),
    load: bool,
) {
    // SAFETY: the reads and writes stay inside the packed operands and `c` (caller); the
    // vector types are plain bit containers of the same size.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        if load {
            for (r, acc) in acc.iter_mut().enumerate() {
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_loadu_ps(c.add(r * c_rs + 16 * v));
                }
            }
        }
        for chunk in 0..pairs.div_ceil(16) {
            let a = a.add(chunk * TILE);
            let b: [*const u16; NV] = std::array::from_fn(|v| b[v].add(chunk * TILE));
            for q in 0..(pairs - 16 * chunk).min(16) {
                let bv: [__m512bh; NV] = std::array::from_fn(|v| {
                    std::mem::transmute(_mm512_loadu_si512(b[v].add(q * 32).cast()))
                });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pair = a.add(r * 32 + 2 * q).cast::<i32>().read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = _mm512_dpbf16_ps(*acc, av, bv);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * c_rs + 16 * v), acc);
            }
        }
    }
}

/// `dst[rows, cols] (+)= lhs[rows, k block] · rhs[k block, cols]` for the k block `step`,
/// with `a` that block of `lhs[rows]` packed (row tiles `a_stride`
/// elements apart). `rows.start` is a multiple of 16, `cols.start` of [`NR`]. Whole 8 × 48 blocks of
/// C are read and written directly; the edges through a buffer.
///
/// # Safety
/// The CPU has AVX512F and AVX512-BF16; the region lies inside the problem and no other
/// thread touches it.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn block(
    p: &Problem,
    (a, a_stride): (&[u16], usize),
    rows: Range<usize>,
    cols: Range<usize>,
    step: Step,
    _sums: &mut [f32],
) {
    let (kb, kc) = (step.kb, step.kc);
    let add = step.accumulate || !step.first;
    let mut out = [[0f32; NR]; MR];
    let pairs = (p.k.div_ceil(2) - 16 * kb).min(16 * kc);
    let b_strip = |c: usize| p.b[c / 16 * 16 * p.kp + kb * TILE..].as_ptr();
    for c0 in cols.clone().step_by(NR) {
        let cols_here = (cols.end - c0).min(NR);
        let nv = cols_here.div_ceil(16);
        let b: [*const u16; 3] = std::array::from_fn(|v| b_strip(c0 + 16 * v.min(nv - 1)));
        for r0 in rows.clone().step_by(MR) {
            let rows_here = (rows.end - r0).min(MR);
            let tile = (r0 - rows.start) / 16 * a_stride;
            let a = a[tile + (r0 % 16) * 32..].as_ptr();
            let buffer = (out.as_mut_ptr().cast::<f32>(), NR);
            // SAFETY: the caller guarantees the features; the packed row tile and strips
            // hold `pairs` pairs from these pointers (zero padded rows included); a whole
            // block lies inside C, in this thread's region (caller).
            unsafe {
                match nv {
                    3 if rows_here == MR && cols_here == NR => {
                        let c = (p.dst.add(r0 * p.dst_rs + c0), p.dst_rs);
                        kernel::<3>(pairs, a, b, c, add);
                        continue;
                    }
                    3 => kernel::<3>(pairs, a, b, buffer, false),
                    2 => kernel::<2>(pairs, a, b, buffer, false),
                    _ => kernel::<1>(pairs, a, b, buffer, false),
                }
                p.write_back(r0, c0, rows_here, cols_here, out.as_flattened(), NR, add);
            }
        }
    }
}
