//! Helpers shared by the engine's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root: the shared fixtures live in `tests/fixtures` and `tests/data` there.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A file under `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(ROOT).join("tests/data").join(name)
}

/// The largest difference, in levels, between two images' bytes (of the same length).
pub fn max_level_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len(), "images of different sizes");
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// Max abs difference of two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The values and shape of a reference tensor that a fixture manifest describes as
/// `{"file": NAME, "shape": [..]}`, `NAME` holding little-endian f32s in `dir`.
pub fn reference_f32(dir: &Path, entry: &serde_json::Value) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(dir.join(entry["file"].as_str().unwrap())).unwrap();
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, reference_shape(entry))
}

/// The `"shape"` of a reference-tensor entry (see [`reference_f32`]).
pub fn reference_shape(entry: &serde_json::Value) -> Vec<usize> {
    entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

/// [`reference_f32`] as a CPU tensor.
pub fn reference_tensor(dir: &Path, entry: &serde_json::Value) -> candle_core::Tensor {
    let (values, shape) = reference_f32(dir, entry);
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap()
}

/// The img2img pass of the tiled and ControlNet references on the tiny model: the coffee
/// prompts, DDIM, 10 steps at strength 0.5 (5 run), CFG 7.5, seed 1234, with `tiling`.
pub fn reference_params(
    tiling: Option<loopback_engine::run::tiling::TileSpec>,
) -> loopback_engine::run::pipeline::Img2ImgParams {
    loopback_engine::run::pipeline::Img2ImgParams {
        prompt: "a cup of coffee on a wooden table".into(),
        negative_prompt: "blurry, lowres".into(),
        sampler: loopback_core::settings::Sampler::Ddim,
        schedule: loopback_core::settings::ScheduleType::Automatic,
        steps: 10,
        cfg: 7.5,
        strength: 0.5,
        seed: 1234,
        conditioning: Default::default(),
        tiling,
        control: None,
    }
}
