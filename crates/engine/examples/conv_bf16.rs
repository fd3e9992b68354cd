//! Micro benchmark of the CPU convolution layers on the UNet's shapes at 512² (batch 2): the
//! f32 layer (Winograd or im2col) against the bf16 layer on the path this CPU has, the time
//! of one `forward` on all of candle's threads (best of several runs; other processes share
//! the cores).
//!
//! `cargo run --release -p loopback-engine --example conv_bf16 [-- FILTER]` (a substring of the
//! layer names) runs a subset.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use loopback_engine::kernels::compute::Compute;
use loopback_engine::kernels::conv::Conv2d;
use std::collections::HashMap;

mod common;

use common::best_of;

/// A convolution of the UNet: name, c_in, c_out, kernel, stride, input side.
const LAYERS: [(&str, usize, usize, usize, usize, usize); 8] = [
    ("3×3 64² 320→320", 320, 320, 3, 1, 64),
    ("3×3 32² 640→640", 640, 640, 3, 1, 32),
    ("3×3 16² 1280→1280", 1280, 1280, 3, 1, 16),
    ("3×3 8² 1280→1280", 1280, 1280, 3, 1, 8),
    ("3×3 s2 64²→32² 320", 320, 320, 3, 2, 64),
    ("1×1 64² 320→320", 320, 320, 1, 1, 64),
    ("1×1 32² 1280→640", 1280, 640, 1, 1, 32),
    ("3×3 64² 640→320", 640, 320, 3, 1, 64),
];

fn main() -> candle_core::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let device = Device::Cpu;
    println!(
        "bf16 path: {}; candle threads: {}",
        loopback_engine::kernels::bf16::isa(),
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>7}",
        "layer", "f32 ms", "bf16 ms", "GFLOP/s", "×f32"
    );
    for (name, cin, cout, k, s, side) in LAYERS {
        if !name.contains(&filter) {
            continue;
        }
        let weights = HashMap::from([
            (
                "weight".to_string(),
                (Tensor::randn(0f32, 0.05, (cout, cin, k, k), &device)?),
            ),
            (
                "bias".to_string(),
                Tensor::randn(0f32, 0.05, cout, &device)?,
            ),
        ]);
        let vb = VarBuilder::from_tensors(weights, DType::F32, &device);
        let pad = k / 2;
        let f32_layer = Conv2d::with_compute(vb.clone(), (cin, cout), k, s, pad, Compute::F32)?;
        let bf16_layer = Conv2d::with_compute(vb, (cin, cout), k, s, pad, Compute::Bf16)?;
        let xs = Tensor::randn(0f32, 1.0, (2, cin, side, side), &device)?;
        let time = |layer: &Conv2d| best_of(|| drop(layer.forward_plus(&xs, None).unwrap()));
        let (f32_time, bf16_time) = (time(&f32_layer), time(&bf16_layer));
        let out_side = side / s;
        let flops = 2.0 * (2 * cout * out_side * out_side * cin * k * k) as f64;
        println!(
            "{:<24} {:>9.2} {:>9.2} {:>9.1} {:>7.2}",
            name,
            f32_time.as_secs_f64() * 1e3,
            bf16_time.as_secs_f64() * 1e3,
            flops / bf16_time.as_secs_f64() / 1e9,
            f32_time.as_secs_f64() / bf16_time.as_secs_f64()
        );
    }
    Ok(())
}
