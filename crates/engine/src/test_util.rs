//! Helpers for the engine's unit tests.

use candle_core::Tensor;

/// Max abs difference of two tensors of the same shape, for the unit tests of the CPU
/// kernels and the networks.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of the same shape")
}

/// The workspace's shared test fixtures (`tests/fixtures` at the repository root).
pub(crate) fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `n` deterministic pseudo-random values in [−1, 1) (a linear congruential generator
/// started at `seed`), for kernel tests that need plain slices.
pub(crate) fn uniform(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// One query row's attention output in f64: `softmax(q · kᵀ · scale) · v` for the query `q`
/// (d values), the keys `k` (row-major, d wide) and the values `v` (row-major, `dv` wide).
pub(crate) fn attention_row(q: &[f64], k: &[f64], v: &[f64], dv: usize, scale: f64) -> Vec<f64> {
    let d = q.len();
    let scores: Vec<f64> = k
        .chunks_exact(d.max(1))
        .map(|kj| q.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale)
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = p.iter().sum();
    (0..dv)
        .map(|c| {
            p.iter()
                .enumerate()
                .map(|(j, pj)| pj / sum * v[j * dv + c])
                .sum()
        })
        .collect()
}
