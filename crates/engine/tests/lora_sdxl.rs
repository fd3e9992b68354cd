//! SDXL LoRAs against diffusers on the tiny SDXL model (`tools/parity/make_tiny_lora_sdxl.py`):
//! a kohya LoRA naming the UNet in the original SGM layout (`input_blocks_3_1_…`) with both
//! text encoders (`lora_te1_`, `lora_te2_`), alone at weight 1 and at 0.5 with a
//! diffusers/PEFT-named one at −0.8: merged weights, the text conditioning (context and pooled),
//! one UNet call and the final latents of a short img2img run. Plus the error for an SDXL LoRA
//! on an SD 1.x model.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use loopback_core::settings::Sampler;
use loopback_engine::load::checkpoint::LdmUnetLayout;
use loopback_engine::load::lora::names::safetensors_names;
use loopback_engine::load::lora::{Component, LoraSet, LoraSpec};
use loopback_engine::model::SdModel;
use loopback_engine::model::unet::AddedCond;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, conditioning, img2img};
use serde_json::Value;

use crate::common;
use common::max_abs_diff;

fn fixtures() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures")
}

fn tiny_xl() -> PathBuf {
    fixtures().join("tiny-sdxl")
}

fn lora_dir() -> PathBuf {
    fixtures().join("lora-sdxl")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(lora_dir().join("manifest.json")).unwrap())
        .unwrap()
}

/// A reference tensor (`{"file", "shape"}`).
fn tensor(entry: &Value) -> Tensor {
    common::reference_tensor(&lora_dir(), entry)
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

/// tiny-sdxl's UNet numbering: 3 levels of 1 resnet each.
const TINY_XL: LdmUnetLayout = LdmUnetLayout {
    levels: 3,
    layers_per_block: 1,
};

#[test]
fn sdxl_merged_weights_match_diffusers() {
    let manifest = manifest();
    let mut worst = 0f32;
    for case in manifest["cases"].as_array().unwrap() {
        let set = LoraSet::read(&specs(case)).unwrap();
        for (key, entry) in case["files"]["weights"].as_object().unwrap() {
            let (component, name) = key.split_once(':').unwrap();
            let file = match component {
                "unet" => "unet/diffusion_pytorch_model.safetensors",
                "te1" => "text_encoder/model.safetensors",
                _ => "text_encoder_2/model.safetensors",
            };
            let path = tiny_xl().join(file);
            let vb = unsafe {
                VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu).unwrap()
            };
            let vb = match component {
                "unet" => {
                    let names = safetensors_names(&path).unwrap();
                    set.wrap_unet(vb, &names, Some(TINY_XL)).unwrap()
                }
                "te1" => set.wrap_file(Component::TextEncoder, vb, &path).unwrap(),
                _ => set.wrap_file(Component::TextEncoder2, vb, &path).unwrap(),
            };
            let reference = tensor(entry);
            let ours = vb.get(reference.dims(), name).unwrap();
            let d = max_abs_diff(&ours, &reference);
            assert!(d <= 1e-4, "{}: {key} differs by {d}", case["name"]);
            worst = worst.max(d);
        }
    }
    eprintln!("SDXL merged weights: max abs diff {worst:e}");
}

#[test]
fn sdxl_components_and_img2img_match_diffusers() {
    let manifest = manifest();
    let text = TextAndSchedule::load(&tiny_xl()).unwrap();
    let input = image::open(fixtures().join("parity-sdxl/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    let params = Img2ImgParams {
        prompt: manifest["prompt"].as_str().unwrap().into(),
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
    let size = (input.width(), input.height());
    let base_latents = tensor(&manifest["base"]["final_latents"]);
    let timestep = manifest["unet_timestep"].as_f64().unwrap();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let files = &case["files"];
        let set = LoraSet::read(&specs(case)).unwrap();
        let model = SdModel::load_with_loras(&tiny_xl(), &Device::Cpu, DType::F32, &set).unwrap();

        let (context, added) = conditioning(&model, &text, &params, size).unwrap();
        let added = added.expect("SDXL added conditioning");
        let d_context = max_abs_diff(&context, &tensor(&files["context"]));
        let d_pooled = max_abs_diff(&added.text_embeds, &tensor(&files["pooled"]));
        assert!(d_context <= 1e-4, "{name}: context differs by {d_context}");
        assert!(d_pooled <= 1e-4, "{name}: pooled differs by {d_pooled}");

        // One UNet call on diffusers' own conditioning.
        let reference_added = AddedCond {
            text_embeds: tensor(&files["pooled"]),
            time_ids: added.time_ids.clone(),
        };
        let out = model
            .unet
            .forward_with(
                &tensor(&files["unet_input"]),
                timestep,
                &tensor(&files["context"]),
                Some(&reference_added),
            )
            .unwrap();
        let d_unet = max_abs_diff(&out, &tensor(&files["unet_output"]));
        assert!(d_unet <= 1e-4, "{name}: UNet output differs by {d_unet}");

        let mut last = None;
        img2img(&model, &text, &input, &params, &mut |p| {
            last = Some(p.latents.clone());
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        let last = last.unwrap();
        let d_latents = max_abs_diff(&last, &tensor(&files["final_latents"]));
        assert!(
            d_latents <= 1e-3,
            "{name}: final latents differ by {d_latents}"
        );
        // The LoRAs matter: far from the run without them.
        let from_base = max_abs_diff(&last, &base_latents);
        assert!(
            from_base > 0.05,
            "{name}: only {from_base} from the base model"
        );
        eprintln!(
            "{name}: context {d_context:.2e}, pooled {d_pooled:.2e}, UNet {d_unet:.2e}, final \
             latents {d_latents:.2e} (LoRA effect {from_base:.3})"
        );
    }
    // The size ids the references were made with.
    let ids: Vec<f64> = manifest["time_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(ids, [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]);
}

#[test]
fn sdxl_lora_on_an_sd1_model_names_the_file() {
    let tiny_sd = fixtures().join("tiny-sd");
    let load = |path: PathBuf| {
        let set = LoraSet::read(&[LoraSpec { path, weight: 1.0 }]).unwrap();
        SdModel::load_with_loras(&tiny_sd, &Device::Cpu, DType::F32, &set)
            .unwrap_err()
            .to_string()
    };
    // The whole LoRA: refused for its second text encoder.
    let err = load(lora_dir().join("tiny_xl_a.safetensors"));
    assert!(
        err.contains("tiny_xl_a.safetensors") && err.contains("second text encoder"),
        "{err}"
    );
    // Its UNet part alone: the SGM names match nothing of an SD 1.x UNet.
    let dir = tempfile::tempdir().unwrap();
    let unet_only = dir.path().join("xl_unet.safetensors");
    let tensors =
        candle_core::safetensors::load(lora_dir().join("tiny_xl_a.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with("lora_unet_"))
            .collect::<std::collections::HashMap<_, _>>();
    candle_core::safetensors::save(&tensors, &unet_only).unwrap();
    let err = load(unet_only);
    assert!(
        err.contains("xl_unet.safetensors")
            && err.contains("UNet")
            && err.contains("input_blocks_")
            && !err.contains('\n'),
        "{err}"
    );
    eprintln!("{err}");
}
