//! ControlNet: the network against diffusers' `ControlNetModel` (SD 1.x and SDXL, diffusers
//! folder and single file in the original layout), img2img with it against diffusers'
//! `StableDiffusionControlNetImg2ImgPipeline` and the extension's control modes, tiled, and
//! the refusals (another family, not a ControlNet). References:
//! `tools/parity/make_tiny_controlnet.py`, `tools/parity/make_controlnet_parity.py`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use loopback_core::settings::{ControlMode, ControlPreprocess};
use loopback_engine::load::controlnet;
use loopback_engine::model::SdModel;
use loopback_engine::model::unet::AddedCond;
use loopback_engine::run::control::ControlParams;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, img2img_controlled};
use loopback_engine::run::tiling::TileSpec;
use serde_json::Value;

use crate::common::{ROOT, max_abs_diff, max_level_diff, reference_tensor};

fn fixture(path: &str) -> PathBuf {
    Path::new(ROOT).join("tests/fixtures").join(path)
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixture("controlnet-parity/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tiny_sd() -> (SdModel, TextAndSchedule) {
    let dir = fixture("tiny-sd");
    (
        SdModel::load(&dir, &Device::Cpu, DType::F32).unwrap(),
        TextAndSchedule::load(&dir).unwrap(),
    )
}

/// The largest difference between the ControlNet's residuals for a forward reference and the
/// reference's.
fn forward_error(net: &controlnet::LoadedControlNet, which: &str, added: bool) -> f32 {
    let dir = fixture("controlnet-parity");
    let m = manifest();
    let f = &m["forward"][which];
    let sample = reference_tensor(&dir, &f["inputs"]["sample"]);
    let context = match f["inputs"]["context"].as_object() {
        Some(_) => reference_tensor(&dir, &f["inputs"]["context"]),
        None => reference_tensor(&dir, &m["common_files"]["context"]),
    };
    let control = reference_tensor(&dir, &m["common_files"]["control_64x64"]);
    let control = Tensor::cat(&[&control, &control], 0).unwrap();
    let added = added.then(|| AddedCond {
        text_embeds: reference_tensor(&dir, &f["inputs"]["text_embeds"]),
        time_ids: reference_tensor(&dir, &f["inputs"]["time_ids"]),
    });
    let out = net
        .net
        .forward(&sample, 500.0, &context, added.as_ref(), &control)
        .unwrap();
    let outputs = f["outputs"].as_object().unwrap();
    assert_eq!(outputs.len(), out.down.len() + 1);
    let mut worst = 0f32;
    for (i, residual) in out.down.iter().enumerate() {
        let reference = reference_tensor(&dir, &outputs[&format!("down_{i}")]);
        worst = worst.max(max_abs_diff(residual, &reference));
    }
    worst.max(max_abs_diff(
        &out.mid,
        &reference_tensor(&dir, &outputs["mid"]),
    ))
}

#[test]
fn controlnet_residuals_match_diffusers() {
    let (model, _) = tiny_sd();
    let folder = controlnet::open(
        &fixture("tiny-controlnet"),
        &model.files.unet,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let single = controlnet::open(
        &fixture("checkpoint/tiny-controlnet.safetensors"),
        &model.files.unet,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(single.name, "tiny-controlnet");
    assert_eq!(folder.hash.len(), 8);
    let (a, b) = (
        forward_error(&folder, "sd", false),
        forward_error(&single, "sd", false),
    );
    eprintln!("ControlNet SD residuals: folder max |diff| {a:.2e}, single file {b:.2e}");
    assert!(a < 1e-4 && b < 1e-4, "{a} {b}");

    let sdxl = SdModel::load(&fixture("tiny-sdxl"), &Device::Cpu, DType::F32).unwrap();
    let net = controlnet::open(
        &fixture("tiny-controlnet-sdxl"),
        &sdxl.files.unet,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let e = forward_error(&net, "sdxl", true);
    eprintln!("ControlNet SDXL residuals: max |diff| {e:.2e}");
    assert!(e < 1e-4, "{e}");
}

#[test]
fn wrong_family_and_non_controlnets_are_refused() {
    let (model, _) = tiny_sd();
    let sdxl = SdModel::load(&fixture("tiny-sdxl"), &Device::Cpu, DType::F32).unwrap();
    let open = |path: &Path, unet| controlnet::open(path, unet, &Device::Cpu, DType::F32);
    let err = open(&fixture("tiny-controlnet-sdxl"), &model.files.unet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tiny-controlnet-sdxl") && err.contains("SDXL"),
        "{err}"
    );
    let err = open(
        &fixture("checkpoint/tiny-controlnet.safetensors"),
        &sdxl.files.unet,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("tiny-controlnet.safetensors") && err.contains("SDXL"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    let err = open(
        &fixture("checkpoint/tiny-sd.safetensors"),
        &model.files.unet,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not a ControlNet") && err.contains("--model"),
        "{err}"
    );
    let missing = controlnet::resolve("no-such-controlnet", &[fixture("")]).unwrap_err();
    assert!(missing.to_string().contains("no-such-controlnet"));
}

#[test]
fn single_files_without_the_prefix_load_too() {
    let (model, _) = tiny_sd();
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("bare.safetensors");
    let tensors = candle_core::safetensors::load(
        fixture("checkpoint/tiny-controlnet.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let renamed: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("control_model.").to_string(), v))
        .collect();
    candle_core::safetensors::save(&renamed, &stripped).unwrap();
    let net = controlnet::open(&stripped, &model.files.unet, &Device::Cpu, DType::F32).unwrap();
    assert!(forward_error(&net, "sd", false) < 1e-4);
}

fn params(case: &Value, tiling: Option<TileSpec>) -> Img2ImgParams {
    let mode = match case["mode"].as_str() {
        Some("prompt") => ControlMode::Prompt,
        Some("controlnet") => ControlMode::ControlNet,
        _ => ControlMode::Balanced,
    };
    Img2ImgParams {
        control: case["controlnet"]
            .as_bool()
            .unwrap()
            .then(|| ControlParams {
                weight: case["weight"].as_f64().unwrap(),
                start: case["start"].as_f64().unwrap(),
                end: case["end"].as_f64().unwrap(),
                mode,
                preprocess: ControlPreprocess::None,
                resample_rate: 1.0,
            }),
        ..crate::common::reference_params(tiling)
    }
}

#[test]
fn controlled_img2img_matches_the_reference() {
    let (model, text) = tiny_sd();
    let net = controlnet::open(
        &fixture("tiny-controlnet"),
        &model.files.unet,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let dir = fixture("controlnet-parity");
    let m = manifest();
    let mut worst = 0u8;
    for case in m["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input = image::open(dir.join(case["input"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let tiling = case["tiling"].as_object().map(|t| TileSpec {
            tile: t["tile"].as_u64().unwrap() as usize,
            overlap: t["overlap"].as_u64().unwrap() as usize,
            offset: t["offset"].as_u64().unwrap() as usize,
        });
        let p = params(case, tiling);
        let out = img2img_controlled(&model, Some(&net.net), &text, &input, &p, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        let reference =
            std::fs::read(dir.join(case["files"]["out_u8"]["file"].as_str().unwrap())).unwrap();
        let diff = max_level_diff(out.as_raw(), &reference);
        eprintln!("ControlNet img2img {name}: within {diff} level(s)");
        worst = worst.max(diff);
        assert!(diff <= 1, "{name}: differs by {diff} levels");
    }
    eprintln!("ControlNet img2img parity: images within {worst} level(s)");
}

/// A whole run with the ControlNet loaded beside the model: it steers every loop (tiled ones
/// included), the recipe names it with its hash, and a setting naming another ControlNet (or
/// none loaded) is refused with one line.
#[test]
fn runs_with_a_controlnet_record_it_and_refuse_another() {
    use loopback_core::Settings;
    use loopback_engine::load::open::{LoadOptions, LoadedModel, ModelPath};
    use loopback_engine::run::runner::{RunRequest, run_blocking};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let options = LoadOptions {
        controlnet: Some(fixture("tiny-controlnet")),
        ..Default::default()
    };
    let folder = ModelPath::Folder(fixture("tiny-sd"));
    let model = LoadedModel::load_with(&folder, &options, &Device::Cpu, DType::F32).unwrap();
    let plain = LoadedModel::load(&fixture("tiny-sd"), &Device::Cpu, DType::F32).unwrap();
    let input = image::open(fixture("parity/in_coffee_64x64.png")).unwrap();
    let run = |model: &LoadedModel, controlnet: &str| {
        let settings = Settings {
            loops: 2,
            target_mode: loopback_core::settings::TargetMode::Scale,
            scale: 2.0,
            tile_size: 64,
            tile_overlap: 16,
            steps: 6,
            denoise: 0.5,
            seed: 3,
            prompt: "a cup of coffee".into(),
            controlnet: controlnet.into(),
            control_weight: 0.8,
            ..Settings::default()
        };
        let request = RunRequest {
            embeddings: Default::default(),
            input: Arc::new(input.clone()),
            settings,
        };
        run_blocking(model, &request, &mut |_| {}, &AtomicBool::new(false))
    };
    let controlled = run(&model, "tiny-controlnet").unwrap().unwrap();
    let free = run(&model, "").unwrap().unwrap();
    assert_ne!(
        controlled.finished.to_rgb8().into_raw(),
        free.finished.to_rgb8().into_raw()
    );
    assert_eq!(free.recipe.controlnet, None);
    let record = controlled.recipe.controlnet.clone().unwrap();
    assert_eq!(record.name, "tiny-controlnet");
    assert_eq!(record.hash.as_deref().map(str::len), Some(8));
    let text = controlled.recipe.to_infotext().to_text();
    assert!(
        text.contains("ControlNet 0: \"Module: none, Model: tiny-controlnet ["),
        "{text}"
    );
    assert!(text.contains("Weight: 0.8"), "{text}");

    let other = run(&model, "control_v11f1e_sd15_tile")
        .unwrap_err()
        .to_string();
    assert!(
        other.contains("loaded with the ControlNet tiny-controlnet"),
        "{other}"
    );
    let none = run(&plain, "tiny-controlnet").unwrap_err().to_string();
    assert!(none.contains("without a ControlNet"), "{none}");
}
