//! bf16 rounding, and the scalar packing of the operand layouts `pack.rs` describes (what the
//! AVX-512 packers in `simd.rs` fall back to at the edges, and all of it without AVX-512).

use crate::kernels::gemm::View;
use std::ops::Range;

/// `x` rounded to bf16 (round to nearest, ties to even), as its 16 bits. NaN stays NaN (made
/// quiet, sign kept); values past bf16's largest finite round to infinity.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    let is_nan = bits & 0x7fff_ffff > 0x7f80_0000;
    (if is_nan { quiet_nan } else { rounded }) as u16
}

/// `x` rounded to bf16 (as [`bf16_bits`]) and widened back to f32.
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// Elements of a bf16 k chunk (32) times the 16 rows or columns of a tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only the fast paths pack lhs.
pub(super) const TILE: usize = 512;

/// `dst[e] ← bf16(lhs[row][kk0 + e])` for the 32 `e` (zero past `k`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only the fast paths pack lhs.
#[inline(always)]
pub(super) fn lhs_segment(dst: &mut [u16], row: usize, kk0: usize, k: usize, lhs: View) {
    let (values, rs, cs) = lhs;
    for (e, d) in dst[..32].iter_mut().enumerate() {
        let kk = kk0 + e;
        *d = if kk < k {
            bf16_bits(values[row * rs + kk * cs])
        } else {
            0
        };
    }
}

/// One row tile of the left operand: rows `row0..row0 + 16` (zero past `m`), the chunks of
/// `tile` from `chunk0` (zero past `k`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only the fast paths pack lhs.
#[inline(always)]
pub(super) fn pack_lhs_tile(
    tile: &mut [u16],
    row0: usize,
    m: usize,
    k: usize,
    chunk0: usize,
    lhs: View,
) {
    let rows = (m - row0).min(16);
    let chunks = tile.len() / TILE;
    for c in 0..chunks {
        for r in 0..16 {
            let dst = &mut tile[c * TILE + r * 32..][..32];
            if r < rows {
                lhs_segment(dst, row0 + r, (chunk0 + c) * 32, k, lhs);
            } else {
                dst.fill(0);
            }
        }
    }
}

/// Pairs `pairs` of a strip of the right operand (`cols` columns from `col0`, zero past
/// them and past `k`).
#[inline(always)]
pub(super) fn rhs_pairs(
    strip: &mut [u16],
    col0: usize,
    cols: usize,
    k: usize,
    pairs: Range<usize>,
    (values, rs, cs): View,
) {
    for p in pairs {
        let dst = &mut strip[p * 32..][..32];
        for col in 0..16 {
            for e in 0..2 {
                let kk = 2 * p + e;
                dst[2 * col + e] = if kk < k && col < cols {
                    bf16_bits(values[kk * rs + (col0 + col) * cs])
                } else {
                    0
                };
            }
        }
    }
}
