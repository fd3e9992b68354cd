//! Samplers and schedule types against diffusers (`tools/parity/make_sampler_parity.py`,
//! `tests/fixtures/sampler-parity/`): Euler, Heun, DPM++ 2M, DPM++ 2M SDE and UniPC on the model's own
//! spacing, Karras, exponential and SGM Uniform sigmas, and LCM, at several step counts and
//! strengths (with CFG and without). Each case checks
//! the whole schedule (integer timesteps exactly, fractional ones within 1e-6 relative),
//! img2img's start, every scheduler step replayed on diffusers' own model
//! outputs, and the whole img2img run on the tiny model (image within 1 level).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use loopback_core::settings::{Sampler, ScheduleType};
use loopback_engine::model::SdModel;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, img2img};
use loopback_engine::scheduler::{Scheduler, build};
use serde_json::Value;

use crate::common::{ROOT, reference_f32};

fn dir() -> PathBuf {
    Path::new(ROOT).join("tests/fixtures/sampler-parity")
}

/// The app's sampler and schedule for a fixture case; `None` for samplers not built yet.
fn sampler_of(case: &Value) -> Option<(Sampler, ScheduleType)> {
    let sampler = match case["sampler"].as_str()? {
        "euler" => Sampler::Euler,
        "dpmpp_2m" => Sampler::DpmPp2m,
        "dpmpp_2m_sde" => Sampler::DpmPp2mSde,
        "heun" => Sampler::Heun,
        "unipc" => Sampler::UniPc,
        "lcm" => Sampler::Lcm,
        _ => return None,
    };
    // The fixture's "automatic" is diffusers' default: the config's own spacing.
    let schedule = match case["schedule"].as_str()? {
        "automatic" => ScheduleType::Uniform,
        "karras" => ScheduleType::Karras,
        "exponential" => ScheduleType::Exponential,
        "sgm_uniform" => ScheduleType::SgmUniform,
        _ => return None,
    };
    Some((sampler, schedule))
}

/// Largest difference relative to the reference's largest magnitude.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

#[test]
fn samplers_and_schedules_match_diffusers() {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let tiny = Path::new(ROOT).join("tests/fixtures/tiny-sd");
    let model = SdModel::load(&tiny, &Device::Cpu, DType::F32).unwrap();
    let text = TextAndSchedule::load(&tiny).unwrap();
    let input = image::open(Path::new(ROOT).join("tests/fixtures/parity/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    let (mut cases, mut worst_sigma, mut worst_step, mut worst_u8) = (0, 0f32, 0f32, 0u8);
    for case in manifest["cases"].as_array().unwrap() {
        let Some((sampler, schedule)) = sampler_of(case) else {
            continue;
        };
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let strength = case["strength"].as_f64().unwrap();
        cases += 1;

        // The schedule.
        let mut sched: Box<dyn Scheduler<Vec<f32>> + Send> =
            build(sampler, schedule, &text.scheduler, steps).unwrap();
        let want_t: Vec<f64> =
            serde_json::from_value(case["scheduler"]["all_timesteps"].clone()).unwrap();
        let got_t: Vec<f64> = sched
            .timesteps()
            .iter()
            .map(|&t| f64::from(t as f32))
            .collect();
        let want_t: Vec<f64> = want_t.iter().map(|&t| f64::from(t as f32)).collect();
        // Integer timesteps exactly; Euler's fractional ones (Karras, exponential) within
        // float32 rounding of diffusers' float32 log/exp.
        assert_eq!(got_t.len(), want_t.len(), "{name}: timesteps");
        for (g, w) in got_t.iter().zip(&want_t) {
            let ok = if w.fract() == 0.0 {
                g == w
            } else {
                (g - w).abs() <= 1e-6 * w.abs()
            };
            assert!(ok, "{name}: timesteps {got_t:?} against {want_t:?}");
        }
        // LCM has no sigmas (null in the manifest).
        let want_s: Vec<f32> =
            serde_json::from_value(case["scheduler"]["all_sigmas"].clone()).unwrap_or_default();
        let d = rel_diff(sched.sigmas(), &want_s);
        worst_sigma = worst_sigma.max(d);
        assert!(d <= 1e-6, "{name}: sigmas differ by {d} (relative)");
        let run = sched.img2img(strength).unwrap();
        assert_eq!(
            run.start as u64,
            case["begin_index"].as_u64().unwrap(),
            "{name}: start"
        );

        // Every step on diffusers' own model outputs.
        let (trajectory, _) = reference_f32(&dir(), &case["files"]["latents_trajectory"]);
        let (outputs, _) = reference_f32(&dir(), &case["files"]["model_outputs"]);
        let (draws, _) = reference_f32(&dir(), &case["files"]["noise_draws"]);
        let per = 4 * 8 * 8;
        // The steps' noise: every draw after img2img's initial one, in order.
        let mut step_noise = draws[per..].chunks(per).map(<[f32]>::to_vec);
        let mut sample = trajectory[..per].to_vec();
        for (k, i) in run.enumerate() {
            let output = outputs[k * per..(k + 1) * per].to_vec();
            sample = sched
                .step(&output, i, &sample, &mut |_: &Vec<f32>| {
                    Ok(step_noise.next().expect("a recorded noise draw"))
                })
                .unwrap();
            let want = &trajectory[(k + 1) * per..(k + 2) * per];
            let d = rel_diff(&sample, want);
            worst_step = worst_step.max(d);
            assert!(d <= 1e-5, "{name}: step {k} differs by {d} (relative)");
        }

        // The whole img2img run.
        let params = Img2ImgParams {
            prompt: case["prompt"].as_str().unwrap().into(),
            // Null without guidance (no unconditional pass).
            negative_prompt: case["negative_prompt"].as_str().unwrap_or("").into(),
            sampler,
            schedule,
            steps,
            cfg: case["guidance_scale"].as_f64().unwrap(),
            strength,
            seed: case["seed"].as_u64().unwrap() as u32,
            conditioning: Default::default(),
            tiling: None,
            control: None,
        };
        let out = img2img(&model, &text, &input, &params, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        let reference =
            std::fs::read(dir().join(case["files"]["out_u8"]["file"].as_str().unwrap())).unwrap();
        let diff = crate::common::max_level_diff(out.as_raw(), &reference);
        worst_u8 = worst_u8.max(diff);
        assert!(diff <= 1, "{name}: image differs by {diff} levels");
    }
    assert!(cases >= 34, "only {cases} cases ran");
    eprintln!(
        "sampler parity: {cases} cases; sigmas {worst_sigma:e}, steps {worst_step:e} (relative), \
         images {worst_u8} level(s)"
    );
}

/// DPM++ SDE has no bit-exact reference (A1111 and diffusers draw its noise from a torchsde
/// Brownian tree; `docs/samplers.md`): on the tiny model it makes two UNet calls per step but
/// the last, is repeatable for a seed and depends on it.
#[test]
fn dpmpp_sde_runs_its_calls_and_follows_its_seed() {
    let tiny = Path::new(ROOT).join("tests/fixtures/tiny-sd");
    let model = SdModel::load(&tiny, &Device::Cpu, DType::F32).unwrap();
    let text = TextAndSchedule::load(&tiny).unwrap();
    let input = image::open(Path::new(ROOT).join("tests/fixtures/parity/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    let run = |seed: u32| {
        let params = Img2ImgParams {
            prompt: "a cup of coffee".into(),
            negative_prompt: String::new(),
            sampler: Sampler::DpmPpSde,
            schedule: ScheduleType::Automatic,
            steps: 10,
            cfg: 7.5,
            strength: 0.5,
            seed,
            conditioning: Default::default(),
            tiling: None,
            control: None,
        };
        let mut calls = 0;
        let out = img2img(&model, &text, &input, &params, &mut |_| {
            calls += 1;
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        (calls, out)
    };
    let (calls, a) = run(1234);
    assert_eq!(calls, 9, "5 steps: 2 calls each but the last");
    assert_eq!(run(1234).1, a, "the same seed gives the same image");
    assert_ne!(run(1235).1, a, "the noise follows the seed");
}

/// LCM with a tiny LCM-LoRA (`tools/parity/make_tiny_lcm_lora.py`, `tests/fixtures/lcm-lora/`:
/// the layout of the published LCM-LoRAs, merged at weight 1) gives diffusers' LCM img2img
/// result within 1 level, and differs from the model without it.
#[test]
fn lcm_with_an_lcm_lora_matches_diffusers() {
    use loopback_engine::load::lora::{LoraSet, LoraSpec};
    let dir = Path::new(ROOT).join("tests/fixtures/lcm-lora");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let tiny = Path::new(ROOT).join("tests/fixtures/tiny-sd");
    let text = TextAndSchedule::load(&tiny).unwrap();
    let input = image::open(Path::new(ROOT).join("tests/fixtures/parity/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    let mut outputs = Vec::new();
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let specs: Vec<LoraSpec> = case["lora"]["file"]
            .as_str()
            .map(|file| LoraSpec {
                path: dir.join(file),
                weight: case["lora"]["weight"].as_f64().unwrap(),
            })
            .into_iter()
            .collect();
        let set = LoraSet::read(&specs).unwrap();
        let model = SdModel::load_with_loras(&tiny, &Device::Cpu, DType::F32, &set).unwrap();
        let params = Img2ImgParams {
            prompt: case["prompt"].as_str().unwrap().into(),
            negative_prompt: case["negative_prompt"].as_str().unwrap_or("").into(),
            sampler: Sampler::Lcm,
            schedule: ScheduleType::Automatic,
            steps: case["steps"].as_u64().unwrap() as usize,
            cfg: case["guidance_scale"].as_f64().unwrap(),
            strength: case["strength"].as_f64().unwrap(),
            seed: case["seed"].as_u64().unwrap() as u32,
            conditioning: Default::default(),
            tiling: None,
            control: None,
        };
        let out = img2img(&model, &text, &input, &params, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        let reference =
            std::fs::read(dir.join(case["files"]["out_u8"]["file"].as_str().unwrap())).unwrap();
        let diff = crate::common::max_level_diff(out.as_raw(), &reference);
        assert!(diff <= 1, "{name}: image differs by {diff} levels");
        outputs.push((name.to_string(), out));
    }
    let with = &outputs
        .iter()
        .find(|(n, _)| n == "lora_n4_s050_cfg1")
        .unwrap()
        .1;
    let without = &outputs
        .iter()
        .find(|(n, _)| n == "base_n4_s050_cfg1")
        .unwrap()
        .1;
    let mean = with
        .as_raw()
        .iter()
        .zip(without.as_raw())
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / with.as_raw().len() as f64;
    assert!(
        mean > 5.0,
        "the LoRA changes the image (mean {mean} levels)"
    );
}

/// Where `steps × strength` is below 1, diffusers runs nothing (it fails) and A1111 runs one
/// step; the app runs the schedule's last step (one UNet call) with every sampler.
#[test]
fn every_sampler_runs_at_least_one_step() {
    use loopback_core::settings::Choice;
    let tiny = Path::new(ROOT).join("tests/fixtures/tiny-sd");
    let model = SdModel::load(&tiny, &Device::Cpu, DType::F32).unwrap();
    let text = TextAndSchedule::load(&tiny).unwrap();
    let input = image::open(Path::new(ROOT).join("tests/fixtures/parity/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    for &sampler in Sampler::ALL {
        let params = Img2ImgParams {
            prompt: "a cup of coffee".into(),
            negative_prompt: String::new(),
            sampler,
            schedule: ScheduleType::Automatic,
            steps: 4,
            cfg: 1.0,
            strength: 0.1,
            seed: 1,
            conditioning: Default::default(),
            tiling: None,
            control: None,
        };
        let mut calls = 0;
        let out = img2img(&model, &text, &input, &params, &mut |_| {
            calls += 1;
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(calls, 1, "{}", sampler.label());
        assert_ne!(out, input, "{}", sampler.label());
    }
}
