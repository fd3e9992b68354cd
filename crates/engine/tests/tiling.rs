//! Tiled diffusion (MultiDiffusion): one tile covering the image is exactly the untiled
//! result; tiled loops match an independent Python reference of the same algorithm
//! (`tools/parity/make_tiled_parity.py`, `tests/fixtures/tiled-parity/`) within 1 level;
//! no seam along the tile borders (gradient energy).

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{DType, Device};
use image::RgbImage;
use loopback_engine::model::SdModel;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, img2img};
use loopback_engine::run::tiling::TileSpec;
use serde_json::Value;

use crate::common::ROOT;

fn params(tiling: Option<TileSpec>) -> Img2ImgParams {
    crate::common::reference_params(tiling)
}

fn run(model: &SdModel, text: &TextAndSchedule, input: &RgbImage, p: &Img2ImgParams) -> RgbImage {
    img2img(model, text, input, p, &mut |_| ControlFlow::Continue(()))
        .unwrap()
        .unwrap()
}

fn tiny() -> (SdModel, TextAndSchedule) {
    let dir = Path::new(ROOT).join("tests/fixtures/tiny-sd");
    (
        SdModel::load(&dir, &Device::Cpu, DType::F32).unwrap(),
        TextAndSchedule::load(&dir).unwrap(),
    )
}

#[test]
fn one_tile_covering_the_image_is_exactly_untiled() {
    let (model, text) = tiny();
    let input = image::open(Path::new(ROOT).join("tests/fixtures/parity/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    let untiled = run(&model, &text, &input, &params(None));
    let spec = TileSpec {
        tile: 8,
        overlap: 2,
        offset: 3,
    };
    assert_eq!(run(&model, &text, &input, &params(Some(spec))), untiled);
    // Real tiles change the result (each tile sees less of the image).
    let small = TileSpec {
        tile: 4,
        overlap: 2,
        offset: 0,
    };
    assert_ne!(run(&model, &text, &input, &params(Some(small))), untiled);
}

#[test]
fn tiled_loops_match_the_reference() {
    let dir = Path::new(ROOT).join("tests/fixtures/tiled-parity");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let (model, text) = tiny();
    let input = image::open(dir.join("input_96x64.png")).unwrap().to_rgb8();
    let mut worst = 0u8;
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tiling = case["tile"].as_u64().map(|tile| TileSpec {
            tile: tile as usize,
            overlap: case["overlap"].as_u64().unwrap_or(0) as usize,
            offset: case["offset"].as_u64().unwrap_or(0) as usize,
        });
        let out = run(&model, &text, &input, &params(tiling));
        let reference =
            std::fs::read(dir.join(case["files"]["out_u8"]["file"].as_str().unwrap())).unwrap();
        let diff = crate::common::max_level_diff(out.as_raw(), &reference);
        worst = worst.max(diff);
        assert!(diff <= 1, "{name}: differs by {diff} levels");
    }
    eprintln!("tiled parity: images within {worst} level(s)");
}

/// The mean absolute difference between neighbouring pixels across each given column
/// boundary (between `x − 1` and `x`) and across rows likewise, over all channels.
fn edge_energy(img: &RgbImage, cols: &[u32], rows: &[u32]) -> f64 {
    let (w, h) = img.dimensions();
    let mut sum = 0.0;
    let mut n = 0usize;
    let diff = |a: &image::Rgb<u8>, b: &image::Rgb<u8>| -> f64 {
        (0..3).map(|c| f64::from(a[c].abs_diff(b[c]))).sum()
    };
    for &x in cols.iter().filter(|&&x| x > 0 && x < w) {
        for y in 0..h {
            sum += diff(img.get_pixel(x - 1, y), img.get_pixel(x, y));
            n += 3;
        }
    }
    for &y in rows.iter().filter(|&&y| y > 0 && y < h) {
        for x in 0..w {
            sum += diff(img.get_pixel(x, y - 1), img.get_pixel(x, y));
            n += 3;
        }
    }
    sum / n.max(1) as f64
}

/// No seams: along the tile borders (where a tile's crop begins or ends) the image changes
/// no more than it does anywhere else, measured as the gradient energy across the border
/// columns and rows against that across every column and row.
#[test]
fn tile_borders_leave_no_seams() {
    let dir = Path::new(ROOT).join("tests/fixtures/tiled-parity");
    let (model, text) = tiny();
    let input = image::open(dir.join("input_96x64.png")).unwrap().to_rgb8();
    let ratio = |spec: TileSpec| seam_ratio(&model, &text, &input, spec);
    let blended = ratio(TileSpec {
        tile: 6,
        overlap: 2,
        offset: 1,
    });
    // The measure sees seams: tiles that only abut (no overlap to blend over) leave them.
    let abutting = ratio(TileSpec {
        tile: 4,
        overlap: 0,
        offset: 0,
    });
    eprintln!(
        "seam energy / energy everywhere: blended {blended:.2}, abutting tiles {abutting:.2}"
    );
    assert!(blended <= 1.05, "{blended}");
    assert!(abutting > 1.2 * blended, "{abutting} vs {blended}");
}

/// The gradient energy across `spec`'s tile borders over that across every column and row.
fn seam_ratio(model: &SdModel, text: &TextAndSchedule, input: &RgbImage, spec: TileSpec) -> f64 {
    let out = run(model, text, input, &params(Some(spec)));
    let (w, h) = out.dimensions();
    let borders = |len: u32| -> Vec<u32> {
        let (starts, tile) = loopback_engine::run::tiling::starts(len as usize / 8, &spec);
        let mut at: Vec<u32> = starts
            .iter()
            .flat_map(|&s| [s * 8, (s + tile) * 8])
            .map(|p| p as u32)
            .filter(|&p| p > 0 && p < len)
            .collect();
        at.sort_unstable();
        at.dedup();
        at
    };
    let (cols, rows) = (borders(w), borders(h));
    let all_cols: Vec<u32> = (1..w).collect();
    let all_rows: Vec<u32> = (1..h).collect();
    let seams = edge_energy(&out, &cols, &rows);
    let everywhere = edge_energy(&out, &all_cols, &all_rows);
    assert!(!cols.is_empty() && !rows.is_empty());
    seams / everywhere
}
