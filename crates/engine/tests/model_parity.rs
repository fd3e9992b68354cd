//! Component parity with diffusers on the tiny SD model (`tools/parity/make_tiny_sd.py`): the
//! text encoder, the VAE encoder mean, one UNet step and the VAE decoder, each fed the
//! reference's own inputs so an error points at one component.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use loopback_engine::model::SdModel;
use serde_json::Value;

use crate::common;
use common::max_abs_diff;

fn fixtures() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures")
}

/// The DDIM strength-0.5 case with intermediates, from the parity manifest.
fn case() -> Value {
    let text = std::fs::read_to_string(fixtures().join("parity/manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mean_ddim_s050_64x64")
        .unwrap()
        .clone()
}

/// Loads reference tensor `key` of `case` as f32 with its recorded shape.
fn tensor(case: &Value, key: &str) -> Tensor {
    let file = &case["files"][key];
    let shape: Vec<usize> = file["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let bytes = std::fs::read(
        fixtures()
            .join("parity")
            .join(file["file"].as_str().unwrap()),
    )
    .unwrap();
    let values: Vec<f32> = match file["dtype"].as_str().unwrap() {
        "f32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "i64" => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("dtype {other}"),
    };
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn model() -> SdModel {
    SdModel::load(&fixtures().join("tiny-sd"), &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn components_match_diffusers() {
    let model = model();
    let case = case();

    // Text encoder: last hidden state for cond and uncond ids.
    let ids = tensor(&case, "token_ids").to_dtype(DType::U32).unwrap();
    let hidden = model
        .text_encoders
        .with(|clip, _| clip.forward(&ids, &[], 0))
        .unwrap()
        .unwrap();
    let reference = tensor(&case, "text_hidden");
    let err = max_abs_diff(&hidden, &reference);
    eprintln!(
        "text encoder: max abs diff {err:e} (max |ref| {})",
        max_abs(&reference)
    );
    assert!(err < 1e-4, "text encoder differs by {err}");

    // VAE encoder: the posterior mean.
    let mean = model.vae.encode_mean(&tensor(&case, "vae_input")).unwrap();
    let reference = tensor(&case, "posterior_mean");
    let err = max_abs_diff(&mean, &reference);
    eprintln!(
        "VAE encode mean: max abs diff {err:e} (max |ref| {})",
        max_abs(&reference)
    );
    assert!(err < 1e-4, "VAE mean differs by {err}");

    // UNet: the first step, batch [uncond, cond].
    let input = tensor(&case, "unet_input").get(0).unwrap();
    let t = case["timesteps"][0].as_f64().unwrap();
    let text = tensor(&case, "text_hidden");
    let context = Tensor::cat(
        &[
            text.get(1).unwrap().unsqueeze(0).unwrap(),
            text.get(0).unwrap().unsqueeze(0).unwrap(),
        ],
        0,
    )
    .unwrap();
    let out = model.unet.forward(&input, t, &context).unwrap();
    let reference = tensor(&case, "unet_output").get(0).unwrap();
    let err = max_abs_diff(&out, &reference);
    eprintln!(
        "UNet step: max abs diff {err:e} (max |ref| {})",
        max_abs(&reference)
    );
    assert!(
        err < 1e-4 * max_abs(&reference).max(1.0),
        "UNet differs by {err}"
    );

    // VAE decoder: from the final latents.
    let trajectory = tensor(&case, "latents_trajectory");
    let last = trajectory.get(trajectory.dim(0).unwrap() - 1).unwrap();
    let decoded = model.vae.decode(&last).unwrap();
    let reference = tensor(&case, "decoded");
    let err = max_abs_diff(&decoded, &reference);
    eprintln!(
        "VAE decode: max abs diff {err:e} (max |ref| {})",
        max_abs(&reference)
    );
    assert!(
        err < 1e-4 * max_abs(&reference).max(1.0),
        "VAE decode differs by {err}"
    );
}

#[test]
fn bad_model_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = SdModel::load(dir.path(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unet/config.json") && err.contains("missing"),
        "{err}"
    );
    let err = SdModel::load(&dir.path().join("nope"), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a folder"), "{err}");
}
