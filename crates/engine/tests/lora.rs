//! LoRA merging against diffusers on the tiny SD 1.x model (`tools/parity/make_tiny_lora.py`):
//! merged weights, text-encoder output, one UNet call and the final latents of a short img2img
//! run, for one LoRA and for two with different weights; plus prompt tags, metadata and the
//! errors for bad files and modules that match nothing.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::DynamicImage;
use loopback_core::settings::{Sampler, Settings, TargetMode};
use loopback_engine::load::lora::{self, Component, LoraSet, LoraSpec};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::model::SdModel;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, img2img};
use loopback_engine::run::runner::{self, RunRequest};
use serde_json::Value;

use crate::common;

fn root() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures")
}

fn tiny() -> PathBuf {
    root().join("tiny-sd")
}

fn lora_dir() -> PathBuf {
    root().join("lora")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(lora_dir().join("manifest.json")).unwrap())
        .unwrap()
}

fn read_f32(entry: &Value) -> Vec<f32> {
    common::reference_f32(&lora_dir(), entry).0
}

fn shape(entry: &Value) -> Vec<usize> {
    common::reference_shape(entry)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn specs(case: &Value) -> Vec<LoraSpec> {
    case["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| LoraSpec {
            path: lora_dir().join(l["file"].as_str().unwrap()),
            weight: l["weight"].as_f64().unwrap(),
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn text_hidden(model: &SdModel, text: &TextAndSchedule, prompt: &str) -> Vec<f32> {
    let ids = text
        .tokenizer
        .encode_padded(prompt, text.pad_token)
        .to_vec();
    flat(&model.text_embeddings(&[ids]).unwrap())
}

#[test]
fn merged_weights_match_diffusers() {
    let manifest = manifest();
    let mut worst = 0f32;
    for case in manifest["cases"].as_array().unwrap() {
        let set = LoraSet::read(&specs(case)).unwrap();
        for (key, entry) in case["files"]["weights"].as_object().unwrap() {
            let (component, name) = key.split_once(':').unwrap();
            let (component, file) = match component {
                "unet" => (Component::Unet, "unet/diffusion_pytorch_model.safetensors"),
                _ => (Component::TextEncoder, "text_encoder/model.safetensors"),
            };
            let path = tiny().join(file);
            let vb = unsafe {
                VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu).unwrap()
            };
            let vb = set.wrap_file(component, vb, &path).unwrap();
            let ours = vb.get(shape(entry), name).unwrap();
            let d = max_diff(&flat(&ours), &read_f32(entry));
            assert!(d <= 1e-4, "{}: {key} differs by {d}", case["name"]);
            worst = worst.max(d);
        }
    }
    println!("merged weights: max abs diff {worst:e}");
}

#[test]
fn components_and_img2img_match_diffusers() {
    let manifest = manifest();
    let text = TextAndSchedule::load(&tiny()).unwrap();
    let prompt = manifest["prompt"].as_str().unwrap();
    let input = image::open(root().join("parity/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    let params = Img2ImgParams {
        prompt: prompt.into(),
        negative_prompt: manifest["negative_prompt"].as_str().unwrap().into(),
        sampler: Sampler::Ddim,
        schedule: loopback_core::settings::ScheduleType::Automatic,
        steps: manifest["steps"].as_u64().unwrap() as usize,
        cfg: manifest["cfg"].as_f64().unwrap(),
        strength: manifest["strength"].as_f64().unwrap(),
        seed: manifest["seed"].as_u64().unwrap() as u32,
        conditioning: Default::default(),
        tiling: None,
        control: None,
    };
    let base_latents = read_f32(&manifest["base"]["final_latents"]);
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let files = &case["files"];
        let set = LoraSet::read(&specs(case)).unwrap();
        let model = SdModel::load_with_loras(&tiny(), &Device::Cpu, DType::F32, &set).unwrap();

        let hidden = text_hidden(&model, &text, prompt);
        let d_text = max_diff(&hidden, &read_f32(&files["text_hidden"]));
        assert!(
            d_text <= 1e-4,
            "{name}: text encoder output differs by {d_text}"
        );

        let sample = Tensor::from_vec(
            read_f32(&files["unet_input"]),
            shape(&files["unet_input"]),
            &Device::Cpu,
        )
        .unwrap();
        let context = Tensor::from_vec(hidden, shape(&files["text_hidden"]), &Device::Cpu).unwrap();
        let unet_out = flat(
            &model
                .unet
                .forward(
                    &sample,
                    manifest["unet_timestep"].as_f64().unwrap(),
                    &context,
                )
                .unwrap(),
        );
        let d_unet = max_diff(&unet_out, &read_f32(&files["unet_output"]));
        assert!(d_unet <= 1e-4, "{name}: UNet output differs by {d_unet}");

        let mut last = Vec::new();
        img2img(&model, &text, &input, &params, &mut |p| {
            last = flat(p.latents);
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        let reference = read_f32(&files["final_latents"]);
        let d_latents = max_diff(&last, &reference);
        assert!(
            d_latents <= 1e-3,
            "{name}: final latents differ by {d_latents}"
        );
        // The LoRA matters: far from the run without it.
        let from_base = max_diff(&last, &base_latents);
        assert!(
            from_base > 0.05,
            "{name}: only {from_base} from the base model"
        );
        println!(
            "{name}: text {d_text:e}, UNet {d_unet:e}, final latents {d_latents:e} \
             (LoRA effect {from_base})"
        );
    }
}

/// Writes a kohya LoRA with one module named `module` (2-D, rank 1) into `dir`.
fn write_lora(dir: &Path, file: &str, modules: &[(&str, usize, usize)]) -> PathBuf {
    let mut tensors = std::collections::HashMap::new();
    for (module, out_dim, in_dim) in modules {
        tensors.insert(
            format!("{module}.lora_down.weight"),
            Tensor::ones((1, *in_dim), DType::F32, &Device::Cpu).unwrap(),
        );
        tensors.insert(
            format!("{module}.lora_up.weight"),
            Tensor::ones((*out_dim, 1), DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let path = dir.join(file);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn unmatched_modules_and_bad_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let path = write_lora(
        dir.path(),
        "mixed.safetensors",
        &[
            (good, 32, 32),
            ("lora_unet_input_blocks_4_1_proj_in", 32, 32),
            ("lora_unet_no_such_layer", 32, 32),
        ],
    );
    let set = LoraSet::read(&[LoraSpec { path, weight: 1.0 }]).unwrap();
    let err = SdModel::load_with_loras(&tiny(), &Device::Cpu, DType::F32, &set)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mixed.safetensors"), "{err}");
    assert!(
        err.contains("input_blocks_4_1_proj_in") && err.contains("no_such_layer"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");

    // An SDXL LoRA (second text encoder) on an SD 1.x model.
    let path = write_lora(
        dir.path(),
        "xl.safetensors",
        &[("lora_te2_text_model_encoder_layers_0_mlp_fc1", 8, 8)],
    );
    let set = LoraSet::read(&[LoraSpec { path, weight: 1.0 }]).unwrap();
    let err = SdModel::load_with_loras(&tiny(), &Device::Cpu, DType::F32, &set)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("xl.safetensors") && err.contains("second text encoder"),
        "{err}"
    );

    // A module whose update does not fit the weight's shape.
    let path = write_lora(dir.path(), "shape.safetensors", &[(good, 16, 32)]);
    let set = LoraSet::read(&[LoraSpec { path, weight: 1.0 }]).unwrap();
    let err = SdModel::load_with_loras(&tiny(), &Device::Cpu, DType::F32, &set)
        .unwrap_err()
        .to_string();
    assert!(err.contains("LoRA shape") && err.contains("to_q"), "{err}");

    // Not safetensors; a broken pickle; a file that does not exist; keys of no LoRA style.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let pickle = dir.path().join("old.pt");
    std::fs::write(&pickle, b"x").unwrap();
    let other = dir.path().join("other.safetensors");
    let t = Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("model.diffusion_model.x.weight".to_string(), t)]),
        &other,
    )
    .unwrap();
    for (path, want) in [
        (junk, "not a safetensors LoRA"),
        // A "pickle" that is no PyTorch file: refused by the safe reader, nothing run.
        (pickle, "not a PyTorch file this app reads"),
        (dir.path().join("missing.safetensors"), "no such LoRA"),
        (other, "no known style"),
    ] {
        let err = LoraSet::read(&[LoraSpec {
            path: path.clone(),
            weight: 1.0,
        }])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(want), "{err}");
    }
}

fn run_settings(prompt: &str) -> Settings {
    Settings {
        loops: 1,
        target_mode: TargetMode::Scale,
        scale: 2.0,
        steps: 4,
        denoise: 0.5,
        seed: 7,
        prompt: prompt.into(),
        ..Settings::default()
    }
}

fn run(model: &LoadedModel, prompt: &str) -> loopback_core::Result<Option<runner::RunOutput>> {
    let photo = image::open(root().join("parity/in_coffee_64x64.png")).unwrap();
    let request = RunRequest {
        embeddings: Default::default(),
        input: Arc::new(DynamicImage::ImageRgb8(photo.to_rgb8())),
        settings: run_settings(prompt),
    };
    runner::run_blocking(model, &request, &mut |_| {}, &AtomicBool::new(false))
}

#[test]
fn prompt_tags_load_lora_and_go_into_the_metadata() {
    let models = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(models.path().join("Lora")).unwrap();
    std::fs::copy(
        lora_dir().join("tiny_a.safetensors"),
        models.path().join("Lora/tiny_a.safetensors"),
    )
    .unwrap();
    let prompt = "a cup of coffee <lora:tiny_a:0.7>";
    let extra = LoraSpec {
        path: lora_dir().join("tiny_b.safetensors"),
        weight: -0.4,
    };
    let specs = lora::specs_for_prompt(
        prompt,
        std::slice::from_ref(&extra),
        &[models.path().to_path_buf()],
    )
    .unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].path, models.path().join("Lora/tiny_a.safetensors"));
    assert_eq!(specs[0].weight, 0.7);
    assert_eq!(specs[1], extra);

    let model = LoadedModel::load_with_loras(&tiny(), &Device::Cpu, DType::F32, &specs).unwrap();
    let hashes: Vec<&str> = model
        .loras
        .iter()
        .map(|l| l.hash.as_deref().unwrap())
        .collect();
    assert!(hashes.iter().all(|h| h.len() == 12), "{hashes:?}");
    assert_ne!(hashes[0], hashes[1]);
    let output = run(&model, prompt).unwrap().unwrap();
    let infotext = output.recipe.to_infotext().to_text();
    assert!(infotext.starts_with(prompt), "{infotext}");
    let expected = format!(
        "Lora hashes: \"tiny_a: {}, tiny_b: {}\"",
        hashes[0], hashes[1]
    );
    assert!(infotext.contains(&expected), "{infotext}");

    // The tag is not sent to the tokenizer: the run equals one with the tag removed.
    let plain = run(&model, "a cup of coffee ").unwrap().unwrap();
    assert_eq!(output.unfinished.as_raw(), plain.unfinished.as_raw());

    // A tag the model was not loaded with is refused rather than ignored.
    let err = run(&model, "a cup of coffee <lora:tiny_a:0.5>")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("<lora:tiny_a:0.5>") && err.contains("loaded without"),
        "{err}"
    );
    // An unknown name is reported with the folders searched.
    let err = lora::specs_for_prompt("<lora:nope:1>", &[], &[models.path().to_path_buf()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.safetensors") && err.contains("not found"),
        "{err}"
    );
}
