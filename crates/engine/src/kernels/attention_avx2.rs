//! The f32 CPU attention's two matrix products with AVX2 + FMA micro-kernels, for CPUs
//! without AVX-512.
//!
//! The general `gemm` reaches about 90 % of an AVX2 core's peak on large products but only
//! 70–75 % on attention's: the scores `q · kᵀ` have a depth of one head's width (40 in
//! SD 1.5's largest attention), and `p · v` an output that narrow. The kernels here are
//! shaped for that:
//! - **scores**: the keys are packed once per head into panels of 16 keys (`[panel][d][16]`);
//!   a tile of 6 query rows × 16 keys keeps its 12 accumulators in registers over the whole
//!   depth, reads the queries where they lie, and writes each score row's 16 values at once.
//!   Key blocks of [`SCORE_KEY_PANELS`] panels keep the panels in the first-level cache
//!   while every query row passes them. 80–93 GFLOP/s on one Zen 3 core for widths 40–160
//!   (`gemm`: 70–75 at width 40).
//! - **values**: a tile of 2 rows × up to 40 output columns (5 vectors) holds 10
//!   accumulators and the value row's 5 vectors in registers; keys are taken in blocks of
//!   [`VALUE_KEY_BLOCK`] so that block of value rows stays in the first-level cache. 89
//!   GFLOP/s at width 40 (`gemm`: 72); wider outputs, taken 40 columns at a time, fall to
//!   66–81, below `gemm`'s 89, so the caller uses this for widths up to 40 only.
//!
//! - **fused** ([`attend`], for value widths up to 40): both kernels and the softmax over one
//!   block of keys at a time with an online softmax, so a block's keys, scores and values
//!   are used while they are in cache.
//!
//! On a 2-core Zen 3, SD 1.5's 512² level-0 self-attention (4096 tokens, 16 heads of 40)
//! went from 358 to 325 ms with the kernels and to 296 ms fused (with the faster `exp` of
//! `fastmath`), its 1024² one (16384 tokens) from 6.28 to 5.59 and then 5.00 s. Each kernel
//! is tested against f64 sums; the caller picks them at run time ([`available`]) and keeps
//! the `gemm` path elsewhere (other CPUs, and AVX-512 ones, whose `gemm` has twice the
//! vector width).

use crate::kernels::fastmath::{exp_below, row_max};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Keys per packed panel (two AVX2 vectors).
pub const PANEL: usize = 16;

/// Query rows per score tile.
#[cfg(target_arch = "x86_64")]
const SCORE_ROWS: usize = 6;

/// Panels of keys per block of the score product: 16 panels of 40-wide heads are 40 KiB.
const SCORE_KEY_PANELS: usize = 16;

/// Keys per block of [`attend`]: one block of the score product.
pub const ATTEND_KEY_BLOCK: usize = SCORE_KEY_PANELS * PANEL;

/// Query rows per call of [`attend`] that keep its score tile (96 KiB) in the second-level
/// cache while reading each head's keys and values once per 96 queries.
pub const ATTEND_ROWS: usize = 96;

/// Output vectors (of 8) per value tile: 5 × 8 = 40 columns, one SD 1.5 head at 512².
#[cfg(target_arch = "x86_64")]
const VALUE_VECTORS: usize = 5;

/// Keys per block of the value product: 128 rows of a 40-wide head are 20 KiB.
#[cfg(target_arch = "x86_64")]
const VALUE_KEY_BLOCK: usize = 128;

/// Whether this CPU runs the kernels here and its `gemm` would not do better: AVX2 and FMA
/// without AVX-512 (detected once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| runs_here() && !is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has the instructions the kernels use (AVX2 and FMA).
pub fn runs_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Floats of `n_k` keys of width `d` packed by [`pack_keys`].
pub fn packed_len(n_k: usize, d: usize) -> usize {
    n_k.div_ceil(PANEL) * PANEL * d
}

/// Packs `k` (`n_k × d`, row-major) into panels of [`PANEL`] keys, `[panel][d][PANEL]`, the
/// last panel padded with zeros; `out` must hold [`packed_len`] floats.
pub fn pack_keys(k: &[f32], n_k: usize, d: usize, out: &mut [f32]) {
    assert!(k.len() >= n_k * d && out.len() >= packed_len(n_k, d));
    for (p, panel) in out[..packed_len(n_k, d)]
        .chunks_exact_mut(PANEL * d)
        .enumerate()
    {
        for (j, dst) in (0..PANEL).map(|j| (j, p * PANEL + j)) {
            for i in 0..d {
                panel[i * PANEL + j] = if dst < n_k { k[dst * d + i] } else { 0.0 };
            }
        }
    }
}

/// `scores (rows × n_k, row stride n_k) ← q (rows × d, row-major) · kᵀ`, with `k` packed by
/// [`pack_keys`].
///
/// # Panics
/// When the CPU lacks AVX2 or FMA ([`runs_here`]) or a slice is too short.
pub fn scores(q: &[f32], rows: usize, d: usize, packed: &[f32], n_k: usize, scores: &mut [f32]) {
    assert!(runs_here(), "attention_avx2::scores needs AVX2 and FMA");
    assert!(q.len() >= rows * d && packed.len() >= packed_len(n_k, d));
    assert!(scores.len() >= rows * n_k);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 and FMA (asserted), and the asserts above bound every index
    // the kernel reaches: query rows < rows, depth < d, keys < the packed panels, score
    // columns < n_k.
    unsafe {
        scores_avx2(q, rows, d, packed, n_k, scores)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_avx2(
    q: &[f32],
    rows: usize,
    d: usize,
    packed: &[f32],
    n_k: usize,
    scores: &mut [f32],
) {
    let panels = n_k.div_ceil(PANEL);
    for p0 in (0..panels).step_by(SCORE_KEY_PANELS) {
        let p1 = (p0 + SCORE_KEY_PANELS).min(panels);
        let mut r = 0;
        while r < rows {
            let tile_rows = SCORE_ROWS.min(rows - r);
            for p in p0..p1 {
                let panel = &packed[p * PANEL * d..][..PANEL * d];
                let cols = PANEL.min(n_k - p * PANEL);
                let q_rows = &q[r * d..][..tile_rows * d];
                let out = &mut scores[r * n_k + p * PANEL..];
                // SAFETY: as in `scores`; each tile reads tile_rows × d queries and writes
                // tile_rows rows of `cols` scores, inside the slices given.
                unsafe {
                    match tile_rows {
                        6 => score_tile::<6>(q_rows, d, panel, out, n_k, cols),
                        5 => score_tile::<5>(q_rows, d, panel, out, n_k, cols),
                        4 => score_tile::<4>(q_rows, d, panel, out, n_k, cols),
                        3 => score_tile::<3>(q_rows, d, panel, out, n_k, cols),
                        2 => score_tile::<2>(q_rows, d, panel, out, n_k, cols),
                        _ => score_tile::<1>(q_rows, d, panel, out, n_k, cols),
                    }
                }
            }
            r += tile_rows;
        }
    }
}

/// `R` query rows × one panel: `out[r · out_rs + j] = Σ_i q[r · d + i] · panel[i · 16 + j]`
/// for `j < cols`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn score_tile<const R: usize>(
    q: &[f32],
    d: usize,
    panel: &[f32],
    out: &mut [f32],
    out_rs: usize,
    cols: usize,
) {
    debug_assert!(q.len() >= R * d && panel.len() >= PANEL * d);
    debug_assert!(out.len() >= (R - 1) * out_rs + cols);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (qp, pp) = (q.as_ptr(), panel.as_ptr());
    for i in 0..d {
        // SAFETY: i < d, so the panel's 16 values at i · 16 and the queries at r · d + i
        // lie inside the slices (asserted by the caller).
        unsafe {
            let a0 = _mm256_loadu_ps(pp.add(i * PANEL));
            let a1 = _mm256_loadu_ps(pp.add(i * PANEL + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*qp.add(r * d + i));
                acc[0] = _mm256_fmadd_ps(a0, b, acc[0]);
                acc[1] = _mm256_fmadd_ps(a1, b, acc[1]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let row = &mut out[r * out_rs..][..cols];
        if cols == PANEL {
            // SAFETY: the row holds 16 floats here.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[1]);
            }
        } else {
            let mut tmp = [0f32; PANEL];
            // SAFETY: tmp holds 16 floats.
            unsafe {
                _mm256_storeu_ps(tmp.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc[1]);
            }
            row.copy_from_slice(&tmp[..cols]);
        }
    }
}

/// `out (rows × dv, row-major) ← p (rows × n_k, row stride n_k) · v (n_k × dv, row-major)`,
/// for `dv` a multiple of 8.
///
/// # Panics
/// When the CPU lacks AVX2 or FMA, `dv` is not a multiple of 8, or a slice is too short.
pub fn values(p: &[f32], rows: usize, n_k: usize, v: &[f32], dv: usize, out: &mut [f32]) {
    values_into(p, rows, n_k, v, dv, out, false);
}

/// [`values`], adding to `out` when `accumulate`.
fn values_into(
    p: &[f32],
    rows: usize,
    n_k: usize,
    v: &[f32],
    dv: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    assert!(runs_here(), "attention_avx2::values needs AVX2 and FMA");
    assert!(dv.is_multiple_of(8), "attention_avx2::values: dv = {dv}");
    assert!(p.len() >= rows * n_k && v.len() >= n_k * dv && out.len() >= rows * dv);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 and FMA (asserted); the asserts above bound every index.
    unsafe {
        values_avx2((p, rows, n_k), (v, dv), out, accumulate)
    }
    // Unreachable elsewhere: `runs_here` is false.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = accumulate;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn values_avx2(
    (p, rows, n_k): (&[f32], usize, usize),
    (v, dv): (&[f32], usize),
    out: &mut [f32],
    accumulate: bool,
) {
    if n_k == 0 {
        if !accumulate {
            out[..rows * dv].fill(0.0);
        }
        return;
    }
    let vectors = dv / 8;
    let mut c0 = 0;
    while c0 < vectors {
        let width = VALUE_VECTORS.min(vectors - c0);
        for k0 in (0..n_k).step_by(VALUE_KEY_BLOCK) {
            let keys = VALUE_KEY_BLOCK.min(n_k - k0);
            let first = k0 == 0 && !accumulate;
            let mut r = 0;
            while r < rows {
                let tile_rows = 2.min(rows - r);
                let pt = &p[r * n_k + k0..];
                let vt = &v[k0 * dv + c0 * 8..];
                let ot = &mut out[r * dv + c0 * 8..];
                let shape = (tile_rows, width);
                let args = (pt, n_k, keys, vt, dv, first);
                // SAFETY: as in `values`; the tile reads tile_rows rows of `keys` scores,
                // `keys` value rows of width · 8 columns from c0 · 8, and writes tile_rows
                // output rows of those columns.
                unsafe {
                    match shape {
                        (2, 5) => value_tile::<2, 5>(args, ot),
                        (2, 4) => value_tile::<2, 4>(args, ot),
                        (2, 3) => value_tile::<2, 3>(args, ot),
                        (2, 2) => value_tile::<2, 2>(args, ot),
                        (2, _) => value_tile::<2, 1>(args, ot),
                        (_, 5) => value_tile::<1, 5>(args, ot),
                        (_, 4) => value_tile::<1, 4>(args, ot),
                        (_, 3) => value_tile::<1, 3>(args, ot),
                        (_, 2) => value_tile::<1, 2>(args, ot),
                        _ => value_tile::<1, 1>(args, ot),
                    }
                }
                r += tile_rows;
            }
        }
        c0 += width;
    }
}

/// `out (rows × dv) ← softmax(q · kᵀ · scale) · v` for `rows` query rows (`q`: rows × d,
/// row-major) against `n_k` keys packed by [`pack_keys`] and their values (`v`: n_k × dv,
/// `dv` a multiple of 8), `scale > 0`.
///
/// Key block by key block ([`ATTEND_KEY_BLOCK`]): the block's scores, their exponentials
/// against the running maximum of each row (the sums and outputs rescaled when it grows),
/// and the block's value product added to the output, so a block's keys, scores and values
/// are used while they are in cache. Taking the scores of all keys first and then the
/// softmax and values streamed a head's keys (640 KiB at 4096 tokens) through the
/// second-level cache and evicted the scores before the softmax read them. `tile` and
/// `stats` hold at least [`attend_scratch`] floats; both are written before read.
///
/// # Panics
/// When the CPU lacks AVX2 or FMA, `dv` is not a multiple of 8, or a slice is too short.
pub fn attend(
    (q, rows, d): (&[f32], usize, usize),
    (packed, n_k): (&[f32], usize),
    (v, dv): (&[f32], usize),
    scale: f32,
    out: &mut [f32],
    (tile, stats): (&mut [f32], &mut [f32]),
) {
    let (tile_len, stats_len) = attend_scratch(rows, n_k);
    assert!(tile.len() >= tile_len && stats.len() >= stats_len);
    let (maxes, sums) = stats[..2 * rows].split_at_mut(rows);
    let factor = scale * std::f32::consts::LOG2_E;
    for k0 in (0..n_k).step_by(ATTEND_KEY_BLOCK) {
        let keys = ATTEND_KEY_BLOCK.min(n_k - k0);
        let first = k0 == 0;
        let tile = &mut tile[..rows * keys];
        // Block k0 starts at panel k0 / 16, k0 · d floats into the packed keys.
        scores(q, rows, d, &packed[k0 * d..], keys, tile);
        for (r, row) in tile.chunks_exact_mut(keys).enumerate() {
            let block_max = row_max(row);
            let max = if first {
                block_max
            } else {
                maxes[r].max(block_max)
            };
            if !first && max > maxes[r] {
                let shrink = ((maxes[r] - max) * factor).exp2();
                sums[r] *= shrink;
                out[r * dv..][..dv].iter_mut().for_each(|o| *o *= shrink);
            }
            maxes[r] = max;
            let sum = exp_below(row, scale, max);
            sums[r] = if first { sum } else { sums[r] + sum };
        }
        values_into(tile, rows, keys, &v[k0 * dv..], dv, out, !first);
    }
    for (row, sum) in out.chunks_exact_mut(dv.max(1)).zip(sums.iter()) {
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|o| *o *= inv);
    }
}

/// Floats of the score tile and of the per-row statistics that [`attend`] needs for `rows`
/// queries against `n_k` keys.
pub fn attend_scratch(rows: usize, n_k: usize) -> (usize, usize) {
    (rows * ATTEND_KEY_BLOCK.min(n_k), 2 * rows)
}

/// Arguments of a value tile: scores (from the tile's first row and key), their row stride,
/// keys, values (from the tile's first key and column), their row stride, and whether this
/// is the first key block (the output is written, not added to).
#[cfg(target_arch = "x86_64")]
type ValueArgs<'a> = (&'a [f32], usize, usize, &'a [f32], usize, bool);

/// `R` rows × `C` vectors of output: `out[r · dv + c] (+)= Σ_j p[r · p_rs + j] · v[j · dv + c]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn value_tile<const R: usize, const C: usize>(
    (p, p_rs, keys, v, dv, first): ValueArgs,
    out: &mut [f32],
) {
    debug_assert!(p.len() >= (R - 1) * p_rs + keys);
    debug_assert!(keys == 0 || v.len() >= (keys - 1) * dv + C * 8);
    debug_assert!(out.len() >= (R - 1) * dv + C * 8);
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let op = out.as_mut_ptr();
    if !first {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (c, acc) in acc.iter_mut().enumerate() {
                // SAFETY: inside `out` (asserted by the caller).
                *acc = unsafe { _mm256_loadu_ps(op.add(r * dv + c * 8)) };
            }
        }
    }
    let (pp, vp) = (p.as_ptr(), v.as_ptr());
    for j in 0..keys {
        let mut row = [_mm256_setzero_ps(); C];
        for (c, value) in row.iter_mut().enumerate() {
            // SAFETY: j < keys, so value row j's C vectors lie inside `v`.
            *value = unsafe { _mm256_loadu_ps(vp.add(j * dv + c * 8)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: score j of row r lies inside `p`.
            let b = unsafe { _mm256_broadcast_ss(&*pp.add(r * p_rs + j)) };
            for (acc, value) in acc.iter_mut().zip(&row) {
                *acc = _mm256_fmadd_ps(*value, b, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, acc) in acc.iter().enumerate() {
            // SAFETY: inside `out`.
            unsafe { _mm256_storeu_ps(op.add(r * dv + c * 8), *acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{attention_row, uniform};

    /// Both products against f64 sums of the same f32 inputs, on shapes with partial tiles
    /// (rows not a multiple of 6 or 2, keys not a multiple of 16 or of the key blocks,
    /// columns not a multiple of 40) and SD's head widths.
    #[test]
    fn products_match_f64_sums() {
        if !runs_here() {
            eprintln!("skipped: no AVX2 + FMA");
            return;
        }
        for &(rows, n_k, d, dv) in &[
            (1, 1, 1, 8),
            (7, 17, 40, 40),
            (13, 300, 40, 80),
            (256, 77, 160, 160),
            (5, 129, 64, 64),
            (30, 1000, 8, 16),
        ] {
            let q = uniform(rows * d, 1);
            let k = uniform(n_k * d, 2);
            let v = uniform(n_k * dv, 3);
            let mut packed = vec![f32::NAN; packed_len(n_k, d)];
            pack_keys(&k, n_k, d, &mut packed);
            let mut s = vec![f32::NAN; rows * n_k];
            scores(&q, rows, d, &packed, n_k, &mut s);
            for r in 0..rows {
                for j in 0..n_k {
                    let exact: f64 = (0..d)
                        .map(|i| f64::from(q[r * d + i]) * f64::from(k[j * d + i]))
                        .sum();
                    let got = f64::from(s[r * n_k + j]);
                    assert!(
                        (got - exact).abs() < 1e-5 * d as f64,
                        "scores {rows}x{n_k}x{d}"
                    );
                }
            }
            let mut out = vec![f32::NAN; rows * dv];
            values(&s, rows, n_k, &v, dv, &mut out);
            for r in 0..rows {
                for c in 0..dv {
                    let exact: f64 = (0..n_k)
                        .map(|j| f64::from(s[r * n_k + j]) * f64::from(v[j * dv + c]))
                        .sum();
                    let bound = 1e-5 * (n_k * d) as f64;
                    let got = f64::from(out[r * dv + c]);
                    assert!((got - exact).abs() < bound, "values {rows}x{n_k}x{dv}");
                }
            }
        }
    }

    /// The fused attention against an f64 softmax of the same inputs: key counts under one
    /// block, over several with a partial last one, and keys whose scores grow block by block
    /// (so the running maximum and the rescaling are exercised) or shrink.
    #[test]
    fn attend_matches_an_f64_softmax() {
        if !runs_here() {
            eprintln!("skipped: no AVX2 + FMA");
            return;
        }
        for &(rows, n_k, d, dv, ramp) in &[
            (1, 1, 8, 8, 0.0),
            (7, 77, 40, 40, 0.0),
            (13, 700, 40, 40, 0.01),
            (13, 700, 40, 16, -0.01),
            (100, 3 * ATTEND_KEY_BLOCK, 64, 8, 0.02),
        ] {
            let q = uniform(rows * d, 4);
            let mut k = uniform(n_k * d, 5);
            // Key j's scores grow (or shrink) with j: its components carry j · ramp.
            for (j, key) in k.chunks_mut(d).enumerate() {
                key.iter_mut().for_each(|x| *x += j as f32 * ramp);
            }
            let v = uniform(n_k * dv, 6);
            let scale = 0.7;
            let mut packed = vec![f32::NAN; packed_len(n_k, d)];
            pack_keys(&k, n_k, d, &mut packed);
            let mut out = vec![f32::NAN; rows * dv];
            let (tile_len, stats_len) = attend_scratch(rows, n_k);
            let (mut tile, mut stats) = (vec![f32::NAN; tile_len], vec![f32::NAN; stats_len]);
            attend(
                (&q, rows, d),
                (&packed, n_k),
                (&v, dv),
                scale,
                &mut out,
                (&mut tile, &mut stats),
            );
            let wide = |x: &[f32]| -> Vec<f64> { x.iter().map(|&x| f64::from(x)).collect() };
            let (k, v) = (wide(&k), wide(&v));
            for r in 0..rows {
                let q = wide(&q[r * d..][..d]);
                let want = attention_row(&q, &k, &v, dv, f64::from(scale));
                for (c, want) in want.iter().enumerate() {
                    let got = f64::from(out[r * dv + c]);
                    assert!(
                        (got - want).abs() < 2e-5,
                        "{rows}x{n_k}x{d}→{dv} ramp {ramp}: row {r} column {c}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
