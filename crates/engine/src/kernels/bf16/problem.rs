//! One product as the block kernels (`amx.rs`, `avx512.rs`) see it, and one step of their
//! walk along `k`: the types the driver hands them.

/// One product as the block kernels see it: the packed right operand and the destination.
pub(super) struct Problem<'a> {
    /// Rows of C.
    pub(super) m: usize,
    /// Columns of C.
    pub(super) n: usize,
    /// The shared dimension.
    pub(super) k: usize,
    /// `k` padded to a multiple of 32.
    pub(super) kp: usize,
    /// The packed right operand (strips).
    pub(super) b: &'a [u16],
    /// C's first element.
    pub(super) dst: *mut f32,
    /// C's row stride.
    pub(super) dst_rs: usize,
}

// SAFETY: the regions of `dst` the threads write are disjoint (`run`), and `dst` is borrowed
// mutably for the whole call.
unsafe impl Sync for Problem<'_> {}

impl Problem<'_> {
    /// `C[row0.., col0..] (+)= out` for `rows` × `cols` elements of `out` (row stride
    /// `out_rs`).
    ///
    /// # Safety
    /// The block lies inside C and no other thread touches it.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) unsafe fn write_back(
        &self,
        row0: usize,
        col0: usize,
        rows: usize,
        cols: usize,
        out: &[f32],
        out_rs: usize,
        add: bool,
    ) {
        debug_assert!(row0 + rows <= self.m && col0 + cols <= self.n);
        for r in 0..rows {
            // SAFETY: inside C (caller; `check` bounded C), not aliased (caller).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.dst.add((row0 + r) * self.dst_rs + col0), cols)
            };
            let src = &out[r * out_rs..][..cols];
            if add {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// One k block of a region's walk along `k`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    /// First chunk (of 32) of the block.
    pub(super) kb: usize,
    /// Chunks in the block.
    pub(super) kc: usize,
    /// Whether this is the first block (C starts from `dst` or zero, per `accumulate`).
    pub(super) first: bool,
    /// Whether this is the last block.
    pub(super) last: bool,
    /// Whether the product adds to `dst`.
    pub(super) accumulate: bool,
}
