//! Timings of the finishing ops on a 1024×1024 RGB image, to compare with Pillow's
//! (`tools/bench/pillow_ops.py`, same op names).
//!
//! Run with `cargo bench -p loopback-core --bench image_ops`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use image::RgbImage;
use image::imageops::{FilterType, resize};
use loopback_core::imageops::enhance::{brightness, color, contrast, sharpness};
use loopback_core::imageops::filter::{Kernel, filter};
use loopback_core::imageops::finish::{Finishing, apply};
use loopback_core::settings::FilterLevel;

/// The benchmark input: `tests/data/coffee.png` resized to 1024×1024 with Lanczos3.
fn input() -> RgbImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/coffee.png");
    let photo = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    resize(&photo, 1024, 1024, FilterType::Lanczos3)
}

/// The full chain timed as "finish chain" (the same settings in the Pillow script).
fn chain() -> Finishing {
    Finishing {
        sharpness: 1.5,
        brightness: 1.2,
        color: 1.3,
        contrast: 1.1,
        detail: FilterLevel::Low,
        smooth: FilterLevel::Low,
        blur: FilterLevel::Low,
        contour: true,
    }
}

fn bench_filters(c: &mut Criterion) {
    let img = input();
    for kernel in [
        Kernel::Detail,
        Kernel::Smooth,
        Kernel::Blur,
        Kernel::Contour,
        Kernel::Sharpen,
        Kernel::EdgeEnhance,
        Kernel::SmoothMore,
    ] {
        c.bench_function(kernel.pillow_name(), |b| {
            b.iter(|| filter(black_box(&img), kernel))
        });
    }
}

fn bench_enhancements(c: &mut Criterion) {
    let img = input();
    type Enhance = fn(&RgbImage, f64) -> RgbImage;
    let cases: [(&str, Enhance, f64); 4] = [
        ("Sharpness 1.5", sharpness, 1.5),
        ("Brightness 1.2", brightness, 1.2),
        ("Color 1.3", color, 1.3),
        ("Contrast 1.1", contrast, 1.1),
    ];
    for (name, op, factor) in cases {
        c.bench_function(name, |b| b.iter(|| op(black_box(&img), factor)));
    }
    let settings = chain();
    c.bench_function("finish chain", |b| {
        b.iter(|| apply(black_box(&img), &settings))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_filters, bench_enhancements
}
criterion_main!(benches);
