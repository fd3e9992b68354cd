//! The bf16 attention on the CPU, fused per block of queries so that its scores never leave
//! the core's cache: per head, the keys (as the `d × n_k` right operand) and the values are
//! packed into bf16 once; then per block of query rows, `scores = q · kᵀ` (bf16 products, f32
//! sums) into a per-thread buffer of about [`BLOCK_SCORE_BYTES`], the softmax's `exp` packed
//! straight into bf16 as the left operand of `p · v` (its sums in f32), and the output rows
//! scaled by the softmax's normaliser.

use rayon::prelude::*;

use crate::kernels::bf16::{Lhs, PackedLhs, PackedRhs, Rhs, gemm_bf16};

/// Bytes of f32 scores per block of queries: with their bf16 copy, they stay in L2.
const BLOCK_SCORE_BYTES: usize = 512 << 10;

/// The sizes of one attention call: `heads` (batch × heads), queries, keys, the query/key
/// width and the value width.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
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

/// `softmax(q kᵀ · scale) v` for contiguous `q: (heads, n_q, d)`, `k: (heads, n_k, d)`, `v:
/// (heads, n_k, dv)`, in bf16 products with f32 sums and an f32 softmax; the output is
/// `(heads, n_q, dv)`.
pub(crate) fn attention(q: &[f32], k: &[f32], v: &[f32], sizes: Sizes, scale: f32) -> Vec<f32> {
    let Sizes {
        heads,
        n_q,
        n_k,
        d,
        dv,
    } = sizes;
    let mut out = vec![0f32; heads * n_q * dv];
    if out.is_empty() || n_k == 0 {
        return out;
    }
    let packed: Vec<(PackedRhs, PackedRhs)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let (kh, vh) = (&k[h * n_k * d..][..n_k * d], &v[h * n_k * dv..][..n_k * dv]);
            (
                PackedRhs::packed_into(Vec::new(), d, n_k, (kh, 1, d), false),
                PackedRhs::packed_into(Vec::new(), n_k, dv, (vh, dv, 1), false),
            )
        })
        .collect();
    let rows = (BLOCK_SCORE_BYTES / (4 * n_k)).clamp(16, 256) / 16 * 16;
    out.par_chunks_mut(n_q * dv)
        .zip(packed.par_iter())
        .enumerate()
        .for_each(|(h, (out_head, (kt, vh)))| {
            let qh = &q[h * n_q * d..][..n_q * d];
            out_head
                .par_chunks_mut(rows * dv)
                .enumerate()
                .for_each(|(b, out_rows)| {
                    let r = out_rows.len() / dv;
                    let q_rows = &qh[b * rows * d..][..r * d];
                    SCRATCH.with_borrow_mut(|(scores, norms, probs)| {
                        // Written before read; grown when too small, never shrunk.
                        crate::kernels::scratch::grow_scratch(scores, r * n_k);
                        crate::kernels::scratch::grow_scratch(norms, r);
                        let (scores, norms) = (&mut scores[..r * n_k], &mut norms[..r]);
                        let (q, kt) = (Lhs::View((q_rows, d, 1)), Rhs::Packed(kt));
                        gemm_bf16((r, n_k, d), scores, n_k, q, kt, false, false);
                        probs.repack_softmax(scores, (r, n_k), scale, norms);
                        let (p, v) = (Lhs::Packed(probs), Rhs::Packed(vh));
                        gemm_bf16((r, dv, n_k), out_rows, dv, p, v, false, false);
                        for (out_row, norm) in out_rows.chunks_mut(dv).zip(norms.iter()) {
                            out_row.iter_mut().for_each(|o| *o *= norm);
                        }
                    });
                });
        });
    out
}
