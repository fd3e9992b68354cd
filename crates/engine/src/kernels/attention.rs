//! Scaled dot-product attention that never materialises the whole score matrix.
//!
//! candle's Stable Diffusion attention computes `softmax(q kᵀ) v` in one piece: at 1024² the
//! UNet's first self-attention holds 8 heads × 16384² scores per image (16 GiB in f32), and
//! its sliced variant crashes (`docs/candle.md`). Here the work is cut into blocks whose
//! scores fit a byte budget:
//! - groups of heads × chunks of queries, each against all keys with an ordinary softmax
//!   (exact: every row of scores is complete) — the usual case;
//! - when even one query chunk's row of scores is too big (very long key sequences), the
//!   keys are cut into blocks too and combined with an online softmax (running maximum and
//!   running sum, rescaled as each block arrives), as flash attention does.
//!
//! Device-generic tensor code runs on CUDA and Metal (and any dtype); f32 on the CPU takes a
//! fused path: per head and chunk of queries, one product for the scores into a per-thread
//! scratch buffer, an in-place scaled softmax (vectorised `exp`), one product into the
//! output — no score tensor, no separate scaling pass, chunks spread over the threads. The
//! products are `gemm`'s, or on AVX2 CPUs the kernels of `attention_avx2.rs`; there, for
//! values up to 40 wide, each chunk of queries runs `attention_avx2::attend` (key blocks
//! with an online softmax, all in cache) instead.

use candle_core::{D, DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::kernels::compute::{Compute, gemm};
use crate::kernels::fastmath::exp_row;
use crate::kernels::storage::f32_slice;
use crate::kernels::{attention_avx2, attention_bf16};

/// Default bytes of scores held at once (per attention call).
pub const DEFAULT_SCORE_BUDGET: usize = 32 << 20;

/// Query rows per chunk are never fewer than this (smaller chunks starve the matrix
/// multiplication); below it the keys are blocked instead.
const MIN_QUERY_CHUNK: usize = 64;

/// The most query rows per task of the f32 CPU attention, whatever the budget allows: more
/// rows make score blocks that no cache holds (a 512² level-0 self-attention on a Zen 3,
/// d = 40: 1024 rows a task 432 ms, 256 rows 403 ms; 128 and 512 rows no faster).
const MAX_QUERY_ROWS: usize = 256;

/// Bytes of scores per query chunk with the AVX2 kernels ([`attention_avx2`]) but not the
/// fused path (values wider than 40): a block the second-level cache holds between the score
/// product, the softmax and the value product (the score product alone, 4096 keys of width
/// 40: 24 rows a chunk 89 GFLOP/s, 256 rows 76 GFLOP/s on one Zen 3 core).
const AVX2_SCORE_BYTES: usize = 384 << 10;

/// `softmax(q kᵀ · scale) v` for `q: (heads, n_q, d)`, `k, v: (heads, n_k, d)` (any leading
/// batch × heads flattened into `heads`), holding at most about `budget` bytes of scores;
/// on the CPU in f32 with the two products in `compute`'s arithmetic (the softmax in f32).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    budget: usize,
    compute: Compute,
) -> Result<Tensor> {
    if matches!(q.device(), Device::Cpu) && q.dtype() == DType::F32 {
        if compute == Compute::Bf16 && k.dim(1)? > 0 {
            // One head per leading index: the fused bf16 path.
            return attention_heads((q, k, v), 1, scale, budget, compute);
        }
        return attention_cpu(q, k, v, scale, (budget, compute));
    }
    attention_tensors(q, k, v, scale, budget)
}

/// [`attention`] per head for `q: (batch, n_q, heads · d)`, `k: (batch, n_k, heads · d)`,
/// `v: (batch, n_k, heads · dv)` (head `h` in columns `h · d..`), as the projections give
/// them; the output is `(batch, n_q, heads · dv)`. In bf16 on the CPU the heads are read and
/// written in place; elsewhere they are split out and merged back.
pub fn attention_heads(
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    heads: usize,
    scale: f64,
    budget: usize,
    compute: Compute,
) -> Result<Tensor> {
    let (batch, n_q, width) = q.dims3()?;
    let (_, n_k, width_v) = v.dims3()?;
    let fits = heads > 0
        && width % heads == 0
        && width_v % heads == 0
        && k.dims3()? == (batch, n_k, width)
        && v.dim(0)? == batch;
    if !fits {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let cpu_f32 = matches!(q.device(), Device::Cpu) && q.dtype() == DType::F32;
    if cpu_f32 && compute == Compute::Bf16 && n_k > 0 {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (q_store, q_layout) = q.storage_and_layout();
        let (k_store, k_layout) = k.storage_and_layout();
        let (v_store, v_layout) = v.storage_and_layout();
        let sizes = attention_bf16::Sizes {
            batch,
            heads,
            n_q,
            n_k,
            d: width / heads,
            dv: width_v / heads,
        };
        let out = attention_bf16::attention(
            f32_slice(&q_store, q_layout)?,
            f32_slice(&k_store, k_layout)?,
            f32_slice(&v_store, v_layout)?,
            sizes,
            scale as f32,
        );
        return Tensor::from_vec(out, (batch, n_q, width_v), &Device::Cpu);
    }
    let split = |xs: &Tensor| -> Result<Tensor> {
        let (b, n, w) = xs.dims3()?;
        xs.reshape((b, n, heads, w / heads))?
            .transpose(1, 2)?
            .reshape((b * heads, n, w / heads))
    };
    let out = attention(&split(q)?, &split(k)?, &split(v)?, scale, budget, compute)?;
    out.reshape((batch, heads, n_q, width_v / heads))?
        .transpose(1, 2)?
        .reshape((batch, n_q, width_v))
}

/// The device-generic blocked attention of [`attention`].
fn attention_tensors(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    budget: usize,
) -> Result<Tensor> {
    let (heads, n_q, _) = q.dims3()?;
    let n_k = k.dim(1)?;
    let elt = q.dtype().size_in_bytes().max(4);
    let budget = budget.max(1);
    let full = heads * n_q * n_k * elt;
    let kt = k.t()?.contiguous()?;
    if full <= budget {
        return plain(q, &kt, v, scale);
    }
    let row = n_k * elt;
    let per_head = n_q * row;
    if per_head <= budget {
        // Whole heads at a time.
        let group = (budget / per_head).clamp(1, heads);
        return map_chunks(heads, group, 0, |start, len| {
            plain(
                &q.narrow(0, start, len)?,
                &kt.narrow(0, start, len)?,
                &v.narrow(0, start, len)?,
                scale,
            )
        });
    }
    let chunk = budget / row;
    if chunk >= MIN_QUERY_CHUNK.min(n_q) {
        // One head at a time, chunks of queries against all keys.
        return map_chunks(heads, 1, 0, |h, _| {
            let (qh, kth, vh) = (q.narrow(0, h, 1)?, kt.narrow(0, h, 1)?, v.narrow(0, h, 1)?);
            map_chunks(n_q, chunk.min(n_q), 1, |start, len| {
                plain(&qh.narrow(1, start, len)?, &kth, &vh, scale)
            })
        });
    }
    // Keys too: one head, a minimal query chunk, key blocks with an online softmax.
    let chunk = MIN_QUERY_CHUNK.min(n_q);
    let key_block = (budget / (chunk * elt)).clamp(1, n_k);
    map_chunks(heads, 1, 0, |h, _| {
        let (qh, kth, vh) = (q.narrow(0, h, 1)?, kt.narrow(0, h, 1)?, v.narrow(0, h, 1)?);
        map_chunks(n_q, chunk, 1, |start, len| {
            online(&qh.narrow(1, start, len)?, &kth, &vh, scale, key_block)
        })
    })
}

thread_local! {
    /// Each thread's score rows and row normalisers, kept from one attention call to the
    /// next: a fresh zeroed buffer per call and thread cost up to 16 MiB of page faults or
    /// memset each time.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The f32 CPU attention of [`attention`]: at most about `budget` bytes of scores in all
/// the threads' scratch buffers together.
fn attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    (budget, compute): (usize, Compute),
) -> Result<Tensor> {
    let (heads, n_q, d) = q.dims3()?;
    let (_, n_k, dv) = v.dims3()?;
    if k.dims3()? != (heads, n_k, d) || v.dim(0)? != heads || n_k == 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (q_store, q_layout) = q.storage_and_layout();
    let (k_store, k_layout) = k.storage_and_layout();
    let (v_store, v_layout) = v.storage_and_layout();
    let (qs, ks, vs) = (
        f32_slice(&q_store, q_layout)?,
        f32_slice(&k_store, k_layout)?,
        f32_slice(&v_store, v_layout)?,
    );
    let scale = scale as f32;
    let threads = rayon::current_num_threads().max(1);
    // f32 products on an AVX2 CPU: the kernels shaped for attention's narrow products where
    // they beat `gemm` (scores up to 160 wide; values 8 to 40 wide, one tile of columns),
    // with query chunks whose scores stay in the second-level cache.
    let avx2 = compute != Compute::Bf16 && d <= 160 && attention_avx2::available();
    // The fused path too: at width 80 it was slower than scores, softmax and `gemm` (4096
    // tokens: 697 against 645 ms; 1024 tokens: 42 against 37 ms, 2-core Zen 3).
    let avx2_values = avx2 && dv % 8 == 0 && dv <= 40;
    let max_rows = if avx2_values {
        attention_avx2::ATTEND_ROWS
    } else if avx2 {
        (AVX2_SCORE_BYTES / (n_k * 4)).clamp(6, MAX_QUERY_ROWS)
    } else {
        MAX_QUERY_ROWS
    };
    let chunk = (budget / threads / (n_k * 4))
        .min(max_rows)
        .clamp(1, n_q.max(1));
    let mut out = vec![0f32; heads * n_q * dv];
    out.par_chunks_mut((n_q * dv).max(1))
        .enumerate()
        .for_each(|(h, out_head)| {
            let qh = &qs[h * n_q * d..(h + 1) * n_q * d];
            let kh = &ks[h * n_k * d..(h + 1) * n_k * d];
            let vh = &vs[h * n_k * dv..(h + 1) * n_k * dv];
            // The head's keys packed once for all its query chunks.
            let packed = avx2.then(|| {
                let mut packed = vec![0f32; attention_avx2::packed_len(n_k, d)];
                attention_avx2::pack_keys(kh, n_k, d, &mut packed);
                packed
            });
            out_head
                .par_chunks_mut((chunk * dv).max(1))
                .enumerate()
                .for_each(|(c, out_rows)| {
                    SCRATCH.with_borrow_mut(|(scores, norms)| {
                        let rows = out_rows.len() / dv.max(1);
                        let q_rows = &qh[c * chunk * d..];
                        if let (Some(packed), true) = (&packed, avx2_values) {
                            // Fused: key blocks with an online softmax, all in cache.
                            let (tile, stats) = attention_avx2::attend_scratch(rows, n_k);
                            crate::kernels::scratch::grow_scratch(scores, tile);
                            crate::kernels::scratch::grow_scratch(norms, stats);
                            let scratch = (&mut scores[..tile], &mut norms[..stats]);
                            let (q, k, v) = ((q_rows, rows, d), (&packed[..], n_k), (vh, dv));
                            attention_avx2::attend(q, k, v, scale, out_rows, scratch);
                            return;
                        }
                        // Written before read; grown when too small, never shrunk.
                        crate::kernels::scratch::grow_scratch(scores, rows * n_k);
                        crate::kernels::scratch::grow_scratch(norms, rows);
                        let scores = &mut scores[..rows * n_k];
                        let norms = &mut norms[..rows];
                        // scores = q · kᵀ (k read as a d × n_k matrix).
                        match &packed {
                            Some(packed) => {
                                attention_avx2::scores(q_rows, rows, d, packed, n_k, scores)
                            }
                            None => gemm(
                                compute,
                                (rows, n_k, d),
                                scores,
                                n_k,
                                (q_rows, d, 1),
                                (kh, 1, d),
                                false,
                                false,
                            ),
                        }
                        // The softmax's normalisation is applied to the output rows
                        // (dv wide) rather than to the score rows (n_k wide).
                        for (row, norm) in scores.chunks_mut(n_k).zip(norms.iter_mut()) {
                            *norm = exp_row(row, scale);
                        }
                        if avx2_values {
                            attention_avx2::values(scores, rows, n_k, vh, dv, out_rows);
                        } else {
                            gemm(
                                compute,
                                (rows, dv, n_k),
                                out_rows,
                                dv,
                                (scores, n_k, 1),
                                (vh, dv, 1),
                                false,
                                false,
                            );
                        }
                        for (out_row, norm) in out_rows.chunks_mut(dv.max(1)).zip(norms.iter()) {
                            out_row.iter_mut().for_each(|o| *o *= norm);
                        }
                    })
                });
        });
    drop((q_store, k_store, v_store));
    Tensor::from_vec(out, (heads, n_q, dv), &Device::Cpu)
}

/// Plain attention with `kt` already transposed to `(heads, d, n_k)`.
fn plain(q: &Tensor, kt: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.contiguous()?.matmul(kt)? * scale)?;
    let probs = softmax_f32(&scores)?;
    probs.matmul(&v.contiguous()?)
}

/// Softmax over the last dimension, computed in f32 whatever the dtype (as PyTorch's
/// attention does for half precision).
fn softmax_f32(scores: &Tensor) -> Result<Tensor> {
    let dtype = scores.dtype();
    if dtype == DType::F32 {
        return candle_nn::ops::softmax_last_dim(scores);
    }
    candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

/// Attention over key blocks of `block` keys with a running maximum `m`, running sum `l`
/// and running output `o`: for each block `s = q kᵀ`, `m' = max(m, max s)`,
/// `p = exp(s − m')`, `l' = l·exp(m − m') + Σp`, `o' = o·exp(m − m') + p v`; finally `o / l`.
fn online(q: &Tensor, kt: &Tensor, v: &Tensor, scale: f64, block: usize) -> Result<Tensor> {
    let dtype = q.dtype();
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    let n_k = kt.dim(2)?;
    let mut state: Option<(Tensor, Tensor, Tensor)> = None;
    let mut start = 0;
    while start < n_k {
        let len = block.min(n_k - start);
        let kb = kt
            .narrow(2, start, len)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let vb = v
            .narrow(1, start, len)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let s = (q.matmul(&kb)? * scale)?;
        let block_max = s.max_keepdim(D::Minus1)?;
        state = Some(match state {
            None => {
                let p = s.broadcast_sub(&block_max)?.exp()?;
                let l = p.sum_keepdim(D::Minus1)?;
                (block_max, l, p.matmul(&vb)?)
            }
            Some((m, l, o)) => {
                let m_new = m.maximum(&block_max)?;
                let p = s.broadcast_sub(&m_new)?.exp()?;
                let correction = (m - &m_new)?.exp()?;
                let l = (l.mul(&correction)? + p.sum_keepdim(D::Minus1)?)?;
                let o = (o.broadcast_mul(&correction)? + p.matmul(&vb)?)?;
                (m_new, l, o)
            }
        });
        start += len;
    }
    match state {
        Some((_, l, o)) => o.broadcast_div(&l)?.to_dtype(dtype),
        None => candle_core::bail!("attention over zero keys"),
    }
}

/// Runs `f(start, len)` over `0..total` in chunks of `chunk` and concatenates the results
/// along `dim`.
fn map_chunks(
    total: usize,
    chunk: usize,
    dim: usize,
    mut f: impl FnMut(usize, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let chunk = chunk.max(1);
    let mut parts = Vec::with_capacity(total.div_ceil(chunk));
    let mut start = 0;
    while start < total {
        let len = chunk.min(total - start);
        parts.push(f(start, len)?);
        start += len;
    }
    Tensor::cat(&parts, dim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1 * shape.2;
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn every_blocking_matches_plain_attention() {
        let (heads, n_q, n_k, d) = (3, 200, 300, 16);
        let q = random((heads, n_q, d), 1);
        let k = random((heads, n_k, d), 2);
        let v = random((heads, n_k, d), 3);
        let scale = 1.0 / (d as f64).sqrt();
        let reference = attention_tensors(&q, &k, &v, scale, usize::MAX).unwrap();
        // Budgets that force: head groups, query chunks, and key blocks with online softmax.
        for budget in [
            heads * n_q * n_k * 4 - 1,
            n_q * n_k * 4,
            100 * n_k * 4,
            64 * n_k * 4,
            64 * 50 * 4,
            64 * 7 * 4,
            1,
        ] {
            for blocked in [
                attention_tensors(&q, &k, &v, scale, budget).unwrap(),
                attention_cpu(&q, &k, &v, scale, (budget, Compute::F32)).unwrap(),
            ] {
                assert_eq!(blocked.dims(), reference.dims());
                let diff = crate::test_util::max_abs_diff(&blocked, &reference);
                assert!(diff <= 1e-5, "budget {budget}: max abs diff {diff}");
            }
        }
    }

    /// The fused bf16 attention against an f64 softmax of the same bf16-rounded q, k and v:
    /// within the one bf16 rounding of the probabilities (2⁻⁹ of Σ p·|v|, |v| ≤ 3), on widths
    /// and lengths that are not multiples of the tiles.
    #[test]
    fn bf16_attention_is_close_to_the_f64_reference() {
        use crate::kernels::bf16::round_bf16;
        for (heads, n_q, n_k, d, dv) in [(3, 200, 300, 40, 40), (2, 33, 77, 16, 24)] {
            let q = random((heads, n_q, d), 4);
            let k = random((heads, n_k, d), 5);
            let v = random((heads, n_k, dv), 6);
            let scale = 1.0 / (d as f64).sqrt();
            let got = attention(&q, &k, &v, scale, DEFAULT_SCORE_BUDGET, Compute::Bf16).unwrap();
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let rounded = |t: &Tensor| -> Vec<f64> {
                let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                values.iter().map(|&x| f64::from(round_bf16(x))).collect()
            };
            let (q, k, v) = (rounded(&q), rounded(&k), rounded(&v));
            let mut worst = 0f64;
            for h in 0..heads {
                let kh = &k[h * n_k * d..][..n_k * d];
                let vh = &v[h * n_k * dv..][..n_k * dv];
                for i in 0..n_q {
                    let qi = &q[(h * n_q + i) * d..][..d];
                    let want = crate::test_util::attention_row(qi, kh, vh, dv, scale);
                    for (c, want) in want.iter().enumerate() {
                        let got = f64::from(got[(h * n_q + i) * dv + c]);
                        worst = worst.max((got - want).abs());
                    }
                }
            }
            assert!(worst <= 3.0 / 256.0, "max abs error {worst}");
        }
    }

    /// Heads read and written in place (bf16) give the numbers of heads split out, attended
    /// and merged back, bit for bit; in f32 `attention_heads` is that split itself.
    #[test]
    fn heads_in_place_equal_split_heads() {
        let (batch, heads, n_q, n_k, d, dv) = (2, 3, 50, 77, 16, 8);
        let q = random((batch, n_q, heads * d), 7);
        let k = random((batch, n_k, heads * d), 8);
        let v = random((batch, n_k, heads * dv), 9);
        let split = |xs: &Tensor, w: usize| {
            let n = xs.dim(1).unwrap();
            xs.reshape((batch, n, heads, w))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((batch * heads, n, w))
                .unwrap()
        };
        let budget = DEFAULT_SCORE_BUDGET;
        for compute in [Compute::Bf16, Compute::F32] {
            let (qs, ks, vs) = (split(&q, d), split(&k, d), split(&v, dv));
            let reference = attention(&qs, &ks, &vs, 0.25, budget, compute)
                .unwrap()
                .reshape((batch, heads, n_q, dv))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((batch, n_q, heads * dv))
                .unwrap();
            let in_place = attention_heads((&q, &k, &v), heads, 0.25, budget, compute).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                values.iter().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&in_place), bits(&reference), "{compute:?}");
        }
    }
}
