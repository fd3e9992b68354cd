//! The TAESD decoder against diffusers' `AutoencoderTiny` on random weights
//! (`tools/parity/make_tiny_taesd.py`), in both weight layouts, and the preview it gives.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use loopback_engine::model::taesd::TaesdDecoder;
use loopback_engine::run::preview::taesd_to_rgb;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures/taesd")
}

fn read(entry: &Value) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(dir().join(entry["file"].as_str().unwrap())).unwrap();
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let shape = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    (values, shape)
}

#[test]
fn decode_matches_diffusers_in_both_layouts() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let (latents, shape) = read(&manifest["latents"]);
    let latents = Tensor::from_vec(latents, shape, &Device::Cpu).unwrap();
    let (reference, ref_shape) = read(&manifest["decoded"]);
    for source in [
        dir().join("tiny-taesd"),
        dir().join("taesd_decoder.safetensors"),
    ] {
        let decoder = TaesdDecoder::load(&source, &Device::Cpu, DType::F32).unwrap();
        let out = decoder.decode(&latents).unwrap();
        assert_eq!(out.dims(), ref_shape.as_slice());
        // diffusers returns 2·x − 1.
        let ours: Vec<f32> = ((out * 2.0).unwrap() - 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{}: max abs diff {diff:e}", source.display());
        assert!(diff <= 1e-4, "{}: differs by {diff}", source.display());
    }
}

#[test]
fn preview_is_at_image_resolution_and_bounded() {
    let decoder = TaesdDecoder::load(&dir().join("tiny-taesd"), &Device::Cpu, DType::F32).unwrap();
    let latents = Tensor::randn(0f32, 1.0, (1, 4, 6, 5), &Device::Cpu).unwrap();
    let image = taesd_to_rgb(&decoder, &latents).unwrap();
    assert_eq!(image.dimensions(), (40, 48));
    // 1024×1536-pixel latents are pooled by 3 before decoding: at most 512 pixels a side.
    let latents = Tensor::randn(0f32, 1.0, (1, 4, 192, 128), &Device::Cpu).unwrap();
    let image = taesd_to_rgb(&decoder, &latents).unwrap();
    assert_eq!(image.dimensions(), (336, 512));
}

#[test]
fn unreadable_weights_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("taesd_decoder.safetensors");
    std::fs::write(&bad, b"junk").unwrap();
    let err = TaesdDecoder::load(&bad, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&bad.display().to_string()), "{err}");
    let lora = Path::new(common::ROOT).join("tests/fixtures/lora/tiny_a.safetensors");
    let err = TaesdDecoder::load(&lora, &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a TAESD decoder"), "{err}");
}
