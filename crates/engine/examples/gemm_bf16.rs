//! Micro benchmark of the CPU matrix products: `gemm_f32` against the bf16 products on every
//! path this CPU has, unpacked and with the right operand packed beforehand, on the shapes of
//! the UNet at 512² (im2col convolutions, linear layers, attention), on one thread and on all
//! of candle's.
//!
//! `cargo run --release -p loopback-engine --example gemm_bf16 [-- SHAPE [PATH [THREADS]]]`
//! (substrings of the shape and path names, or a shape `MxKxN`; a thread count) runs a subset; the best of
//! several runs is printed (other processes share the cores).

use loopback_engine::kernels::bf16::{
    BenchPath, Bf16Isa, Lhs, PackedLhs, PackedRhs, Rhs, bench_entry, isa,
};
mod common;

use common::best_of;

/// A product to time: m × k times k × n with the operands' strides.
struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    /// (row stride, column stride) of lhs and rhs.
    lhs: (usize, usize),
    rhs: (usize, usize),
}

fn shapes() -> Vec<Shape> {
    // Weights stored [n][k] (as candle's linear and conv weights): rhs_rs = 1, rhs_cs = k.
    let weights = |name, m, k, n| Shape {
        name,
        m,
        k,
        n,
        lhs: (k, 1),
        rhs: (1, k),
    };
    let kernel_patches = |name, m, k, n| Shape {
        name,
        m,
        k,
        n,
        lhs: (k, 1),
        rhs: (n, 1),
    };
    vec![
        weights("conv im2col 64² 320←320·9", 4096, 2880, 320),
        weights("conv im2col 32² 1280←1280·9", 1024, 11520, 1280),
        // The same convolutions as kernel · patches (the kernel as stored, the patch matrix
        // with rows along the pixels), as the bf16 convolutions run.
        kernel_patches("conv kernel·patches 64² 320←320·9", 320, 2880, 4096),
        kernel_patches("conv kernel·patches 32² 1280←1280·9", 1280, 11520, 1024),
        weights("linear 8192×320→320", 8192, 320, 320),
        weights("linear 4096×1280→5120", 4096, 1280, 5120),
        // Attention with 8 heads of 40 in rows of 320: Q·Kᵀ, then P·V.
        Shape {
            name: "attention Q·Kᵀ (head of 40)",
            m: 4096,
            k: 40,
            n: 4096,
            lhs: (320, 1),
            rhs: (1, 320),
        },
        Shape {
            name: "attention P·V (head of 40)",
            m: 4096,
            k: 4096,
            n: 40,
            lhs: (4096, 1),
            rhs: (320, 1),
        },
    ]
}

/// Length of a strided matrix's storage.
fn extent(rows: usize, cols: usize, (rs, cs): (usize, usize)) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.first().cloned().unwrap_or_default();
    let path_filter = args.get(1).cloned().unwrap_or_default();
    let only_threads: Option<usize> = args.get(2).and_then(|t| t.parse().ok());
    let threads = candle_core::utils::get_num_threads();
    let paths: Vec<Bf16Isa> = Bf16Isa::ALL.into_iter().filter(|i| i.available()).collect();
    println!(
        "bf16 paths on this CPU: {} (default {}); candle threads: {threads}",
        paths
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", "),
        isa()
    );
    println!(
        "{:<30} {:>3} {:<24} {:>9} {:>9} {:>6}",
        "shape", "thr", "path", "ms", "GFLOP/s", "×f32"
    );
    // A custom shape: M×K×N (contiguous operands, weights as [n][k]).
    let custom: Vec<usize> = filter.split('x').filter_map(|d| d.parse().ok()).collect();
    let shapes = if custom.len() == 3 {
        let (m, k, n) = (custom[0], custom[1], custom[2]);
        vec![Shape {
            name: "custom",
            m,
            k,
            n,
            lhs: (k, 1),
            rhs: (1, k),
        }]
    } else {
        shapes()
            .into_iter()
            .filter(|s| s.name.contains(&filter))
            .collect()
    };
    for shape in shapes {
        let Shape { m, k, n, .. } = shape;
        let mut state = 1u32;
        let mut values = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1 << 24) as f32 - 0.5
                })
                .collect()
        };
        let lhs = values(extent(m, k, shape.lhs));
        let rhs = values(extent(k, n, shape.rhs));
        let lhs = (&lhs[..], shape.lhs.0, shape.lhs.1);
        let rhs = (&rhs[..], shape.rhs.0, shape.rhs.1);
        let mut dst = vec![0f32; m * n];
        let packed = PackedRhs::new(k, n, rhs);
        let packed_lhs = PackedLhs::new(m, k, lhs);
        let flops = 2.0 * (m * n * k) as f64;
        let mut thread_counts = vec![1];
        if threads > 1 {
            thread_counts.push(threads);
        }
        for &t in thread_counts
            .iter()
            .filter(|&&t| only_threads.is_none_or(|o| o == t))
        {
            let parallel = t > 1;
            let mut f32_rate = 0.0;
            let mut runs = vec![("gemm_f32".to_string(), BenchPath::F32)];
            for &p in &paths {
                let operands = [
                    ("", Lhs::View(lhs), Rhs::View(rhs)),
                    ("_packed", Lhs::View(lhs), Rhs::Packed(&packed)),
                    ("_lhs_packed", Lhs::Packed(&packed_lhs), Rhs::View(rhs)),
                ];
                for (suffix, a, b) in operands {
                    runs.push((format!("gemm_bf16{suffix} {p}"), BenchPath::Bf16(p, a, b)));
                }
            }
            for (label, path) in runs {
                let is_f32 = matches!(path, BenchPath::F32);
                if !label.contains(&path_filter) && !is_f32 {
                    continue;
                }
                let time = best_of(|| bench_entry(path, (m, n, k), &mut dst, (lhs, rhs), parallel));
                let rate = flops / time.as_secs_f64() / 1e9;
                if is_f32 {
                    f32_rate = rate;
                }
                println!(
                    "{:<30} {:>3} {:<24} {:>9.2} {:>9.1} {:>6.2}",
                    shape.name,
                    t,
                    label,
                    time.as_secs_f64() * 1e3,
                    rate,
                    rate / f32_rate
                );
            }
        }
        println!(
            "{:<30} packed rhs: {:.1} MB (f32: {:.1} MB)",
            "",
            packed.bytes() as f64 / 1e6,
            (4 * k * n) as f64 / 1e6
        );
    }
}
