//! bf16 matrix products on the CPU: the contract of `gemm_f32`, but with both operands
//! rounded to bf16 (round to nearest even) as they are packed and the products summed in f32.
//!
//! Three paths, chosen once at run time ([`isa`]), never from build flags:
//! - [`Bf16Isa::Amx`]: AMX tiles (`tdpbf16ps`), 32 × 32 blocks of C (`amx.rs`);
//! - [`Bf16Isa::Avx512Bf16`]: `vdpbf16ps` in an 8 × 48 register block (`avx512.rs`);
//! - [`Bf16Isa::Emulated`]: operands rounded to bf16 and back, then `gemm_f32` (the same
//!   numbers up to the order of the sums), for CPUs with neither.
//!
//! The fast paths pack the left operand into row tiles and the right one into strips of 16
//! columns (`pack.rs`, with AVX-512 conversions in `simd.rs`; weights can be packed once:
//! [`PackedRhs`] for a linear layer's, [`PackedLhs`] for a convolution's kernel, which runs
//! as `kernel · patches`; attention's probabilities are packed straight from its scores,
//! `softmax.rs`), then split C into regions that run on candle's threads, each walking `k`
//! in cache-sized blocks (`driver.rs`). Every region gives the same sums whatever the split,
//! so results do not depend on the thread count, and the packed and unpacked products agree
//! bit for bit.
//!
//! Memory: the packed operands live in per-thread scratch buffers kept between calls (a
//! region's rows of `lhs` in bf16, at most 256 × `k`; its 32 × 32 sums between k blocks, at
//! most 512 KiB; and for `gemm_bf16`, the calling thread's packed `rhs`, `k` × `n` in
//! bf16); the emulated path keeps its rounded operands (f32) the same way.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod driver;
mod isa;
mod pack;
pub(crate) mod patches;
#[cfg(target_arch = "x86_64")]
mod problem;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod simd;
mod softmax;
#[cfg(test)]
mod tests;

pub use pack::{PackedLhs, PackedRhs};
pub use scalar::{bf16_bits, round_bf16};

use crate::kernels::gemm::{View, gemm_f32};
use crate::kernels::scratch;
use std::cell::Cell;

/// Which bf16 instructions the products use on this CPU (detected once, at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bf16Isa {
    /// AMX-TILE + AMX-BF16 tiles (Sapphire Rapids and later; on Linux once the kernel grants
    /// the tile state).
    Amx,
    /// AVX-512 with the BF16 extension (`vdpbf16ps`; Cooper Lake, Zen 4 and later).
    Avx512Bf16,
    /// No bf16 instructions: bf16-rounded operands multiplied in f32.
    Emulated,
}

impl Bf16Isa {
    /// Every path, best first.
    pub const ALL: [Bf16Isa; 3] = [Bf16Isa::Amx, Bf16Isa::Avx512Bf16, Bf16Isa::Emulated];

    /// The name `LOOPBACK_BF16_ISA` and [`isa_named`] take: `amx`, `avx512bf16`, `emulated`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Isa::Amx => "amx",
            Bf16Isa::Avx512Bf16 => "avx512bf16",
            Bf16Isa::Emulated => "emulated",
        }
    }

    /// The path with this [`name`](Self::name) (case-insensitive), whether or not the CPU
    /// has it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU (and OS) can run the path.
    pub fn available(self) -> bool {
        isa::available(self)
    }

    /// 0 for the best path, higher for slower ones.
    fn rank(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Bf16Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The path the products use: the best this CPU has, detected once; the environment
/// variable `LOOPBACK_BF16_ISA` (`amx`, `avx512bf16`, `emulated`) can only lower it.
pub fn isa() -> Bf16Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Bf16Isa> = OnceLock::new();
    *ISA.get_or_init(|| isa::chosen(std::env::var("LOOPBACK_BF16_ISA").ok().as_deref()))
}

/// Whether the packings may round with AVX512-BF16's `vcvtne2ps2bf16`: the CPU has it and the
/// products' path is not the emulated one (which stands for a CPU without bf16 instructions).
#[cfg(target_arch = "x86_64")]
fn native_conversion() -> bool {
    isa() != Bf16Isa::Emulated && Bf16Isa::Avx512Bf16.available()
}

/// The path named `name` if this CPU has it (for tests and benchmarks that run each path).
pub fn isa_named(name: &str) -> Option<Bf16Isa> {
    Bf16Isa::from_name(name).filter(|isa| isa.available())
}

/// The left operand of a product: a strided view (rounded and packed as the product goes),
/// or packed beforehand (a convolution's kernel, attention's probabilities).
#[derive(Clone, Copy)]
pub enum Lhs<'a> {
    /// An m × k strided view.
    View(View<'a>),
    /// Packed beforehand: its `m()` × `k()` must be the product's `m` × `k`.
    Packed(&'a PackedLhs),
}

/// The right operand of a product: a strided view, or packed beforehand (a layer's weights).
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// A k × n strided view.
    View(View<'a>),
    /// Packed beforehand: its `k()` × `n()` must be the product's `k` × `n`.
    Packed(&'a PackedRhs),
}

/// Same contract as [`gemm_f32`], but both operands rounded to bf16 (round to nearest even)
/// while packing (or packed so beforehand), products accumulated in f32; on the path [`isa`]
/// chose. Packed or not, the operands give the same numbers, bit for bit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Lhs,
    rhs: Rhs,
    accumulate: bool,
    parallel: bool,
) {
    gemm_bf16_with(isa(), dims, dst, dst_rs, lhs, rhs, accumulate, parallel);
}

/// [`gemm_bf16`] on the path `isa`, which this CPU must have.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16_with(
    isa: Bf16Isa,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Lhs,
    rhs: Rhs,
    accumulate: bool,
    parallel: bool,
) {
    let lhs_view = match lhs {
        Lhs::View(view) => Some(view),
        Lhs::Packed(packed) => {
            assert_eq!((packed.m, packed.k), (m, k), "packed lhs of another shape");
            None
        }
    };
    let rhs_view = match rhs {
        Rhs::View(view) => Some(view),
        Rhs::Packed(packed) => {
            assert_eq!((packed.k, packed.n), (k, n), "packed rhs of another shape");
            None
        }
    };
    check(isa, (m, n, k), dst, dst_rs, lhs_view, rhs_view);
    if m == 0 || n == 0 {
        return;
    }
    if isa == Bf16Isa::Emulated {
        let fill_lhs = |a: &mut [f32]| match lhs {
            Lhs::View(view) => pack::rounded_matrix(a, k, view, parallel),
            Lhs::Packed(packed) => packed.unpack(a, parallel),
        };
        let fill_rhs = |b: &mut [f32]| match rhs {
            Rhs::View(view) => pack::rounded_matrix(b, n, view, parallel),
            Rhs::Packed(packed) => packed.unpack(b, parallel),
        };
        let fill = (fill_lhs, fill_rhs);
        return emulated((m, n, k), dst, dst_rs, fill, accumulate, parallel);
    }
    let dims = (m, n, k);
    match rhs {
        Rhs::Packed(packed) => fast(isa, dims, dst, dst_rs, lhs, packed, accumulate, parallel),
        Rhs::View(view) => {
            let packed = PackedRhs::with_buffer(take(&RHS_SCRATCH), k, n, view, parallel);
            fast(isa, dims, dst, dst_rs, lhs, &packed, accumulate, parallel);
            give(&RHS_SCRATCH, packed.into_buffer());
        }
    }
}

/// [`gemm_bf16`] with the left operand packed beforehand and the right one packed by `fill`
/// as the product goes, panel of columns by panel and k block by block, each into the cache
/// of the core that multiplies it (see [`driver::run_fused`]); on candle's threads. Returns
/// `false`, having done nothing, on the emulated path and where the panels would be too
/// narrow to pay ([`driver::fused_panel`]): the caller packs the operand beforehand then.
pub(crate) fn gemm_bf16_filled(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &PackedLhs,
    fill: FillPanel,
    accumulate: bool,
) -> bool {
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Only x86 has the fast paths.
        let _ = ((m, n, k), dst, dst_rs, lhs, fill, accumulate);
        false
    }
    #[cfg(target_arch = "x86_64")]
    {
        let isa = isa();
        let threads = candle_core::utils::get_num_threads();
        if isa == Bf16Isa::Emulated || driver::fused_panel(m, n, threads).is_none() {
            return false;
        }
        assert_eq!((lhs.m, lhs.k), (m, k), "packed lhs of another shape");
        check(isa, (m, n, k), dst, dst_rs, None, None);
        if m > 0 && n > 0 {
            driver::run_fused(isa, (m, n, k), dst, dst_rs, lhs, fill, accumulate);
        }
        true
    }
}

/// Writes the right operand's strips for columns `(first, strips)` (16 columns each, from a
/// multiple of 16) and the k chunks `chunks` into the buffer: `chunks.len()` packed tiles per
/// strip, one strip after another.
pub(crate) type FillPanel<'a> =
    &'a (dyn Fn(&mut [u16], (usize, usize), std::ops::Range<usize>) + Sync);

/// The bounds [`gemm_f32`] asserts, plus the path's availability and rows of `dst` that do
/// not overlap (regions of it are written from several threads).
fn check(
    isa: Bf16Isa,
    (m, n, k): (usize, usize, usize),
    dst: &[f32],
    dst_rs: usize,
    lhs: Option<View>,
    rhs: Option<View>,
) {
    assert!(isa.available(), "bf16 path {isa} not available on this CPU");
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1
    };
    assert!(dst.len() >= last(m, dst_rs, n, 1));
    assert!(m == 1 || dst_rs >= n, "rows of dst overlap");
    if let Some((lhs, lhs_rs, lhs_cs)) = lhs {
        assert!(k == 0 || lhs.len() >= last(m, lhs_rs, k, lhs_cs));
    }
    if let Some((rhs, rhs_rs, rhs_cs)) = rhs {
        assert!(k == 0 || rhs.len() >= last(k, rhs_rs, n, rhs_cs));
    }
}

/// The emulated path: `lhs` rounded times `rhs` rounded, in f32 (`fill.0` writes the first,
/// row-major m × k, `fill.1` the second, row-major k × n), both in per-thread scratch buffers.
fn emulated(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    (fill_lhs, fill_rhs): (impl FnOnce(&mut [f32]), impl FnOnce(&mut [f32])),
    accumulate: bool,
    parallel: bool,
) {
    let (mut a, mut b) = (take(&EMULATED_LHS), take(&EMULATED_RHS));
    scratch::grow_scratch(&mut a, m * k);
    scratch::grow_scratch(&mut b, k * n);
    fill_lhs(&mut a[..m * k]);
    fill_rhs(&mut b[..k * n]);
    let (lhs, rhs) = ((&a[..], k, 1), (&b[..], n, 1));
    gemm_f32((m, n, k), dst, dst_rs, lhs, rhs, accumulate, parallel);
    give(&EMULATED_LHS, a);
    give(&EMULATED_RHS, b);
}

thread_local! {
    /// The packed left operand of the calls on this thread.
    static LHS_SCRATCH: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// The packed right operand of the unpacked calls on this thread.
    static RHS_SCRATCH: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
    /// The sums of a region between k blocks (AMX).
    static SUMS_SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The rounded left operand of the emulated path.
    static EMULATED_LHS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The rounded right operand of the emulated path.
    static EMULATED_RHS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Takes a scratch buffer out of its slot (a call nested by rayon's work stealing finds the
/// slot empty and allocates its own).
fn take<T>(slot: &'static std::thread::LocalKey<Cell<Vec<T>>>) -> Vec<T> {
    slot.with(Cell::take)
}

/// Puts a scratch buffer back, keeping the larger of it and whatever the slot holds.
fn give<T>(slot: &'static std::thread::LocalKey<Cell<Vec<T>>>, buffer: Vec<T>) {
    slot.with(|cell| {
        let old = cell.take();
        cell.set(if old.capacity() > buffer.capacity() {
            old
        } else {
            buffer
        });
    });
}

/// The fast paths (`isa` is AMX or AVX512-BF16, checked available).
#[allow(clippy::too_many_arguments)]
fn fast(
    isa: Bf16Isa,
    dims: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Lhs,
    rhs: &PackedRhs,
    accumulate: bool,
    parallel: bool,
) {
    #[cfg(target_arch = "x86_64")]
    driver::run(isa, dims, dst, dst_rs, lhs, rhs, accumulate, parallel);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dims, dst, dst_rs, lhs, rhs, accumulate, parallel);
        unreachable!("no {isa} path on this architecture");
    }
}

/// What [`bench_entry`] runs.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub enum BenchPath<'a> {
    /// [`gemm_f32`] on the views.
    F32,
    /// [`gemm_bf16`] on a path, with these operands.
    Bf16(Bf16Isa, Lhs<'a>, Rhs<'a>),
}

/// The products for the `gemm_bf16` example (they are crate-private): `dst (m × n, row
/// stride n) ← lhs · rhs` on `path` (`F32` multiplies the views `lhs` and `rhs`).
#[doc(hidden)]
pub fn bench_entry(
    path: BenchPath,
    dims: (usize, usize, usize),
    dst: &mut [f32],
    (lhs, rhs): (View, View),
    parallel: bool,
) {
    let n = dims.1;
    match path {
        BenchPath::F32 => gemm_f32(dims, dst, n, lhs, rhs, false, parallel),
        BenchPath::Bf16(isa, lhs, rhs) => {
            gemm_bf16_with(isa, dims, dst, n, lhs, rhs, false, parallel)
        }
    }
}
