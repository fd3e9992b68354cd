//! The fast paths' driver: splits C into regions on candle's threads, walks `k` in blocks,
//! packs the left operand and calls the AMX or AVX512-BF16 block kernel.

use super::problem::{Problem, Step};
use super::{
    Bf16Isa, FillPanel, LHS_SCRATCH, Lhs, PackedRhs, SUMS_SCRATCH, amx, avx512, give, pack, take,
};
use crate::kernels::scratch;
use std::ops::Range;

/// A block kernel: `C[rows, cols] (+)= A · B` for one k block, with `A` packed (row tiles from
/// the block's first chunk, the given number of elements apart), and a buffer for the sums
/// of the region's whole 32 × 32 blocks between k blocks (used by AMX).
type BlockKernel =
    unsafe fn(&Problem, (&[u16], usize), Range<usize>, Range<usize>, Step, &mut [f32]);

/// The most bytes of C a region works on at once (kept in L2 while `k` is walked).
const C_BLOCK_BYTES: usize = 512 << 10;

/// Splits C into regions and runs them (on candle's threads when `parallel`). Each region
/// walks `k` in blocks over at most [`C_BLOCK_BYTES`] of C at a time. Its rows of `lhs` are
/// packed once: block by block just before use when the region's columns are one such block
/// (the packed block is still in cache), all of `k` first otherwise; a packed `lhs` is read
/// where it is, in the short k blocks that keep a strip of B in L1.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    isa: Bf16Isa,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Lhs,
    rhs: &PackedRhs,
    accumulate: bool,
    parallel: bool,
) {
    use super::scalar::TILE;
    use rayon::prelude::*;
    if k == 0 {
        if !accumulate {
            for row in 0..m {
                dst[row * dst_rs..][..n].fill(0.0);
            }
        }
        return;
    }
    let threads = if parallel {
        candle_core::utils::get_num_threads()
    } else {
        1
    };
    let (row_unit, col_unit, kcs, kernel): (usize, usize, _, BlockKernel) = match isa {
        Bf16Isa::Amx => (32, 32, amx::KC_CHUNKS, amx::block),
        _ => (16, avx512::NR, avx512::KC_CHUNKS, avx512::block),
    };
    let prepacked = match lhs {
        Lhs::Packed(packed) => Some(packed.data()),
        Lhs::View(_) => None,
    };
    let (rb, cb) = if prepacked.is_some() {
        blocks_prepacked((m, n), (row_unit, col_unit), threads)
    } else {
        blocks((m, n), (row_unit, col_unit), threads)
    };
    let problem = Problem {
        m,
        n,
        k,
        kp: rhs.kp,
        b: rhs.data(),
        dst: dst.as_mut_ptr(),
        dst_rs,
    };
    let chunks = rhs.kp / 32;
    let regions: Vec<(usize, usize)> = (0..m)
        .step_by(rb)
        .flat_map(|r0| (0..n).step_by(cb).map(move |c0| (r0, c0)))
        .collect();
    let work = |&(r0, c0): &(usize, usize)| {
        let (rows, cols) = (r0..(r0 + rb).min(m), c0..(c0 + cb).min(n));
        // SAFETY: the path is available (`check`).
        let _tiles = (isa == Bf16Isa::Amx).then(|| unsafe { amx::Tiles::configure() });
        let mut scratch = take(&LHS_SCRATCH);
        let mut sums = take(&SUMS_SCRATCH);
        let tiles = rows.len().div_ceil(16);
        let c_block = (C_BLOCK_BYTES / (4 * rows.len()) / col_unit * col_unit).max(col_unit);
        let just_in_time = cols.len() <= c_block || prepacked.is_some();
        // k blocks of about the ISA's size, equal within a chunk; one block up to twice it.
        let target = if just_in_time { kcs.0 } else { kcs.1 };
        let k_blocks = if chunks <= 2 * target {
            1
        } else {
            chunks.div_ceil(target)
        };
        if let (false, Lhs::View(lhs)) = (just_in_time, lhs) {
            let (_, a) = pack::aligned(&mut scratch, tiles * TILE * chunks);
            pack::pack_lhs(a, rows.clone(), (m, k), (0, chunks), lhs);
        }
        if isa == Bf16Isa::Amx && k_blocks > 1 {
            let blocks = rows.len().div_ceil(32) * c_block.div_ceil(32);
            scratch::grow_scratch(&mut sums, blocks * 1024);
        }
        for c0 in cols.clone().step_by(c_block) {
            let block_cols = c0..(c0 + c_block).min(cols.end);
            for block in 0..k_blocks {
                let kb = block * chunks / k_blocks;
                let kc = (block + 1) * chunks / k_blocks - kb;
                let a = if let Some(packed) = prepacked {
                    (
                        &packed[rows.start / 16 * TILE * chunks + kb * TILE..],
                        TILE * chunks,
                    )
                } else if let (true, Lhs::View(lhs)) = (just_in_time, lhs) {
                    let (_, a) = pack::aligned(&mut scratch, tiles * TILE * kc);
                    pack::pack_lhs(a, rows.clone(), (m, k), (kb, kc), lhs);
                    (&a[..], TILE * kc)
                } else {
                    let (_, a) = pack::aligned(&mut scratch, tiles * TILE * chunks);
                    (&a[kb * TILE..], TILE * chunks)
                };
                let step = Step {
                    kb,
                    kc,
                    first: block == 0,
                    last: block + 1 == k_blocks,
                    accumulate,
                };
                let cols = block_cols.clone();
                // SAFETY: the path is available and its tiles configured; regions are
                // disjoint blocks of C; `sums` holds the region's blocks when there are
                // several k blocks.
                unsafe { kernel(&problem, a, rows.clone(), cols, step, &mut sums) };
            }
        }
        give(&LHS_SCRATCH, scratch);
        give(&SUMS_SCRATCH, sums);
    };
    if threads > 1 && regions.len() > 1 {
        regions.par_iter().for_each(work);
    } else {
        regions.iter().for_each(work);
    }
}

/// Bytes of sums a panel in [`run_fused`] keeps between k blocks (4 per row and column; with
/// its k block of the right operand, 16 KiB per 32 columns, they stay in the core's L2).
const PANEL_SUMS_BYTES: usize = 1 << 20;

/// Panels in [`run_fused`] are 128 to 512 columns wide: narrower ones stream the left operand
/// from L3 too often (a 16² 1280-channel convolution: 7.1 ms packed ahead, 8.3–9.7 fused),
/// wider ones were no faster.
const PANEL_COLUMNS: (usize, usize) = (128, 512);

/// The panel width [`run_fused`] takes for `m` rows and `n` columns on `threads` threads (at
/// least two panels per thread), or `None` where the panels would be too narrow.
pub(super) fn fused_panel(m: usize, n: usize, threads: usize) -> Option<usize> {
    let per_thread = n.div_ceil(2 * threads.max(1));
    if per_thread < PANEL_COLUMNS.0 {
        return None;
    }
    let widest =
        (PANEL_SUMS_BYTES / (4 * m.max(1)) / 32 * 32).clamp(PANEL_COLUMNS.0, PANEL_COLUMNS.1);
    Some(per_thread.div_ceil(32).saturating_mul(32).min(widest))
}

/// `dst (+)= lhs · rhs` with the right operand packed as the product goes, by `fill`: each
/// task takes a panel of columns and walks `k` in blocks, packing the panel's block of `rhs`
/// into its own buffer and multiplying it with all rows of `lhs` at once, so the block is
/// still in the core's cache (packed ahead, a convolution's patch matrix went out to L3 and
/// came back for every block of rows).
pub(super) fn run_fused(
    isa: Bf16Isa,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &super::PackedLhs,
    fill: FillPanel,
    accumulate: bool,
) {
    use super::scalar::TILE;
    use rayon::prelude::*;
    let (col_unit, kcs, kernel): (usize, _, BlockKernel) = match isa {
        Bf16Isa::Amx => (32, amx::KC_CHUNKS, amx::block),
        _ => (avx512::NR, avx512::KC_CHUNKS, avx512::block),
    };
    let threads = candle_core::utils::get_num_threads();
    // Whole column blocks of the kernel, so that each column of C is summed as the
    // pre-packed path sums it.
    let panel = fused_panel(m, n, threads)
        .unwrap_or(PANEL_COLUMNS.0)
        .div_ceil(col_unit)
        * col_unit;
    let chunks = lhs.kp / 32;
    let k_blocks = if chunks <= 2 * kcs.0 {
        1
    } else {
        chunks.div_ceil(kcs.0)
    };
    let base = Problem {
        m,
        n,
        k,
        kp: lhs.kp,
        b: &[],
        dst: dst.as_mut_ptr(),
        dst_rs,
    };
    let (base, packed) = (&base, lhs.data());
    let work = move |c0: usize| {
        let cols = (n - c0).min(panel);
        let strips = cols.div_ceil(16);
        // SAFETY: the path is available (the caller checked).
        let _tiles = (isa == Bf16Isa::Amx).then(|| unsafe { amx::Tiles::configure() });
        let mut scratch = take(&LHS_SCRATCH);
        let mut sums = take(&SUMS_SCRATCH);
        if isa == Bf16Isa::Amx && k_blocks > 1 {
            scratch::grow_scratch(&mut sums, m.div_ceil(32) * cols.div_ceil(32) * 1024);
        }
        for block in 0..k_blocks {
            let kb = block * chunks / k_blocks;
            let kc = (block + 1) * chunks / k_blocks - kb;
            let (_, b) = pack::aligned(&mut scratch, strips * kc * TILE);
            fill(b, (c0, strips), kb..kb + kc);
            let problem = Problem {
                n: cols,
                k: (k - 32 * kb).min(32 * kc),
                kp: 32 * kc,
                b,
                dst: base.dst.wrapping_add(c0),
                ..*base
            };
            let step = Step {
                kb: 0,
                kc,
                first: block == 0,
                last: block + 1 == k_blocks,
                accumulate,
            };
            let a = (&packed[kb * TILE..], TILE * chunks);
            // SAFETY: the path is available and its tiles configured; panels are disjoint
            // columns of C; `sums` holds the panel's blocks when there are several k blocks.
            unsafe { kernel(&problem, a, 0..m, 0..cols, step, &mut sums) };
        }
        give(&LHS_SCRATCH, scratch);
        give(&SUMS_SCRATCH, sums);
    };
    let panels: Vec<usize> = (0..n).step_by(panel).collect();
    if threads > 1 && panels.len() > 1 {
        panels.into_par_iter().for_each(work);
    } else {
        panels.into_iter().for_each(work);
    }
}

/// Region size (rows, columns): 256 rows (multiples of the kernel's units) by all of `n`, so
/// each region packs its rows of `lhs` once; with more threads, smaller regions until there
/// are four per thread (rows split first: a column split packs the rows again).
fn blocks(
    (m, n): (usize, usize),
    (row_unit, col_unit): (usize, usize),
    threads: usize,
) -> (usize, usize) {
    let mut rb = (256 / row_unit).max(1) * row_unit;
    let mut cb = n.div_ceil(col_unit) * col_unit;
    let halve = |size: usize, unit: usize| (size / 2).div_ceil(unit) * unit;
    while threads > 1 && m.div_ceil(rb) * n.div_ceil(cb) < 4 * threads {
        if rb >= 2 * row_unit && m.div_ceil(rb) < m.div_ceil(row_unit) {
            rb = halve(rb, row_unit);
        } else if cb >= 2 * col_unit && n.div_ceil(cb) < n.div_ceil(col_unit) {
            cb = halve(cb, col_unit);
        } else {
            break;
        }
    }
    (rb, cb)
}

/// Region size (rows, columns) when `lhs` is packed beforehand: nothing is packed per region,
/// so columns are split first (each region's strips of B are read once, from memory), at most
/// 256 rows at a time (a k block of those rows stays in L2 while the strips go by), until
/// there are four regions per thread.
fn blocks_prepacked(
    (m, n): (usize, usize),
    (row_unit, col_unit): (usize, usize),
    threads: usize,
) -> (usize, usize) {
    let row_blocks = m.div_ceil(256);
    let rb = m.div_ceil(row_blocks).div_ceil(row_unit) * row_unit;
    let regions = m.div_ceil(rb);
    let col_blocks = if threads > 1 {
        (4 * threads).div_ceil(regions)
    } else {
        1
    };
    let cb = n.div_ceil(col_blocks).div_ceil(col_unit).max(1) * col_unit;
    (rb, cb)
}

#[cfg(test)]
mod tests {
    use super::super::scalar::TILE;
    use super::super::{Bf16Isa, Lhs, PackedLhs, PackedRhs, Rhs, gemm_bf16_with};
    use super::*;

    /// `n` values in [−1, 1), varied by `seed`.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1009) as f32 / 504.5) - 1.0)
            .collect()
    }

    /// A product whose right operand is packed panel by panel as it goes gives the same bits
    /// as one with it packed beforehand, on every fast path this CPU has: one k block and
    /// several, one panel and several, a short last panel and a short last strip.
    #[test]
    fn fused_products_equal_prepacked_ones() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for isa in [Bf16Isa::Amx, Bf16Isa::Avx512Bf16] {
            if !isa.available() {
                println!("skipping the {isa} path: not available on this CPU");
                continue;
            }
            for (m, n, k) in [
                (40, 300, 100),
                (70, 1100, 600),
                (16, 40, 33),
                (96, 2048, 64),
            ] {
                let lhs = PackedLhs::new(m, k, (&values(m * k, 1), k, 1));
                let rhs = PackedRhs::new(k, n, (&values(k * n, 2), n, 1));
                let start = values(m * n, 3);
                let mut expected = start.clone();
                let operands = (Lhs::Packed(&lhs), Rhs::Packed(&rhs));
                gemm_bf16_with(
                    isa,
                    (m, n, k),
                    &mut expected,
                    n,
                    operands.0,
                    operands.1,
                    true,
                    true,
                );
                let fill =
                    |b: &mut [u16], (first, strips): (usize, usize), chunks: Range<usize>| {
                        let len = chunks.len() * TILE;
                        for s in 0..strips {
                            let from = (first / 16 + s) * 16 * rhs.kp + chunks.start * TILE;
                            b[s * len..][..len].copy_from_slice(&rhs.data()[from..][..len]);
                        }
                    };
                let mut fused = start.clone();
                run_fused(isa, (m, n, k), &mut fused, n, &lhs, &fill, true);
                assert_eq!(bits(&fused), bits(&expected), "{isa} {m}×{n}×{k}");
            }
        }
    }
}
