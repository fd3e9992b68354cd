//! bf16 rounding and the packed operand layouts the kernels read.
//!
//! Both layouts are built from 64-byte rows (one cache line, one AMX tile row):
//! - left operand (`lhs`, m × k): row tiles of 16 rows; tile `t` holds rows `16t..16t + 16`
//!   as `[k chunk of 32][16 rows][32 k]`, so one AMX A tile (16 × 32 bf16) is 1 KiB of
//!   consecutive memory, and the AVX-512 kernel broadcasts pairs out of the same bytes;
//! - right operand (`rhs`, k × n): strips of 16 columns; strip `s` holds columns
//!   `16s..16s + 16` as `[k pair][16 columns][2 k]` (the VNNI layout of `tdpbf16ps` and
//!   `vdpbf16ps`), so 16 consecutive pairs are one AMX B tile and one pair is one zmm.
//!
//! `k` is padded with zeros to a multiple of 32, the rows and columns to multiples of 16.

use super::scalar::{TILE, pack_lhs_tile, rhs_pairs, round_bf16};
#[cfg(target_arch = "x86_64")]
use super::simd;
use crate::kernels::gemm::View;
use rayon::prelude::*;
use std::ops::Range;

/// `k` padded to whole 32-element chunks.
pub(super) fn padded_k(k: usize) -> usize {
    k.div_ceil(32) * 32
}

/// A `len`-element stretch of `buffer` that starts on a 64-byte boundary, growing the buffer
/// when it is short (contents are left over from earlier use).
pub(super) fn aligned(buffer: &mut Vec<u16>, len: usize) -> (usize, &mut [u16]) {
    if buffer.len() < len + 32 {
        *buffer = Vec::new();
        *buffer = vec![0; len + 32];
    }
    let offset = buffer.as_ptr().align_offset(64);
    (offset, &mut buffer[offset..offset + len])
}

/// A right-hand operand (weights) packed once into bf16 in the layout the kernels read (half
/// the memory of f32): strips of 16 columns, pairs of `k` interleaved, zero padded.
pub struct PackedRhs {
    pub(super) k: usize,
    pub(super) n: usize,
    /// `k` padded to a multiple of 32.
    pub(super) kp: usize,
    buffer: Vec<u16>,
    offset: usize,
}

impl std::fmt::Debug for PackedRhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedRhs")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl PackedRhs {
    /// Packs `rhs` (k × n, a strided view) on candle's threads.
    pub fn new(k: usize, n: usize, rhs: View) -> Self {
        Self::with_buffer(Vec::new(), k, n, rhs, true)
    }

    /// Packs `rhs` (k × n) into `buffer` (reused when long enough), on candle's threads
    /// when `parallel`.
    pub(crate) fn packed_into(
        buffer: Vec<u16>,
        k: usize,
        n: usize,
        rhs: View,
        parallel: bool,
    ) -> Self {
        Self::with_buffer(buffer, k, n, rhs, parallel)
    }

    /// Packs `rhs` into `buffer` (reused when long enough).
    pub(super) fn with_buffer(
        buffer: Vec<u16>,
        k: usize,
        n: usize,
        rhs: View,
        parallel: bool,
    ) -> Self {
        let strip_len = 16 * padded_k(k);
        Self::filled(buffer, k, n, |data| {
            if k == 0 || n == 0 {
                return;
            }
            let (values, rs, cs) = rhs;
            assert!(
                values.len() > (k - 1) * rs + (n - 1) * cs,
                "rhs view out of bounds"
            );
            let work = |(s, strip): (usize, &mut [u16])| pack_rhs_strip(strip, 16 * s, n, k, rhs);
            if parallel {
                data.par_chunks_mut(strip_len).enumerate().for_each(work);
            } else {
                data.chunks_mut(strip_len).enumerate().for_each(work);
            }
        })
    }

    /// A k × n operand in `buffer` (reused when long enough) whose strips `fill` writes (every
    /// element, padding included).
    pub(super) fn filled(
        mut buffer: Vec<u16>,
        k: usize,
        n: usize,
        fill: impl FnOnce(&mut [u16]),
    ) -> Self {
        let kp = padded_k(k);
        let (offset, data) = aligned(&mut buffer, n.div_ceil(16) * 16 * kp);
        fill(data);
        Self {
            k,
            n,
            kp,
            buffer,
            offset,
        }
    }

    /// The bytes its bf16 values take (about `k · n · 2`, plus the padding).
    pub fn bytes(&self) -> usize {
        2 * self.n.div_ceil(16) * 16 * self.kp
    }

    /// Rows (`k`) of the operand.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (`n`) of the operand.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The packed values, strip after strip.
    pub(super) fn data(&self) -> &[u16] {
        &self.buffer[self.offset..self.offset + self.bytes() / 2]
    }

    /// Gives the buffer back for reuse.
    pub(crate) fn into_buffer(self) -> Vec<u16> {
        self.buffer
    }

    /// `out` ← the operand as rounded f32 values, row-major k × n (rows on candle's threads
    /// when `parallel`).
    pub(super) fn unpack(&self, out: &mut [f32], parallel: bool) {
        let (data, n, kp) = (self.data(), self.n, self.kp);
        assert_eq!(out.len(), self.k * n);
        if out.is_empty() {
            return;
        }
        let row = |(kk, row): (usize, &mut [f32])| {
            let pair = (kk / 2) * 32 + kk % 2;
            for (s, cols) in row.chunks_mut(16).enumerate() {
                let strip = &data[s * 16 * kp + pair..];
                for (col, v) in cols.iter_mut().enumerate() {
                    *v = f32::from_bits(u32::from(strip[2 * col]) << 16);
                }
            }
        };
        if parallel {
            out.par_chunks_mut(n).enumerate().for_each(row);
        } else {
            out.chunks_mut(n).enumerate().for_each(row);
        }
    }
}

/// A left-hand operand (a convolution's kernel, attention's probabilities) packed into bf16 in
/// the layout the kernels read: row tiles of 16 rows, each all of `k` (zero padded), one after
/// another.
#[derive(Default)]
pub struct PackedLhs {
    pub(super) m: usize,
    pub(super) k: usize,
    /// `k` padded to a multiple of 32.
    pub(super) kp: usize,
    buffer: Vec<u16>,
    offset: usize,
}

impl std::fmt::Debug for PackedLhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLhs")
            .field("m", &self.m)
            .field("k", &self.k)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl PackedLhs {
    /// Packs `lhs` (m × k, a strided view) on candle's threads.
    pub fn new(m: usize, k: usize, lhs: View) -> Self {
        let mut packed = Self::default();
        packed.repack(m, k, lhs, true);
        packed
    }

    /// Makes it an `m × k` operand, reusing its buffer (grown when short); returns the
    /// buffer's row tiles, to be filled.
    pub(super) fn reshape(&mut self, m: usize, k: usize) -> &mut [u16] {
        let kp = padded_k(k);
        let (offset, _) = aligned(&mut self.buffer, m.div_ceil(16) * 16 * kp);
        (self.m, self.k, self.kp, self.offset) = (m, k, kp, offset);
        &mut self.buffer[offset..][..m.div_ceil(16) * 16 * kp]
    }

    /// Packs `lhs` (m × k) in place of what it held, reusing its buffer (grown when short);
    /// row tiles on candle's threads when `parallel`.
    pub(crate) fn repack(&mut self, m: usize, k: usize, lhs: View, parallel: bool) {
        let kp = padded_k(k);
        let tile_len = 16 * kp;
        let data = self.reshape(m, k);
        if m > 0 && k > 0 {
            let (values, rs, cs) = lhs;
            assert!(
                values.len() > (m - 1) * rs + (k - 1) * cs,
                "lhs view out of bounds"
            );
            let work = |(t, tile): (usize, &mut [u16])| {
                pack_lhs(
                    tile,
                    16 * t..(16 * t + 16).min(m),
                    (m, k),
                    (0, kp / 32),
                    lhs,
                )
            };
            if parallel {
                data.par_chunks_mut(tile_len).enumerate().for_each(work);
            } else {
                data.chunks_mut(tile_len).enumerate().for_each(work);
            }
        }
    }

    /// The bytes its bf16 values take (about `m · k · 2`, plus the padding).
    pub fn bytes(&self) -> usize {
        2 * self.m.div_ceil(16) * 16 * self.kp
    }

    /// Rows (`m`) of the operand.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Columns (`k`) of the operand.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The packed values, row tile after row tile.
    pub(super) fn data(&self) -> &[u16] {
        &self.buffer[self.offset..self.offset + self.bytes() / 2]
    }

    /// `out` ← the operand as rounded f32 values, row-major m × k.
    pub(super) fn unpack(&self, out: &mut [f32], parallel: bool) {
        let (data, k, kp) = (self.data(), self.k, self.kp);
        assert_eq!(out.len(), self.m * k);
        if out.is_empty() {
            return;
        }
        let row = |(r, row): (usize, &mut [f32])| {
            let tile = &data[r / 16 * 16 * kp + (r % 16) * 32..];
            for (kk, v) in row.iter_mut().enumerate() {
                *v = f32::from_bits(u32::from(tile[kk / 32 * TILE + kk % 32]) << 16);
            }
        };
        if parallel {
            out.par_chunks_mut(k).enumerate().for_each(row);
        } else {
            out.chunks_mut(k).enumerate().for_each(row);
        }
    }
}

/// `out` (row-major, `cols` columns) ← the same rows and columns of a view, rounded to bf16
/// (rows on candle's threads when `parallel`; strided views read in 16 × 16 blocks).
pub(super) fn rounded_matrix(out: &mut [f32], cols: usize, view: View, parallel: bool) {
    if out.is_empty() || cols == 0 {
        return;
    }
    let (values, rs, cs) = view;
    // 16 rows at a time.
    let band = |(b, band): (usize, &mut [f32])| {
        let r0 = 16 * b;
        if cs == 1 {
            for (r, row) in band.chunks_exact_mut(cols).enumerate() {
                let src = &values[(r0 + r) * rs..][..cols];
                for (o, &v) in row.iter_mut().zip(src) {
                    *o = round_bf16(v);
                }
            }
        } else {
            let band_rows = band.len() / cols;
            for c0 in (0..cols).step_by(16) {
                for c in c0..(c0 + 16).min(cols) {
                    for r in 0..band_rows {
                        band[r * cols + c] = round_bf16(values[(r0 + r) * rs + c * cs]);
                    }
                }
            }
        }
    };
    if parallel && out.len() >= 1 << 16 {
        out.par_chunks_mut(16 * cols).enumerate().for_each(band);
    } else {
        out.chunks_mut(16 * cols).enumerate().for_each(band);
    }
}

/// Packs rows `rows` × k chunks `chunks` (of 32, from chunk `chunk0`) of the left operand
/// (m × k) into row tiles of 16 rows, `[tile][chunk][16 rows][32 k]` (zero past `m` and `k`);
/// `out` holds `rows.len().div_ceil(16)` tiles of `16 · 32 · chunks` elements.
pub(super) fn pack_lhs(
    out: &mut [u16],
    rows: Range<usize>,
    (m, k): (usize, usize),
    (chunk0, chunks): (usize, usize),
    lhs: View,
) {
    let tile_len = TILE * chunks;
    let tiles = rows.len().div_ceil(16);
    for (t, tile) in out[..tiles * tile_len].chunks_mut(tile_len).enumerate() {
        let row0 = rows.start + 16 * t;
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // SAFETY: the CPU has the features.
            unsafe { simd::pack_lhs_tile(tile, row0, m, k, chunk0, lhs) };
            continue;
        }
        pack_lhs_tile(tile, row0, m, k, chunk0, lhs);
    }
}

/// One strip of the right operand: columns `col0..col0 + 16` (zero past `n`), all of `k`
/// (zero past it).
fn pack_rhs_strip(strip: &mut [u16], col0: usize, n: usize, k: usize, rhs: View) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has the features.
        return unsafe { simd::pack_rhs_strip(strip, col0, n, k, rhs) };
    }
    let pairs = strip.len() / 32;
    let cols = (n - col0).min(16);
    rhs_pairs(strip, col0, cols, k, 0..pairs, rhs);
}
