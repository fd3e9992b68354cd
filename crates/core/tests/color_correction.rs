//! A1111 colour correction (OpenCV Lab, scikit-image histogram matching, blendmodes
//! luminosity) against the goldens written by `tools/fixtures/resize_color.py`
//! (`tests/fixtures/color/manifest.json`).

use crate::common;

use std::path::PathBuf;

use image::RgbImage;
use loopback_core::imageops::color::{
    ColorReference, correct_colors, lab_table_checksums, lab_to_rgb, luminosity_blend,
    match_histograms, rgb_to_lab,
};
use serde_json::Value;

/// Largest mean absolute difference accepted for a corrected image (levels).
const MAX_MEAN_DIFF: f64 = 1.5;

fn root() -> PathBuf {
    PathBuf::from(common::ROOT)
}

fn manifest() -> Value {
    let path = root().join("tests/fixtures/color/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// Opens a repo-relative image as RGB, cropped to `[x0, y0, x1, y1]` when given.
fn open(rel: &Value, crop: &Value) -> RgbImage {
    let path = root().join(rel.as_str().expect("path"));
    let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let img = match crop.as_array() {
        Some(b) => {
            let b: Vec<u32> = b.iter().map(|v| v.as_u64().expect("crop") as u32).collect();
            img.crop_imm(b[0], b[1], b[2] - b[0], b[3] - b[1])
        }
        None => img,
    };
    img.to_rgb8()
}

/// (max abs diff, mean abs diff, samples that differ).
fn compare(got: &RgbImage, want: &RgbImage) -> (u8, f64, usize) {
    assert_eq!(got.dimensions(), want.dimensions());
    let mut max = 0u8;
    let mut sum = 0u64;
    let mut differ = 0usize;
    for (&a, &b) in got.as_raw().iter().zip(want.as_raw()) {
        let d = a.abs_diff(b);
        max = max.max(d);
        sum += u64::from(d);
        differ += usize::from(d != 0);
    }
    (max, sum as f64 / got.as_raw().len() as f64, differ)
}

#[test]
fn lab_tables_have_opencv_checksums() {
    let manifest = manifest();
    let want = &manifest["table_checksums"];
    let got = lab_table_checksums();
    let names = ["G", "C", "IG", "YF", "AB"];
    for (name, value) in names.iter().zip(got) {
        println!("table {name}: sum {value}");
        assert_eq!(Some(value), want[name].as_i64(), "table {name}");
    }
}

#[test]
fn lab_conversions_match_opencv_exactly() {
    let manifest = manifest();
    let mut compared = 0;
    for case in manifest["lab"].as_array().expect("lab") {
        let input = open(&case["input"], &Value::Null);
        let want = open(&case["expected"], &Value::Null);
        let got = match case["op"].as_str() {
            Some("rgb2lab") => rgb_to_lab(&input),
            Some("lab2rgb") => lab_to_rgb(&input),
            op => panic!("unknown op {op:?}"),
        };
        let (max, mean, differ) = compare(&got, &want);
        println!(
            "{:20} max|diff| {max}  mean {mean:.4}  {differ} samples differ",
            case["name"].as_str().unwrap_or("")
        );
        assert_eq!(max, 0, "{}", case["name"]);
        compared += 1;
    }
    assert_eq!(compared, 4);
}

#[test]
fn correction_stages_match_python() {
    let manifest = manifest();
    let s = &manifest["stages"];
    let image = open(&s["image"], &s["image_crop"]);
    let reference = open(&s["reference"], &Value::Null);
    let lab = rgb_to_lab(&image);
    let matched = match_histograms(&lab, &rgb_to_lab(&reference));
    let colour = lab_to_rgb(&matched);
    for (name, got) in [("lab", &lab), ("matched", &matched), ("color", &colour)] {
        let want = open(&s[name], &Value::Null);
        let (max, mean, differ) = compare(got, &want);
        println!("stage {name:8} max|diff| {max}  mean {mean:.4}  {differ} samples differ");
        assert_eq!(max, 0, "stage {name}");
    }
    let blended = luminosity_blend(&colour, &image).expect("same size");
    let want = manifest["corrections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == s["name"]))
        .map(|c| open(&c["expected"], &Value::Null))
        .expect("final stage");
    assert_eq!(compare(&blended, &want).0, 0, "stage blend");
}

#[test]
fn corrections_match_a1111() {
    let manifest = manifest();
    let cases = manifest["corrections"].as_array().expect("corrections");
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let image = open(&case["image"], &case["image_crop"]);
        let reference = open(&case["reference"], &case["reference_crop"]);
        let got = ColorReference::new(&reference).apply(&image);
        assert_eq!(
            got,
            correct_colors(&image, &reference),
            "{name}: convenience function"
        );
        let want = open(&case["expected"], &Value::Null);
        let (max, mean, differ) = compare(&got, &want);
        compared += 1;
        println!(
            "{name:28} max|diff| {max:3}  mean {mean:.4}  {differ} of {} samples differ",
            want.as_raw().len()
        );
        if mean > MAX_MEAN_DIFF || max > 0 {
            failures.push(format!("{name}: max {max}, mean {mean:.4}"));
        }
    }
    println!("{compared} colour corrections compared");
    assert_eq!(compared, cases.len());
    assert!(compared >= 8);
    assert!(failures.is_empty(), "mismatches: {failures:#?}");
}

#[test]
fn comparison_detects_a_one_level_change() {
    let manifest = manifest();
    let case = &manifest["corrections"][0];
    let mut got = open(&case["expected"], &Value::Null);
    let want = got.clone();
    got.as_mut()[100] ^= 1;
    let (max, _, differ) = compare(&got, &want);
    assert_eq!((max, differ), (1, 1));
}

#[test]
fn empty_images_do_not_panic() {
    let empty = RgbImage::new(0, 0);
    let img = RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]));
    assert_eq!(correct_colors(&empty, &img).dimensions(), (0, 0));
    assert_eq!(correct_colors(&img, &empty).dimensions(), (3, 2));
    assert!(luminosity_blend(&img, &empty).is_none());
}

/// Exhaustive check over all 2^24 inputs, against raw dumps made with
/// `python3 tools/fixtures/resize_color.py --exhaustive DIR` (too large to commit); runs only
/// when `LAB_EXHAUSTIVE_DIR` names that directory.
#[test]
fn lab_exhaustive_when_dumps_present() {
    let Ok(dir) = std::env::var("LAB_EXHAUSTIVE_DIR") else {
        println!("LAB_EXHAUSTIVE_DIR not set: skipped");
        return;
    };
    let dir = PathBuf::from(dir);
    let all: Vec<u8> = (0..1u32 << 24)
        .flat_map(|v| [(v >> 16) as u8, (v >> 8) as u8, v as u8])
        .collect();
    let all = RgbImage::from_raw(4096, 4096, all).expect("4096x4096");
    for (file, got) in [
        ("rgb2lab.bin", rgb_to_lab(&all)),
        ("lab2rgb.bin", lab_to_rgb(&all)),
    ] {
        let want = std::fs::read(dir.join(file)).expect("dump");
        let want = RgbImage::from_raw(4096, 4096, want).expect("dump size");
        let (max, mean, differ) = compare(&got, &want);
        println!("{file}: max|diff| {max}  mean {mean:.6}  {differ} samples differ");
        assert_eq!(max, 0, "{file}");
    }
}
