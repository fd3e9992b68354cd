//! The AMX path: `tdpbf16ps` on 16 × 16 f32 tiles, through `asm!` (stable Rust has no AMX
//! intrinsics). A 2 × 2 block of C tiles (32 × 32) takes two A tiles (16 rows × 32 k) and two
//! B tiles (16 k pairs × 16 columns) per 32 k, each 1 KiB of consecutive packed memory.
//!
//! The eight tiles used are all 16 rows × 64 bytes; the tile configuration is per thread, so
//! every task loads it first and releases the tiles when done.

use super::problem::{Problem, Step};
use super::scalar::TILE;
use std::arch::asm;
use std::ops::Range;

/// `k` chunks (of 32) per block, with `lhs` packed block by block just before use and with
/// `lhs` packed first: a k block ends with the C tiles stored and the next one starts by
/// loading them, which costs a few hundred cycles, but short blocks keep a 32-column B panel
/// (16 KiB at 8 chunks) and the A strips of a block in L1. Measured on Sapphire Rapids: 8
/// chunks best where the just-packed block of `lhs` must stay in cache, 64 where it is
/// packed ahead.
pub(super) const KC_CHUNKS: (usize, usize) = (8, 64);

/// The 64-byte operand of `ldtilecfg`.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// The tile registers, configured for this thread; released on drop.
pub(super) struct Tiles;

impl Tiles {
    /// Configures tiles 0–7 as 16 rows × 64 bytes (palette 1).
    ///
    /// # Safety
    /// The CPU must have AMX-TILE and the OS must have granted the tile data state.
    pub(super) unsafe fn configure() -> Self {
        let mut config = TileConfig([0; 64]);
        config.0[0] = 1;
        for tile in 0..8 {
            config.0[16 + 2 * tile] = 64;
            config.0[48 + tile] = 16;
        }
        // SAFETY: the caller guarantees AMX; the configuration is 64 valid bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: only built by `configure`, so the CPU has AMX.
        unsafe { asm!("tilerelease", options(nostack)) };
    }
}

/// A 32 × 32 block of f32 that the four C tiles start from and end in: rows `stride` bytes
/// apart from `ptr`.
#[derive(Clone, Copy)]
struct CBlock {
    ptr: *mut f32,
    stride: usize,
}

impl CBlock {
    /// Its four 16 × 16 quarters.
    fn quarters(self) -> [*mut f32; 4] {
        let row16 = 16 * self.stride / 4;
        let p = self.ptr;
        [
            p,
            p.wrapping_add(16),
            p.wrapping_add(row16),
            p.wrapping_add(row16 + 16),
        ]
    }
}

/// The four C tiles ← `from` (or 0), then for `chunks` chunks of 32 k:
/// `C[r][c] += A[r] · B[c]` (`MT` row tiles, `NT` column tiles), then the four C tiles into
/// `to`.
///
/// # Safety
/// Tiles configured; `a[..MT]` and `b[..NT]` point at `chunks` consecutive packed tiles;
/// `from` is 32 × 32 readable f32, `to` 32 × 32 writable f32 that no other thread touches.
#[inline(always)]
unsafe fn tiles<const MT: usize, const NT: usize>(
    chunks: usize,
    a: [*const u16; 2],
    b: [*const u16; 2],
    from: Option<CBlock>,
    to: CBlock,
) {
    let stride = 64usize;
    // SAFETY (all blocks): tiles are configured (caller); the loads read `chunks` tiles of
    // 1 KiB from the packed operands and 16 rows of 64 bytes of each quarter of `from`, the
    // stores write those of `to` (caller).
    unsafe {
        if let Some(from) = from {
            let [c0, c1, c2, c3] = from.quarters();
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c1} + {s}*1]",
                "tileloadd tmm2, [{c2} + {s}*1]",
                "tileloadd tmm3, [{c3} + {s}*1]",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
                s = in(reg) from.stride, options(nostack)
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack)
            );
        }
        if (MT, NT) == (2, 2) {
            full_chunks(chunks, a, b, stride);
        } else {
            for k in 0..chunks {
                let (a0, a1) = (a[0].add(k * TILE), a[1].add(k * TILE));
                let (b0, b1) = (b[0].add(k * TILE), b[1].add(k * TILE));
                match (MT, NT) {
                    (2, 1) => asm!(
                        "tileloadd tmm4, [{a0} + {s}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm5, [{a1} + {s}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0,
                        s = in(reg) stride, options(nostack)
                    ),
                    (1, 2) => asm!(
                        "tileloadd tmm4, [{a0} + {s}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {s}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        a0 = in(reg) a0, b0 = in(reg) b0, b1 = in(reg) b1,
                        s = in(reg) stride, options(nostack)
                    ),
                    _ => asm!(
                        "tileloadd tmm4, [{a0} + {s}*1]",
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        a0 = in(reg) a0, b0 = in(reg) b0,
                        s = in(reg) stride, options(nostack)
                    ),
                }
            }
        }
        let [c0, c1, c2, c3] = to.quarters();
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3,
            s = in(reg) to.stride, options(nostack)
        );
    }
}

/// `C[r][c] += A[r] · B[c]` on all four C tiles for `chunks` chunks, software-pipelined: each
/// operand tile is loaded for the next chunk right after its last product in this one, so
/// that load overlaps the chunk's remaining products (the tile registers are not renamed: a
/// load at the top of the next chunk waited for all four). Measured on Sapphire Rapids, four
/// alternating rounds: a bf16 UNet step at 512² 2.59 → 2.49 s on average.
///
/// # Safety
/// As [`tiles`], with two row tiles and two column tiles.
#[inline(always)]
unsafe fn full_chunks(chunks: usize, a: [*const u16; 2], b: [*const u16; 2], stride: usize) {
    if chunks == 0 {
        return;
    }
    // SAFETY: tiles configured and `chunks` packed tiles readable from each pointer (caller).
    unsafe {
        asm!(
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            a0 = in(reg) a[0], a1 = in(reg) a[1], b0 = in(reg) b[0], b1 = in(reg) b[1],
            s = in(reg) stride, options(nostack)
        );
        for k in 1..chunks {
            let (a0, a1) = (a[0].add(k * TILE), a[1].add(k * TILE));
            let (b0, b1) = (b[0].add(k * TILE), b[1].add(k * TILE));
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                s = in(reg) stride, options(nostack)
            );
        }
        asm!(
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            options(nostack)
        );
    }
}

/// `dst[rows, cols] (+)= lhs[rows, k block] · rhs[k block, cols]` for the k block `step`,
/// with `a` that block of `lhs[rows]` packed (row tiles `a_stride` elements apart).
/// `rows.start` and `cols.start` are multiples of 32. Whole 32 × 32 blocks of C go through
/// the tiles: from `dst` (or zero) at the first k block, into `dst` at the last, and through
/// `sums` (32 × 32 blocks, contiguous, column of blocks after column) in between, which keeps
/// the strided rows of C out of the loop. Edge blocks go through a buffer and
/// [`Problem::write_back`].
///
/// # Safety
/// Tiles configured ([`Tiles::configure`]) on this thread; the region lies inside the
/// problem and no other thread touches it; `sums` holds the region's whole blocks.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block(
    p: &Problem,
    (a, a_stride): (&[u16], usize),
    rows: Range<usize>,
    cols: Range<usize>,
    step: Step,
    sums: &mut [f32],
) {
    let (kb, kc) = (step.kb, step.kc);
    let mut out = [[0f32; 32]; 32];
    let a_tile = |r: usize| a[(r - rows.start) / 16 * a_stride..].as_ptr();
    let b_strip = |c: usize| p.b[c / 16 * 16 * p.kp + kb * TILE..].as_ptr();
    let row_blocks = rows.len().div_ceil(32);
    for (j, c0) in cols.clone().step_by(32).enumerate() {
        let cols_here = (cols.end - c0).min(32);
        let nt = cols_here.div_ceil(16);
        let b0 = b_strip(c0);
        let b = [b0, if nt == 2 { b_strip(c0 + 16) } else { b0 }];
        for (i, r0) in rows.clone().step_by(32).enumerate() {
            let rows_here = (rows.end - r0).min(32);
            let mt = rows_here.div_ceil(16);
            let a0 = a_tile(r0);
            let a = [a0, if mt == 2 { a_tile(r0 + 16) } else { a0 }];
            let buffer = CBlock {
                ptr: out.as_mut_ptr().cast(),
                stride: 128,
            };
            // SAFETY: tiles configured (caller); the packed operands hold `kc` tiles from
            // each pointer; a whole block lies inside C, in this thread's region, and has its
            // 32 × 32 in `sums` (caller).
            unsafe {
                match (mt, nt) {
                    (2, 2) if rows_here == 32 && cols_here == 32 => {
                        let c = CBlock {
                            ptr: p.dst.add(r0 * p.dst_rs + c0),
                            stride: 4 * p.dst_rs,
                        };
                        let mut s = || CBlock {
                            ptr: sums[(j * row_blocks + i) * 1024..][..1024].as_mut_ptr(),
                            stride: 128,
                        };
                        let from = match (step.first, step.accumulate) {
                            (true, true) => Some(c),
                            (true, false) => None,
                            (false, _) => Some(s()),
                        };
                        let to = if step.last { c } else { s() };
                        tiles::<2, 2>(kc, a, b, from, to);
                        continue;
                    }
                    (2, 2) => tiles::<2, 2>(kc, a, b, None, buffer),
                    (2, 1) => tiles::<2, 1>(kc, a, b, None, buffer),
                    (1, 2) => tiles::<1, 2>(kc, a, b, None, buffer),
                    _ => tiles::<1, 1>(kc, a, b, None, buffer),
                }
                let add = step.accumulate || !step.first;
                p.write_back(r0, c0, rows_here, cols_here, out.as_flattened(), 32, add);
            }
        }
    }
}
