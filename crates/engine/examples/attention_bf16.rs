//! Micro benchmark of the CPU attention on the UNet's shapes at 512² and 1024² (batch 2 × 8
//! heads): f32 against bf16 (the fused path), one call on all of candle's threads (best of
//! several runs).
//!
//! `cargo run --release -p loopback-engine --example attention_bf16 [-- FILTER]`

mod common;

use candle_core::{Device, Tensor};
use common::best_of;
use loopback_engine::kernels::attention::{DEFAULT_SCORE_BUDGET, attention};
use loopback_engine::kernels::compute::Compute;

/// name, heads (batch × heads), queries, keys, width.
const SHAPES: [(&str, usize, usize, usize, usize); 6] = [
    ("self 128² (16384 tokens, d 40)", 16, 16384, 16384, 40),
    ("self 64² (4096 tokens, d 40)", 16, 4096, 4096, 40),
    ("self 64² at 1024² (4096 tokens, d 80)", 16, 4096, 4096, 80),
    ("self 32² (1024 tokens, d 80)", 16, 1024, 1024, 80),
    ("cross 64² (77 keys, d 40)", 16, 4096, 77, 40),
    ("VAE mid 64² (4096, d 512)", 1, 4096, 4096, 512),
];

fn main() -> candle_core::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let device = Device::Cpu;
    println!(
        "{:<30} {:>9} {:>9} {:>7}",
        "shape", "f32 ms", "bf16 ms", "×f32"
    );
    for (name, heads, n_q, n_k, d) in SHAPES {
        if !name.contains(&filter) {
            continue;
        }
        let q = Tensor::randn(0f32, 1.0, (heads, n_q, d), &device)?;
        let k = Tensor::randn(0f32, 1.0, (heads, n_k, d), &device)?;
        let v = Tensor::randn(0f32, 1.0, (heads, n_k, d), &device)?;
        let scale = 1.0 / (d as f64).sqrt();
        let time = |compute| {
            best_of(|| drop(attention(&q, &k, &v, scale, DEFAULT_SCORE_BUDGET, compute).unwrap()))
        };
        let (f32_time, bf16_time) = (time(Compute::F32), time(Compute::Bf16));
        println!(
            "{:<30} {:>9.2} {:>9.2} {:>7.2}",
            name,
            f32_time.as_secs_f64() * 1e3,
            bf16_time.as_secs_f64() * 1e3,
            f32_time.as_secs_f64() / bf16_time.as_secs_f64()
        );
    }
    Ok(())
}
