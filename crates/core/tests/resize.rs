//! Pillow 9.5 LANCZOS / box resizing and A1111's resize modes against the goldens written by
//! `tools/fixtures/resize_color.py` (`tests/fixtures/resize/manifest.json`).

use crate::common;

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, Pixel, RgbImage};
use loopback_core::Error;
use loopback_core::imageops::resize::{Filter, lanczos, resize_box, resize_image};
use loopback_core::settings::ResizeMode;
use serde_json::Value;

/// Minimum PSNR accepted for any case (dB).
const MIN_PSNR: f64 = 45.0;
/// Largest per-sample difference accepted: the implementation is bit-exact with Pillow 9.5.
const MAX_ABS_DIFF: u8 = 0;

fn root() -> PathBuf {
    PathBuf::from(common::ROOT)
}

fn manifest() -> Value {
    let path = root().join("tests/fixtures/resize/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn open(rel: &str) -> DynamicImage {
    let path = root().join(rel);
    image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The case's input, cropped as the manifest says.
fn input(case: &Value) -> DynamicImage {
    let img = open(case["input"].as_str().expect("input"));
    match case["crop"].as_array() {
        Some(b) => {
            let b: Vec<u32> = b.iter().map(|v| v.as_u64().expect("crop") as u32).collect();
            img.crop_imm(b[0], b[1], b[2] - b[0], b[3] - b[1])
        }
        None => img,
    }
}

fn size(case: &Value) -> (u32, u32) {
    (
        case["width"].as_u64().expect("width") as u32,
        case["height"].as_u64().expect("height") as u32,
    )
}

/// Runs a `lanczos` or `resize_box` case on one pixel type.
fn run_generic<P: Pixel<Subpixel = u8>>(case: &Value, img: &ImageBuffer<P, Vec<u8>>) -> Vec<u8> {
    let (w, h) = size(case);
    let out = match case["op"].as_str() {
        Some("lanczos") => lanczos(img, w, h),
        Some("resize_box") => {
            let b: Vec<f32> = case["box"]
                .as_array()
                .expect("box")
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let filter = match case["filter"].as_str() {
                Some("bicubic") => Filter::Bicubic,
                _ => Filter::Lanczos,
            };
            resize_box(img, w, h, [b[0], b[1], b[2], b[3]], filter)
        }
        op => panic!("unknown op {op:?}"),
    };
    let out = out.unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    assert_eq!(out.dimensions(), (w, h));
    out.into_raw()
}

fn mode(index: u64) -> ResizeMode {
    match index {
        0 => ResizeMode::JustResize,
        1 => ResizeMode::CropAndResize,
        2 => ResizeMode::ResizeAndFill,
        _ => panic!("resize mode {index}"),
    }
}

/// Runs a case; returns the result's samples and the expected samples.
fn run(case: &Value) -> (Vec<u8>, Vec<u8>) {
    let img = input(case);
    let expected = open(case["expected"].as_str().expect("expected"));
    match (case["op"].as_str(), case["mode"].as_str()) {
        (Some("resize_image"), _) => {
            let (w, h) = size(case);
            let m = mode(case["resize_mode"].as_u64().expect("resize_mode"));
            let out: RgbImage = resize_image(m, &img.to_rgb8(), w, h)
                .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
            (out.into_raw(), expected.to_rgb8().into_raw())
        }
        (_, Some("RGB")) => (
            run_generic(case, &img.to_rgb8()),
            expected.to_rgb8().into_raw(),
        ),
        (_, Some("RGBA")) => (
            run_generic(case, &img.to_rgba8()),
            expected.to_rgba8().into_raw(),
        ),
        (_, Some("L")) => (
            run_generic(case, &img.to_luma8()),
            expected.to_luma8().into_raw(),
        ),
        (_, Some("LA")) => (
            run_generic(case, &img.to_luma_alpha8()),
            expected.to_luma_alpha8().into_raw(),
        ),
        other => panic!("unsupported case {other:?}"),
    }
}

/// (max abs diff, PSNR in dB, samples that differ).
fn compare(got: &[u8], want: &[u8]) -> (u8, f64, usize) {
    assert_eq!(got.len(), want.len(), "sample count");
    let mut max = 0u8;
    let mut sq = 0f64;
    let mut differ = 0usize;
    for (&a, &b) in got.iter().zip(want) {
        let d = a.abs_diff(b);
        max = max.max(d);
        sq += f64::from(d) * f64::from(d);
        differ += usize::from(d != 0);
    }
    let mse = sq / got.len() as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    };
    (max, psnr, differ)
}

#[test]
fn resize_matches_pillow_goldens() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let (got, want) = run(case);
        let (max, psnr, differ) = compare(&got, &want);
        compared += 1;
        println!(
            "{name:34} {:12} max|diff| {max:3}  PSNR {psnr:6.1} dB  {differ} of {} samples differ",
            case["op"].as_str().unwrap_or(""),
            want.len()
        );
        if max > MAX_ABS_DIFF || psnr < MIN_PSNR {
            failures.push(format!("{name}: max {max}, PSNR {psnr:.1}"));
        }
    }
    println!("{compared} resize cases compared");
    assert_eq!(compared, cases.len());
    assert!(compared >= 60, "too few cases: {compared}");
    assert!(failures.is_empty(), "mismatches: {failures:#?}");
}

#[test]
fn every_resize_mode_and_fill_branch_is_covered() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["name"].as_str()).collect();
    for needle in [
        "mode0_",
        "mode1_coffee_wider",
        "mode1_coffee_taller",
        "mode2_coffee_wider",
        "mode2_coffee_taller",
    ] {
        assert!(names.iter().any(|n| n.starts_with(needle)), "{needle}");
    }
    assert!(names.contains(&"mode2_coffee_fill_height_zero"));
    assert!(names.contains(&"mode2_coffee_fill_width_zero"));
}

#[test]
fn comparison_detects_a_one_level_change() {
    let manifest = manifest();
    let case = &manifest["cases"][0];
    let (mut got, want) = run(case);
    got[17] ^= 1;
    let (max, _, differ) = compare(&got, &want);
    assert_eq!((max, differ), (1, 1));
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let manifest = manifest();
    let img = open("tests/data/coffee.png").to_rgb8();
    let rgba = open("tests/data/logo.png").to_rgba8();
    let mut checked = 0;
    for e in manifest["errors"].as_array().expect("errors") {
        let (w, h) = size(e);
        assert!(matches!(lanczos(&img, w, h), Err(Error::ImageOp(_))), "{e}");
        assert!(
            matches!(lanczos(&rgba, w, h), Err(Error::ImageOp(_))),
            "{e}"
        );
        for m in [
            ResizeMode::JustResize,
            ResizeMode::CropAndResize,
            ResizeMode::ResizeAndFill,
        ] {
            assert!(
                matches!(resize_image(m, &img, w, h), Err(Error::ImageOp(_))),
                "{e} {m:?}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
    let empty = RgbImage::new(0, 0);
    assert!(lanczos(&empty, 4, 4).is_err());
    assert!(resize_image(ResizeMode::CropAndResize, &empty, 4, 4).is_err());
    for b in [
        [0.0, 0.0, 601.0, 400.0],
        [-0.5, 0.0, 10.0, 10.0],
        [10.0, 10.0, 5.0, 20.0],
        [0.0, f32::INFINITY, 1.0, 1.0],
    ] {
        assert!(
            matches!(
                resize_box(&img, 8, 8, b, Filter::Lanczos),
                Err(Error::ImageOp(_))
            ),
            "{b:?}"
        );
    }
}

#[test]
fn same_size_is_a_copy() {
    let img = open("tests/data/chelsea.png").to_rgb8();
    let out = lanczos(&img, img.width(), img.height()).expect("copy");
    assert_eq!(out, img);
    let logo = open("tests/data/logo.png").to_rgba8();
    assert_eq!(lanczos(&logo, 500, 500).expect("copy"), logo);
    assert!(Path::new(&root().join("tests/fixtures/resize")).is_dir());
}
