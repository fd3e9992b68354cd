//! The one f32 matrix product every CPU kernel uses (convolutions, Winograd, attention):
//! the `gemm` crate's runtime-dispatched micro-kernels over strided slices.

/// A row-major matrix view: data, row stride, column stride.
pub(crate) type View<'a> = (&'a [f32], usize, usize);

/// `dst (m × n, row stride dst_rs) ← [dst +] lhs (m × k) · rhs (k × n)`, accumulating when
/// `accumulate`; on all of candle's CPU threads when `parallel`.
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
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides reach inside the slices;
    // `dst` is borrowed mutably and does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
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
