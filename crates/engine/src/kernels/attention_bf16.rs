//! The bf16 attention on the CPU, fused per block of queries so that its scores never leave
//! the core's cache. It reads the heads where the projections left them, `(batch, n, heads ·
//! d)`, and writes the output the same way, so no tensor is split into heads or merged back.
//! Per image and head, the keys (as the `d × n_k` right operand) and the values are packed
//! into bf16 once (into buffers kept between calls); then per block of query rows and head,
//! `scores = q · kᵀ` (bf16 products, f32 sums) into a per-thread buffer of about
//! [`BLOCK_SCORE_BYTES`], the softmax's `exp` packed straight into bf16 as the left operand
//! of `p · v` (its sums in f32), and the output rows scaled by the softmax's normaliser.

use std::sync::Mutex;

use rayon::prelude::*;

use crate::kernels::bf16::{Lhs, PackedLhs, PackedRhs, Rhs, gemm_bf16};

/// Bytes of f32 scores per block of queries: with their bf16 copy, they stay in L2.
const BLOCK_SCORE_BYTES: usize = 512 << 10;

/// Query rows per block are never fewer than this, even past [`BLOCK_SCORE_BYTES`]: 16 rows
/// make `p · v` half-height products that stream all of the values for little work (16384
/// keys, 1024² images: a level-0 self-attention 2.49 s with 16 rows, 2.05 s with 32).
const MIN_ROWS: usize = 32;

/// The sizes of one attention call: images, heads per image, queries, keys, the query/key
/// width and the value width of one head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) n_q: usize,
    pub(crate) n_k: usize,
    pub(crate) d: usize,
    pub(crate) dv: usize,
}

thread_local! {
    /// Each thread's scores, row normalisers and packed probabilities, kept between calls.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>, PackedLhs)> =
        std::cell::RefCell::new((Vec::new(), Vec::new(), PackedLhs::default()));
}

/// Buffers of packed keys and values, kept from one call to the next: packed afresh, the
/// 14 MiB of a level-0 call at 512² were page-faulted on every call. Kept only up to
/// [`POOL_BYTES`] (a 1024² call's 58 MiB are let go).
static PACKED: Mutex<Vec<Vec<u16>>> = Mutex::new(Vec::new());

/// The most bytes of packed keys and values kept between calls.
const POOL_BYTES: usize = 32 << 20;

/// `softmax(q kᵀ · scale) v` per image and head for contiguous `q: (batch, n_q, heads · d)`,
/// `k: (batch, n_k, heads · d)`, `v: (batch, n_k, heads · dv)` (head `h` in columns
/// `h · d..`), in bf16 products with f32 sums and an f32 softmax; the output is `(batch, n_q,
/// heads · dv)`.
pub(crate) fn attention(q: &[f32], k: &[f32], v: &[f32], sizes: Sizes, scale: f32) -> Vec<f32> {
    let Sizes {
        batch,
        heads,
        n_q,
        n_k,
        d,
        dv,
    } = sizes;
    let (width, width_v) = (heads * d, heads * dv);
    let mut out = crate::kernels::filled::zeros(batch * n_q * width_v);
    if out.is_empty() || n_k == 0 {
        return out;
    }
    let mut pool = std::mem::take(&mut *PACKED.lock().unwrap_or_else(|e| e.into_inner()));
    let buffers: Vec<(Vec<u16>, Vec<u16>)> = (0..batch * heads)
        .map(|_| {
            (
                pool.pop().unwrap_or_default(),
                pool.pop().unwrap_or_default(),
            )
        })
        .collect();
    let packed: Vec<(PackedRhs, PackedRhs)> = buffers
        .into_par_iter()
        .enumerate()
        .map(|(i, (kb, vb))| {
            let (b, h) = (i / heads, i % heads);
            let kh = &k[b * n_k * width + h * d..];
            let vh = &v[b * n_k * width_v + h * dv..];
            (
                PackedRhs::packed_into(kb, d, n_k, (kh, 1, width), false),
                PackedRhs::packed_into(vb, n_k, dv, (vh, width_v, 1), false),
            )
        })
        .collect();
    let rows = (BLOCK_SCORE_BYTES / (4 * n_k)).clamp(MIN_ROWS, 256) / 16 * 16;
    // Score rows one cache line longer than the keys: rows a power of two of bytes apart
    // would all fall into the same L1 set as the tiles store them.
    let stride = n_k + 16;
    out.par_chunks_mut(n_q * width_v)
        .enumerate()
        .for_each(|(b, out_image)| {
            out_image
                .par_chunks_mut(rows * width_v)
                .enumerate()
                .for_each(|(block, out_rows)| {
                    let r = out_rows.len() / width_v;
                    let q_rows = &q[(b * n_q + block * rows) * width..];
                    SCRATCH.with_borrow_mut(|(scores, norms, probs)| {
                        // Written before read; grown when too small, never shrunk.
                        crate::kernels::scratch::grow_scratch(scores, r * stride);
                        crate::kernels::scratch::grow_scratch(norms, r);
                        let (scores, norms) = (&mut scores[..r * stride], &mut norms[..r]);
                        for (h, (kt, vh)) in packed[b * heads..][..heads].iter().enumerate() {
                            let q = Lhs::View((&q_rows[h * d..], width, 1));
                            let kt = Rhs::Packed(kt);
                            gemm_bf16((r, n_k, d), scores, stride, q, kt, false, false);
                            probs.repack_softmax(scores, (r, n_k, stride), scale, norms);
                            let (p, v) = (Lhs::Packed(probs), Rhs::Packed(vh));
                            let dst = &mut out_rows[h * dv..];
                            gemm_bf16((r, dv, n_k), dst, width_v, p, v, false, false);
                            for (row, norm) in dst.chunks_mut(width_v).zip(norms.iter()) {
                                row[..dv].iter_mut().for_each(|o| *o *= norm);
                            }
                        }
                    });
                });
        });
    let buffers: Vec<Vec<u16>> = packed
        .into_iter()
        .flat_map(|(kt, vh)| [kt.into_buffer(), vh.into_buffer()])
        .collect();
    let bytes: usize = buffers.iter().map(|b| 2 * b.capacity()).sum();
    if bytes <= POOL_BYTES {
        *PACKED.lock().unwrap_or_else(|e| e.into_inner()) = buffers;
    }
    out
}
