//! Tiled diffusion (MultiDiffusion): one tile covering the image is exactly the untiled
//! result; tiled loops match an independent Python reference of the same algorithm
//! (`tools/parity/make_tiled_parity.py`, `tests/fixtures/tiled-parity/`) within 1 level.

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
