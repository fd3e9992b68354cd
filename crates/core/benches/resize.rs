//! Pillow-compatible resizing, A1111's resize modes and colour correction at 1024×1024.
//! Compare with `python3 tools/bench/resize_color.py` (Pillow 9.5 / A1111's stack).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use image::RgbImage;
use image::imageops::FilterType;
use loopback_core::imageops::color::ColorReference;
use loopback_core::imageops::resize::{lanczos, resize_image};
use loopback_core::settings::ResizeMode;

/// `tests/data/coffee.png` stretched to 1024×1024 (the benchmark input).
fn input() -> RgbImage {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/coffee.png");
    let img = image::open(path).expect("tests/data/coffee.png").to_rgb8();
    image::imageops::resize(&img, 1024, 1024, FilterType::Lanczos3)
}

fn benches(c: &mut Criterion) {
    let img = input();
    let mut g = c.benchmark_group("resize");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("lanczos 1024x1024->1536x1536", |b| {
        b.iter(|| lanczos(black_box(&img), 1536, 1536))
    });
    g.bench_function("lanczos 1024x1024->512x512", |b| {
        b.iter(|| lanczos(black_box(&img), 512, 512))
    });
    g.bench_function("crop-and-resize 1024x1024->1024x768", |b| {
        b.iter(|| resize_image(ResizeMode::CropAndResize, black_box(&img), 1024, 768))
    });
    g.bench_function("resize-and-fill 1024x1024->1024x768", |b| {
        b.iter(|| resize_image(ResizeMode::ResizeAndFill, black_box(&img), 1024, 768))
    });
    // The reference: the original photo, as A1111 keeps it for every loop.
    let reference = image::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/chelsea.png"
    ))
    .expect("tests/data/chelsea.png")
    .to_rgb8();
    let correction = ColorReference::new(&reference);
    g.bench_function("color-correction 1024x1024", |b| {
        b.iter(|| correction.apply(black_box(&img)))
    });
    g.finish();
}

criterion_group!(resize_benches, benches);
criterion_main!(resize_benches);
