//! End-to-end img2img parity with diffusers on the tiny SD model: every "mean" reference case
//! of `tests/fixtures/parity/manifest.json` (three samplers, two strengths, two sizes, CFG 7.5
//! and 1, epsilon and v-prediction), with our own torch-identical noise.

use crate::common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use loopback_core::settings::Sampler;
use loopback_engine::model::SdModel;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, img2img};
use loopback_engine::scheduler::SchedulerConfig;
use loopback_engine::scheduler::noise::TorchGenerator;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures")
}

fn read_f32(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("parity").join(name)).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn sampler(name: &str) -> Sampler {
    match name {
        "ddim" => Sampler::Ddim,
        "euler_a" => Sampler::EulerA,
        "dpmpp_2m_karras" => Sampler::DpmPp2mKarras,
        other => panic!("sampler {other}"),
    }
}

/// A per-case string, falling back to the manifest-wide value.
fn field<'a>(case: &'a Value, manifest: &'a Value, key: &str) -> &'a str {
    case[key].as_str().or(manifest[key].as_str()).unwrap()
}

#[test]
fn img2img_matches_diffusers() {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("parity/manifest.json")).unwrap(),
    )
    .unwrap();
    let model = SdModel::load(&fixtures().join("tiny-sd"), &Device::Cpu, DType::F32).unwrap();
    let epsilon = TextAndSchedule::load(&fixtures().join("tiny-sd")).unwrap();
    let v_pred = TextAndSchedule {
        scheduler: SchedulerConfig::load(
            &fixtures().join("tiny-sd-v/scheduler/scheduler_config.json"),
        )
        .unwrap(),
        ..TextAndSchedule::load(&fixtures().join("tiny-sd")).unwrap()
    };
    let mut compared = 0;
    let mut worst_u8 = 0u8;
    let mut worst_out = 0f32;
    let mut worst_latents = 0f32;
    let mut worst_latents_rel = 0f32;
    for case in manifest["cases"].as_array().unwrap() {
        if case["latent_mode"] != "mean" {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let input = image::open(
            fixtures()
                .join("parity")
                .join(case["input"].as_str().unwrap()),
        )
        .unwrap()
        .to_rgb8();
        let params = Img2ImgParams {
            prompt: field(case, &manifest, "prompt").into(),
            negative_prompt: field(case, &manifest, "negative_prompt").into(),
            sampler: sampler(case["sampler"].as_str().unwrap()),
            schedule: loopback_core::settings::ScheduleType::Automatic,
            steps: case["num_inference_steps"].as_u64().unwrap() as usize,
            cfg: case["guidance_scale"].as_f64().unwrap(),
            strength: case["strength"].as_f64().unwrap(),
            seed: case["seed"].as_u64().unwrap() as u32,
            conditioning: Default::default(),
            tiling: None,
            control: None,
        };
        let text = if case["prediction_type"] == "v_prediction" {
            &v_pred
        } else {
            &epsilon
        };
        let mut steps = 0;
        let mut last_latents = Vec::new();
        let out = img2img(&model, text, &input, &params, &mut |p| {
            steps += 1;
            last_latents = p.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            steps,
            case["n_steps_run"].as_u64().unwrap() as usize,
            "{name}: steps"
        );

        let reference = std::fs::read(
            fixtures()
                .join("parity")
                .join(case["files"]["out_u8"]["file"].as_str().unwrap()),
        )
        .unwrap();
        let diff_u8 = crate::common::max_level_diff(out.as_raw(), &reference);
        let reference_f = read_f32(case["files"]["out"]["file"].as_str().unwrap());
        // The reference's float output against our u8 output: within one level plus rounding.
        let diff_f = out
            .as_raw()
            .iter()
            .zip(&reference_f)
            .map(|(&a, &b)| (f32::from(a) / 255.0 - b.clamp(0.0, 1.0)).abs())
            .fold(0f32, f32::max);
        // Final latents: the last row of the reference trajectory.
        let trajectory = read_f32(
            case["files"]["latents_trajectory"]["file"]
                .as_str()
                .unwrap(),
        );
        let reference_latents = &trajectory[trajectory.len() - last_latents.len()..];
        let diff_latents = last_latents
            .iter()
            .zip(reference_latents)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = reference_latents.iter().fold(0f32, |m, v| m.max(v.abs()));
        worst_latents = worst_latents.max(diff_latents);
        worst_latents_rel = worst_latents_rel.max(diff_latents / scale);
        assert!(
            diff_latents <= 1e-3,
            "{name}: final latents differ by {diff_latents}"
        );

        // Every noise draw of the pipeline equals our generator's stream, bit for bit.
        let draws = read_f32(case["files"]["noise_draws"]["file"].as_str().unwrap());
        let per_draw = last_latents.len();
        let mut generator = TorchGenerator::new(params.seed.into());
        let ours: Vec<f32> = (0..draws.len() / per_draw)
            .flat_map(|_| generator.randn(per_draw))
            .collect();
        assert_eq!(ours.len(), draws.len());
        assert!(
            draws
                .iter()
                .zip(&ours)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: noise"
        );

        eprintln!(
            "{name}: max |u8 diff| {diff_u8}, max |out diff| {diff_f:.2e}, final latents {diff_latents:.2e} (max |x| {scale:.1})"
        );
        worst_u8 = worst_u8.max(diff_u8);
        worst_out = worst_out.max(diff_f);
        assert!(diff_u8 <= 1, "{name}: u8 output differs by {diff_u8}");
        compared += 1;
    }
    eprintln!(
        "{compared} cases; worst u8 diff {worst_u8}, worst float diff {worst_out:.2e}, \
         worst final-latent diff {worst_latents:.2e} ({worst_latents_rel:.2e} of max |x|)"
    );
    assert_eq!(compared, 16);
}
