//! SDXL img2img parity with diffusers' `StableDiffusionXLImg2ImgPipeline` on the tiny SDXL
//! model (`tools/parity/make_tiny_sdxl.py`): the text conditioning (both encoders'
//! penultimate states, the pooled projection, zeros for an empty negative prompt), one UNet
//! call with the added size/text conditioning, and whole img2img passes (three samplers,
//! strengths 0.5 and 1, CFG 7.5 and 1, a non-square size), with our own torch-identical noise.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use loopback_core::settings::Sampler;
use loopback_engine::model::SdModel;
use loopback_engine::model::unet::AddedCond;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, conditioning, img2img};
use loopback_engine::scheduler::noise::TorchGenerator;
use serde_json::Value;

use crate::common;
use common::max_abs_diff;

fn fixtures() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures")
}

fn manifest() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("parity-sdxl/manifest.json")).unwrap(),
    )
    .unwrap()
}

/// A reference tensor of a case.
fn tensor(case: &Value, key: &str) -> Tensor {
    common::reference_tensor(&fixtures().join("parity-sdxl"), &case["files"][key])
}

fn sampler(name: &str) -> Sampler {
    match name {
        "ddim" => Sampler::Ddim,
        "euler_a" => Sampler::EulerA,
        "dpmpp_2m_karras" => Sampler::DpmPp2mKarras,
        other => panic!("sampler {other}"),
    }
}

fn params(case: &Value) -> Img2ImgParams {
    Img2ImgParams {
        prompt: case["prompt"].as_str().unwrap().into(),
        // diffusers' `negative_prompt=None` is the app's empty negative prompt.
        negative_prompt: case["negative_prompt"].as_str().unwrap_or("").into(),
        sampler: sampler(case["sampler"].as_str().unwrap()),
        schedule: loopback_core::settings::ScheduleType::Automatic,
        steps: case["num_inference_steps"].as_u64().unwrap() as usize,
        cfg: case["guidance_scale"].as_f64().unwrap(),
        strength: case["strength"].as_f64().unwrap(),
        seed: case["seed"].as_u64().unwrap() as u32,
        conditioning: Default::default(),
        tiling: None,
        control: None,
    }
}

fn load() -> (SdModel, TextAndSchedule) {
    let root = fixtures().join("tiny-sdxl");
    let model = SdModel::load(&root, &Device::Cpu, DType::F32).unwrap();
    let text = TextAndSchedule::load(&root).unwrap();
    assert!(model.is_sdxl());
    let xl = text.sdxl.expect("SDXL text settings");
    assert_eq!(text.pad_token, 49407, "tokenizer pads with end-of-text");
    assert_eq!(xl.pad_token_2, 0, "tokenizer_2 pads with '!'");
    assert!(xl.zero_empty_negative);
    (model, text)
}

/// Text conditioning (context, pooled, size ids) and one UNet call of every case against the
/// tensors diffusers passed to its first UNet call.
#[test]
fn sdxl_components_match_diffusers() {
    let manifest = manifest();
    let (model, text) = load();
    let (mut worst_context, mut worst_pooled, mut worst_unet) = (0f32, 0f32, 0f32);
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = params(case);
        let size = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let (context, added) = conditioning(&model, &text, &p, size).unwrap();
        let added = added.expect("SDXL added conditioning");
        let d_context = max_abs_diff(&context, &tensor(case, "encoder_hidden_states"));
        let d_pooled = max_abs_diff(&added.text_embeds, &tensor(case, "text_embeds"));
        let d_ids = max_abs_diff(&added.time_ids, &tensor(case, "time_ids"));
        assert!(d_context <= 1e-4, "{name}: context differs by {d_context}");
        assert!(d_pooled <= 1e-4, "{name}: pooled differs by {d_pooled}");
        assert_eq!(d_ids, 0.0, "{name}: size ids");
        if case["negative_prompt"].is_null() && p.cfg > 1.0 {
            // force_zeros_for_empty_prompt: the unconditional row is all zeros.
            let uncond = context.get(0).unwrap();
            assert_eq!(max_abs_diff(&uncond, &uncond.zeros_like().unwrap()), 0.0);
        }

        // One UNet call on diffusers' own inputs.
        let reference_added = AddedCond {
            text_embeds: tensor(case, "text_embeds"),
            time_ids: tensor(case, "time_ids"),
        };
        let out = model
            .unet
            .forward_with(
                &tensor(case, "unet_input"),
                case["first_timestep"].as_f64().unwrap(),
                &tensor(case, "encoder_hidden_states"),
                Some(&reference_added),
            )
            .unwrap();
        let d_unet = max_abs_diff(&out, &tensor(case, "unet_output"));
        assert!(d_unet <= 1e-4, "{name}: UNet output differs by {d_unet}");
        eprintln!("{name}: context {d_context:.2e}, pooled {d_pooled:.2e}, UNet {d_unet:.2e}");
        worst_context = worst_context.max(d_context);
        worst_pooled = worst_pooled.max(d_pooled);
        worst_unet = worst_unet.max(d_unet);
    }
    eprintln!(
        "worst: context {worst_context:.2e}, pooled {worst_pooled:.2e}, UNet {worst_unet:.2e}"
    );
    // Without the added conditioning an SDXL UNet refuses to run.
    let case = &manifest["cases"][0];
    assert!(
        model
            .unet
            .forward(
                &tensor(case, "unet_input"),
                500.0,
                &tensor(case, "encoder_hidden_states")
            )
            .is_err()
    );
}

/// Whole img2img passes: final latents within 1e-3, images within 2 levels, every noise draw
/// bit-identical.
#[test]
fn sdxl_img2img_matches_diffusers() {
    let manifest = manifest();
    let (model, text) = load();
    let (mut worst_latents, mut worst_u8) = (0f32, 0u8);
    let mut compared = 0;
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = params(case);
        let input = image::open(
            fixtures()
                .join("parity-sdxl")
                .join(case["input"].as_str().unwrap()),
        )
        .unwrap()
        .to_rgb8();
        let mut steps = 0;
        let mut last = None;
        let out = img2img(&model, &text, &input, &p, &mut |s| {
            steps += 1;
            last = Some(s.latents.clone());
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            steps,
            case["n_steps_run"].as_u64().unwrap() as usize,
            "{name}"
        );
        let trajectory = tensor(case, "latents_trajectory");
        let reference_latents = trajectory.get(steps).unwrap();
        let d_latents = max_abs_diff(&last.unwrap(), &reference_latents);
        assert!(
            d_latents <= 1e-3,
            "{name}: final latents differ by {d_latents}"
        );

        let reference = std::fs::read(
            fixtures()
                .join("parity-sdxl")
                .join(case["files"]["out_u8"]["file"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(out.as_raw().len(), reference.len(), "{name}: image size");
        let d_u8 = crate::common::max_level_diff(out.as_raw(), &reference);
        assert!(d_u8 <= 2, "{name}: image differs by {d_u8} levels");

        let draws = tensor(case, "noise_draws")
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut generator = TorchGenerator::new(p.seed.into());
        let ours = generator.randn(draws.len());
        assert!(
            draws
                .iter()
                .zip(&ours)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: noise"
        );
        eprintln!("{name}: final latents {d_latents:.2e}, image {d_u8} levels");
        worst_latents = worst_latents.max(d_latents);
        worst_u8 = worst_u8.max(d_u8);
        compared += 1;
    }
    eprintln!("{compared} cases; worst final latents {worst_latents:.2e}, worst image {worst_u8}");
    assert_eq!(compared, 10);
}

/// A copy of the tiny SDXL folder with `edit` applied to its UNet config.
fn edited_copy(dir: &Path, edit: impl Fn(&mut Value)) -> PathBuf {
    let root = dir.join("model");
    for entry in walk(&fixtures().join("tiny-sdxl")) {
        let rel = entry.strip_prefix(fixtures().join("tiny-sdxl")).unwrap();
        let to = root.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    let config = root.join("unet/config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&config, json.to_string()).unwrap();
    root
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Unsupported or inconsistent SDXL folders fail with one line naming the file and the key.
#[test]
fn bad_sdxl_folders_are_named() {
    let load_err = |root: &Path| {
        SdModel::load(root, &Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string()
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = edited_copy(tmp.path(), |j| j["addition_embed_type"] = "image".into());
    let err = load_err(&root);
    assert!(
        err.contains("unet/config.json") && err.contains("addition_embed_type"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let root = edited_copy(tmp.path(), |j| {
        j["projection_class_embeddings_input_dim"] = 61.into()
    });
    let err = load_err(&root);
    assert!(
        err.contains("projection_class_embeddings_input_dim 61"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let root = edited_copy(tmp.path(), |_| {});
    std::fs::remove_dir_all(root.join("text_encoder_2")).unwrap();
    let err = load_err(&root);
    assert!(err.contains("cross_attention_dim"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
