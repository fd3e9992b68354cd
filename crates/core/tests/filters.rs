//! Parity of the Pillow-exact filters, enhancements and finishing chain with Pillow 9.5.0.
//!
//! The golden outputs come from `tools/fixtures/filters.py`; `manifest.json` lists every case.
//! Each case applies some ops to one input and stores the results stacked vertically, one tile
//! per op. Every tile must equal Pillow's (the spec allows 1 level; see [`BIT_EXACT`]); the
//! actual maximum difference is printed per op (`cargo test -p loopback-core --test core filters -- --nocapture`).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{ImageBuffer, Pixel, Rgb, RgbImage, Rgba, RgbaImage};
use loopback_core::imageops::enhance::{brightness, color, contrast, sharpness};
use loopback_core::imageops::filter::{Kernel, filter};
use loopback_core::imageops::finish::{Finishing, apply};
use loopback_core::settings::FilterLevel;
use proptest::prelude::*;
use serde::Deserialize;

/// The largest difference per channel from Pillow that the spec accepts.
const TOLERANCE: u8 = 1;

/// Whether every byte must equal Pillow's. The spec tolerates 1 level, but the implementation
/// reproduces Pillow's f32 arithmetic bit for bit; holding it to that catches regressions
/// (e.g. f64 instead of f32 in a blend) that stay within 1 level.
const BIT_EXACT: bool = true;

#[derive(Debug, Deserialize)]
struct Manifest {
    pillow: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    input: String,
    mode: String,
    output: String,
    ops: Vec<Op>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Op {
    Filter { filter: String, passes: usize },
    Enhance { enhance: String, factor: String },
    Finish { finish: FinishSpec },
}

#[derive(Debug, Deserialize)]
struct FinishSpec {
    sharpness: String,
    brightness: String,
    color: String,
    contrast: String,
    detail: FilterLevel,
    smooth: FilterLevel,
    blur: FilterLevel,
    contour: bool,
}

/// The op families, each checked by its own test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Filter,
    Enhance,
    Finish,
}

impl Op {
    fn family(&self) -> Family {
        match self {
            Op::Filter { .. } => Family::Filter,
            Op::Enhance { .. } => Family::Enhance,
            Op::Finish { .. } => Family::Finish,
        }
    }

    /// The key the maximum difference is reported under.
    fn label(&self, mode: &str) -> String {
        match self {
            Op::Filter { filter, .. } => format!("{filter} {mode}"),
            Op::Enhance { enhance, .. } => format!("{enhance} {mode}"),
            Op::Finish { .. } => format!("finish {mode}"),
        }
    }

    /// Applies the op with this crate's implementation.
    fn run<P: Pixel<Subpixel = u8>>(
        &self,
        img: &ImageBuffer<P, Vec<u8>>,
    ) -> ImageBuffer<P, Vec<u8>> {
        match self {
            Op::Filter {
                filter: name,
                passes,
            } => {
                let kernel = Kernel::from_pillow_name(name).expect("known kernel");
                (0..*passes).fold(img.clone(), |im, _| filter(&im, kernel))
            }
            Op::Enhance { enhance, factor } => {
                let f = parse_factor(factor);
                match enhance.as_str() {
                    "sharpness" => sharpness(img, f),
                    "brightness" => brightness(img, f),
                    "color" => color(img, f),
                    "contrast" => contrast(img, f),
                    other => panic!("unknown enhancer {other}"),
                }
            }
            Op::Finish { finish } => apply(img, &finish.settings()),
        }
    }
}

impl FinishSpec {
    fn settings(&self) -> Finishing {
        Finishing {
            sharpness: parse_factor(&self.sharpness),
            brightness: parse_factor(&self.brightness),
            color: parse_factor(&self.color),
            contrast: parse_factor(&self.contrast),
            detail: self.detail,
            smooth: self.smooth,
            blur: self.blur,
            contour: self.contour,
        }
    }
}

fn parse_factor(text: &str) -> f64 {
    text.parse().expect("factor is a decimal number")
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(common::ROOT).join(rel)
}

fn manifest() -> Manifest {
    let path = repo_path("tests/fixtures/filters/manifest.json");
    let text =
        std::fs::read_to_string(&path).expect("manifest.json (run tools/fixtures/filters.py)");
    serde_json::from_str(&text).expect("manifest parses")
}

/// The result of comparing one family: tiles compared and the largest difference per label.
#[derive(Debug, Default)]
struct Report {
    tiles: usize,
    /// Per label: the largest difference and the number of bytes that differ.
    max_diff: BTreeMap<String, (u8, usize)>,
    failures: Vec<String>,
}

impl Report {
    fn record(&mut self, case: &str, index: usize, label: String, diff: Diff) {
        self.tiles += 1;
        let entry = self.max_diff.entry(label.clone()).or_default();
        entry.0 = entry.0.max(diff.max);
        entry.1 += diff.count;
        if diff.max > TOLERANCE || (BIT_EXACT && diff.count > 0) {
            self.failures.push(format!(
                "{case} tile {index} ({label}): max diff {}, {} bytes differ",
                diff.max, diff.count
            ));
        }
    }

    fn print(&self, family: Family) {
        eprintln!("{family:?}: {} tiles compared", self.tiles);
        for (label, (max, count)) in &self.max_diff {
            eprintln!("  {label:24} max |diff| = {max}, bytes differing: {count}");
        }
    }
}

/// Runs every tile of `family` in the manifest and compares it with Pillow's output.
fn check_family(family: Family) -> Report {
    let manifest = manifest();
    assert!(
        manifest.pillow.starts_with("9.5"),
        "fixtures from Pillow {}",
        manifest.pillow
    );
    let mut report = Report::default();
    for case in &manifest.cases {
        if !case.ops.iter().any(|op| op.family() == family) {
            continue;
        }
        let input = image::open(repo_path(&case.input)).expect("input image");
        let output = image::open(repo_path(&case.output)).expect("output image");
        match case.mode.as_str() {
            "RGB" => check_case(
                case,
                family,
                &input.to_rgb8(),
                &output.to_rgb8(),
                &mut report,
            ),
            "RGBA" => check_case(
                case,
                family,
                &input.to_rgba8(),
                &output.to_rgba8(),
                &mut report,
            ),
            other => panic!("{}: unexpected mode {other}", case.name),
        }
    }
    report.print(family);
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    report
}

fn check_case<P: Pixel<Subpixel = u8>>(
    case: &Case,
    family: Family,
    input: &ImageBuffer<P, Vec<u8>>,
    sheet: &ImageBuffer<P, Vec<u8>>,
    report: &mut Report,
) {
    let tile_len = input.as_raw().len();
    assert_eq!(sheet.width(), input.width(), "{}", case.name);
    assert_eq!(
        sheet.as_raw().len(),
        tile_len * case.ops.len(),
        "{}",
        case.name
    );
    for (index, op) in case.ops.iter().enumerate() {
        if op.family() != family {
            continue;
        }
        let ours = op.run(input);
        let theirs = &sheet.as_raw()[index * tile_len..(index + 1) * tile_len];
        report.record(
            &case.name,
            index,
            op.label(&case.mode),
            diff(ours.as_raw(), theirs),
        );
    }
}

/// How far one tile is from Pillow's.
#[derive(Debug, Clone, Copy)]
struct Diff {
    max: u8,
    count: usize,
}

fn diff(a: &[u8], b: &[u8]) -> Diff {
    assert_eq!(a.len(), b.len());
    let diffs = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y));
    Diff {
        max: diffs.clone().max().unwrap_or(0),
        count: diffs.filter(|d| *d > 0).count(),
    }
}

#[test]
fn filters_match_pillow() {
    let report = check_family(Family::Filter);
    // 7 kernels × 3 levels on each of 8 photo/noise inputs and 18 tiny ones.
    assert_eq!(report.tiles, 7 * 3 * 26);
    assert_eq!(report.max_diff.len(), 14, "every kernel on RGB and RGBA");
}

#[test]
fn enhancements_match_pillow() {
    let report = check_family(Family::Enhance);
    // (191 sweep factors + 4 edge factors) × 4 enhancers × RGB/RGBA, plus the extra cases.
    let sweep = 195 * 4 * 2;
    assert_eq!(report.tiles, sweep + 4 * 8 + 4 * 4 + 2);
    assert_eq!(report.max_diff.len(), 8, "every enhancer on RGB and RGBA");
}

#[test]
fn finishing_chains_match_pillow() {
    let report = check_family(Family::Finish);
    assert_eq!(report.tiles, 3 + 3);
    assert_eq!(report.max_diff.len(), 2, "RGB and RGBA chains");
}

#[test]
fn every_slider_factor_is_swept() {
    let manifest = manifest();
    for enhancer in ["sharpness", "brightness", "color", "contrast"] {
        for mode in ["RGB", "RGBA"] {
            let factors: Vec<&str> = manifest
                .cases
                .iter()
                .filter(|c| c.mode == mode && c.name.starts_with("sweep_"))
                .flat_map(|c| &c.ops)
                .filter_map(|op| match op {
                    Op::Enhance { enhance, factor } if enhance == enhancer => Some(factor.as_str()),
                    _ => None,
                })
                .collect();
            for k in 10..=200 {
                let want = format!("{}", f64::from(k) / 100.0);
                let want = if want.contains('.') {
                    want
                } else {
                    format!("{want}.0")
                };
                assert!(
                    factors.contains(&want.as_str()),
                    "{enhancer} {mode} lacks {want}"
                );
            }
        }
    }
}

/// A direct transcription of the spec's arithmetic, one pixel at a time, as a reference for
/// the optimised kernels.
fn reference_filter<P: Pixel<Subpixel = u8>>(
    img: &ImageBuffer<P, Vec<u8>>,
    kernel: Kernel,
) -> ImageBuffer<P, Vec<u8>> {
    let spec = kernel.spec();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let size = spec.size;
    if w < size || h < size {
        return img.clone();
    }
    let r = size / 2;
    let c = usize::from(P::CHANNEL_COUNT);
    let src = img.as_raw();
    let mut out = img.clone();
    let k: Vec<f32> = spec
        .coefficients
        .iter()
        .map(|&v| v as f32 / spec.scale as f32)
        .collect();
    let start = (f64::from(spec.offset) + 0.5) as f32;
    for y in r..h - r {
        for x in r..w - r {
            for ch in 0..c {
                let mut ss = start;
                for i in 0..size {
                    let yy = y + r - i;
                    let mut t = 0.0f32;
                    for j in 0..size {
                        let p = f32::from(src[(yy * w + x + j - r) * c + ch]);
                        t = if j == 0 {
                            p * k[i * size]
                        } else {
                            t + p * k[i * size + j]
                        };
                    }
                    ss += t;
                }
                out.as_mut()[(y * w + x) * c + ch] = ss.clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

fn kernel_strategy() -> impl Strategy<Value = Kernel> {
    prop::sample::select(Kernel::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn filter_equals_reference_rgb(
        w in 1u32..40, h in 1u32..24, seed in any::<u64>(), kernel in kernel_strategy()
    ) {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb(noise3(seed, x, y)));
        prop_assert_eq!(filter(&img, kernel), reference_filter(&img, kernel));
    }

    #[test]
    fn filter_equals_reference_rgba(
        w in 1u32..40, h in 1u32..24, seed in any::<u64>(), kernel in kernel_strategy()
    ) {
        let img = RgbaImage::from_fn(w, h, |x, y| {
            let [r, g, b] = noise3(seed, x, y);
            Rgba([r, g, b, noise3(seed ^ 0x5555, y, x)[1]])
        });
        prop_assert_eq!(filter(&img, kernel), reference_filter(&img, kernel));
    }
}

/// Three pseudo-random bytes for pixel (x, y), with frequent 0 and 255.
fn noise3(seed: u64, x: u32, y: u32) -> [u8; 3] {
    let mut v = seed ^ (u64::from(x) << 32 | u64::from(y)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    v ^= v >> 29;
    v = v.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    v ^= v >> 32;
    let byte = |s: u32| match (v >> s) & 0xF {
        0 => 0,
        1 => 255,
        _ => (v >> (s + 4)) as u8,
    };
    [byte(0), byte(16), byte(32)]
}
