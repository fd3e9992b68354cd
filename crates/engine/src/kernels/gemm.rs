//! The one f32 matrix product every CPU kernel uses (convolutions, Winograd, attention):
//! the `gemm` crate's runtime-dispatched micro-kernels over strided slices.
//!
//! On several threads the product is cut here, into bands of rows (or of columns, when the
//! product is wider than tall) that run as single-threaded `gemm` calls on rayon's threads,
//! a few bands per thread, taken as threads come free. `gemm`'s own threading gives each
//! thread a fixed share and waits for the slowest, and on a 2-core machine shared with other
//! work one stalled core held up the whole product (32768 × 320 × 320, a 1024²
//! self-attention's projection: 86–107 GFLOP/s on 2 Zen 3 cores at busy times, 82 on one).
//! In the UNet's 512² step (three runs each way, interleaved) the linear layers took 6 % and
//! the 1×1 convolutions 5 % less time. Each band packs its own copy of the other operand,
//! `1 / band` of the product's work.

use rayon::prelude::*;

/// Bands per thread when a product is cut over the threads: more than one, so a thread that
/// finishes early takes another.
const PARTS_PER_THREAD: usize = 2;

/// The fewest rows (or columns) of a band: a product too small for two such bands runs on
/// `gemm`'s threads.
const MIN_PART_LEN: usize = 64;

/// A row-major matrix view: data, row stride, column stride.
pub(crate) type View<'a> = (&'a [f32], usize, usize);

/// `dst (m × n, row stride dst_rs) ← [dst +] lhs (m × k) · rhs (k × n)`, accumulating when
/// `accumulate`; on all of rayon's threads when `parallel` (in bands of rows or
/// columns, see the module's notes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    (lhs, lhs_rs, lhs_cs): View,
    (rhs, rhs_rs, rhs_cs): View,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1
    };
    assert!(dst.len() >= last(m, dst_rs, n, 1));
    assert!(k == 0 || lhs.len() >= last(m, lhs_rs, k, lhs_cs));
    assert!(k == 0 || rhs.len() >= last(k, rhs_rs, n, rhs_cs));
    // The threads of the pool this runs on (candle's count in the global pool).
    let threads = rayon::current_num_threads();
    let by_rows = m >= n;
    let long = m.max(n);
    let parts = if parallel && threads > 1 {
        (threads * PARTS_PER_THREAD).min(long / MIN_PART_LEN)
    } else {
        0
    };
    if parts >= 2 && k > 0 {
        // Each part a contiguous band of rows (or of columns, a multiple of 16 wide), one
        // single-threaded product each.
        let step = if by_rows {
            m.div_ceil(parts)
        } else {
            n.div_ceil(parts).next_multiple_of(16)
        };
        // The destination as an address: parts run on other threads.
        let dst_addr = dst.as_mut_ptr() as usize;
        (0..long.div_ceil(step)).into_par_iter().for_each(|part| {
            let start = part * step;
            let len = step.min(long - start);
            let (dims, dst_at, lhs_at, rhs_at) = if by_rows {
                ((len, n, k), start * dst_rs, start * lhs_rs, 0)
            } else {
                ((m, len, k), start, 0, start * rhs_cs)
            };
            // SAFETY: the part's rows (or columns) of `dst` are disjoint from every other
            // part's and inside `dst` (asserted above for the whole product), so no two
            // threads write one element; the operands are only read, at offsets of their
            // own rows (or columns) inside the slices.
            unsafe {
                product(
                    dims,
                    (dst_addr as *mut f32).add(dst_at),
                    dst_rs,
                    (lhs.as_ptr().add(lhs_at), lhs_rs, lhs_cs),
                    (rhs.as_ptr().add(rhs_at), rhs_rs, rhs_cs),
                    accumulate,
                    gemm::Parallelism::None,
                );
            }
        });
        return;
    }
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides reach inside the slices;
    // `dst` is borrowed mutably and does not alias `lhs` or `rhs`.
    unsafe {
        let (lhs, rhs) = (
            (lhs.as_ptr(), lhs_rs, lhs_cs),
            (rhs.as_ptr(), rhs_rs, rhs_cs),
        );
        product(
            (m, n, k),
            dst.as_mut_ptr(),
            dst_rs,
            lhs,
            rhs,
            accumulate,
            parallelism,
        );
    }
}

/// `gemm`'s product over raw row-major views (pointer, row stride, column stride).
///
/// # Safety
/// Every element the dimensions and strides reach must be inside its allocation, and no
/// other thread may touch the part of `dst` written.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Products cut into bands of rows and of columns (and too small to cut), with strided
    /// views (a transposed left operand, a destination wider than the product) and with and
    /// without accumulation, against f64 sums.
    #[test]
    fn banded_products_match_f64_sums() {
        for &(m, n, k) in &[(300, 70, 33), (70, 301, 40), (130, 130, 1), (5, 9, 7)] {
            let lhs = crate::test_util::uniform(m * k, 1);
            let rhs = crate::test_util::uniform(k * n, 2);
            let dst_rs = n + 3;
            for accumulate in [false, true] {
                let start = crate::test_util::uniform(m * dst_rs, 3);
                let mut dst = start.clone();
                // lhs read transposed: element (i, p) at p · m + i.
                let (l, r) = ((&lhs[..], 1, m), (&rhs[..], n, 1));
                rayon::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap()
                    .install(|| gemm_f32((m, n, k), &mut dst, dst_rs, l, r, accumulate, true));
                for i in 0..m {
                    for j in 0..dst_rs {
                        let got = f64::from(dst[i * dst_rs + j]);
                        let want = if j >= n {
                            f64::from(start[i * dst_rs + j])
                        } else {
                            let sum: f64 = (0..k)
                                .map(|p| f64::from(lhs[p * m + i]) * f64::from(rhs[p * n + j]))
                                .sum();
                            sum + if accumulate {
                                f64::from(start[i * dst_rs + j])
                            } else {
                                0.0
                            }
                        };
                        assert!(
                            (got - want).abs() < 1e-5 * (k as f64 + 1.0),
                            "{m}x{n}x{k} ({i}, {j})"
                        );
                    }
                }
            }
        }
    }
}
