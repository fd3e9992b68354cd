//! Parity of the schedulers with diffusers, and the scheduler config reader.
//!
//! The golden runs come from `tools/parity/schedulers.py` (`tests/fixtures/schedulers/cases.json`):
//! each builds a sampler from a model scheduler config, takes the img2img timesteps for some
//! steps and strength, noises a fixed sample and denoises it with a fake model
//! `out = f32(0.1 * x + 0.01 * t / 1000)`, recording the sample after every step. Timesteps
//! must be equal, sigmas within 1e-6 relative and samples within 1e-4 (absolute, relative
//! above 1: one cosine-schedule DPM case reaches 6.5e4, where a float32 ulp is 4e-3); the
//! largest errors are printed per sampler (`cargo test -p loopback-engine --test engine schedulers -- --nocapture`).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use loopback_core::settings::{Choice, Sampler, ScheduleType};
use loopback_engine::scheduler::{NoiseSource, Scheduler, SchedulerConfig, TimestepSpacing, build};
use serde::Deserialize;

const SIGMA_REL_TOL: f64 = 1e-6;
/// Sample tolerance: absolute up to magnitude 1, relative above.
const SAMPLE_TOL: f64 = 1e-4;

#[derive(Debug, Deserialize)]
struct Fixtures {
    diffusers: String,
    original: Vec<f32>,
    noise: Vec<f32>,
    step_noises: Vec<Vec<f32>>,
    configs: BTreeMap<String, serde_json::Value>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    config: String,
    sampler: String,
    steps: usize,
    strength: f64,
    /// Float32 values (integers or Euler's float32 linspace): serde_json's default float
    /// parsing is not correctly rounded for float64, but reads float32 exactly.
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f64,
    begin_index: usize,
    noisy: Vec<f32>,
    trajectory: Vec<Vec<f32>>,
}

/// The largest errors seen for one sampler.
#[derive(Debug, Default)]
struct Errors {
    cases: usize,
    sigma_rel: f64,
    sample: f64,
}

fn fixtures() -> Fixtures {
    let path = Path::new(common::ROOT).join("tests/fixtures/schedulers/cases.json");
    let text = std::fs::read_to_string(&path).expect("read cases.json");
    serde_json::from_str(&text).expect("parse cases.json")
}

fn fake_model(x: &[f32], t: f64) -> Vec<f32> {
    x.iter()
        .map(|&v| (0.1 * f64::from(v) + 0.01 * t / 1000.0) as f32)
        .collect()
}

/// The largest `|a - b| / max(1, |b|)` (absolute below 1, relative above).
fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs() / f64::from(y.abs()).max(1.0))
        .fold(0.0, f64::max)
}

fn rel_diff(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    }
}

/// Runs one case; returns the largest sigma (relative) and sample (see [`max_diff`]) errors.
fn run_case(fx: &Fixtures, case: &Case) -> (f64, f64) {
    let name = format!(
        "{} {} steps {} strength {}",
        case.config, case.sampler, case.steps, case.strength
    );
    let config = SchedulerConfig::from_json(&fx.configs[&case.config].to_string())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let sampler = Sampler::parse(&case.sampler).expect("sampler key");
    let mut scheduler: Box<dyn Scheduler<Vec<f32>> + Send> =
        build(sampler, ScheduleType::Automatic, &config, case.steps)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

    let timesteps: Vec<f32> = scheduler.timesteps().iter().map(|&t| t as f32).collect();
    assert_eq!(timesteps, case.timesteps, "{name}: timesteps");
    assert!(
        scheduler
            .timesteps()
            .iter()
            .all(|&t| f64::from(t as f32) == t),
        "{name}: timesteps are float32 values"
    );
    assert_eq!(
        scheduler.sigmas().len(),
        case.sigmas.len(),
        "{name}: sigmas"
    );
    let mut sigma_err = 0.0f64;
    for (&ours, &theirs) in scheduler.sigmas().iter().zip(&case.sigmas) {
        sigma_err = sigma_err.max(rel_diff(f64::from(ours), f64::from(theirs)));
    }
    assert!(
        sigma_err <= SIGMA_REL_TOL,
        "{name}: sigma error {sigma_err:e}"
    );
    let init_err = rel_diff(scheduler.init_noise_sigma(), case.init_noise_sigma);
    assert!(init_err <= SIGMA_REL_TOL, "{name}: init_noise_sigma");

    let run = scheduler.img2img(case.strength).expect("strength");
    assert_eq!(run.start, case.begin_index, "{name}: begin index");
    assert_eq!(run.len(), case.trajectory.len(), "{name}: steps run");

    let mut sample = scheduler
        .add_noise(&fx.original, &fx.noise, run.start)
        .expect("add_noise");
    let mut sample_err = max_diff(&sample, &case.noisy);
    let mut draws = 0usize;
    for (k, i) in run.enumerate() {
        let t = scheduler.timesteps()[i];
        let input = scheduler.scale_model_input(&sample, i).expect("scale");
        let output = fake_model(&input, t);
        let noise: &mut NoiseSource<'_, Vec<f32>> = &mut |like: &Vec<f32>| {
            let drawn = fx.step_noises[draws].clone();
            assert_eq!(drawn.len(), like.len());
            draws += 1;
            Ok(drawn)
        };
        sample = scheduler
            .step(&output, i, &sample, noise)
            .unwrap_or_else(|e| panic!("{name}: step {i}: {e}"));
        let err = max_diff(&sample, &case.trajectory[k]);
        assert!(
            err <= SAMPLE_TOL,
            "{name}: step {k} (index {i}) differs by {err:e}"
        );
        sample_err = sample_err.max(err);
    }
    let expected_draws = if case.sampler == "euler-a" {
        case.trajectory.len()
    } else {
        0
    };
    assert_eq!(draws, expected_draws, "{name}: noise draws");
    (sigma_err, sample_err)
}

#[test]
fn schedulers_match_diffusers() {
    let fx = fixtures();
    assert!(!fx.cases.is_empty(), "no scheduler fixtures");
    let mut errors: BTreeMap<&str, Errors> = BTreeMap::new();
    for case in &fx.cases {
        let (sigma, sample) = run_case(&fx, case);
        let e = errors.entry(case.sampler.as_str()).or_default();
        e.cases += 1;
        e.sigma_rel = e.sigma_rel.max(sigma);
        e.sample = e.sample.max(sample);
    }
    println!("diffusers {}: {} cases", fx.diffusers, fx.cases.len());
    for (sampler, e) in &errors {
        println!(
            "  {sampler:16} {:3} cases, max sigma error {:.2e} (relative), max sample error {:.2e}",
            e.cases, e.sigma_rel, e.sample
        );
    }
    assert_eq!(errors.len(), 3, "every sampler has cases");
}

#[test]
fn config_defaults_and_unknown_keys() {
    let config = SchedulerConfig::from_json("{}").expect("empty config");
    assert_eq!(config, SchedulerConfig::default());
    assert_eq!(config.train_timesteps(), 1000);

    let config = SchedulerConfig::from_json(
        r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true, "trained_betas": null,
            "timestep_spacing": "trailing", "steps_offset": 1, "whatever": {"a": [1, 2]}}"#,
    )
    .expect("config with unknown keys");
    assert_eq!(config.class_name.as_deref(), Some("PNDMScheduler"));
    assert_eq!(config.timestep_spacing, Some(TimestepSpacing::Trailing));
    assert_eq!(config.steps_offset, Some(1));
    assert_eq!(config.trained_betas, None);
}

#[test]
fn bad_configs_are_clear_errors() {
    let err = SchedulerConfig::from_json("{\"beta_start\": ").expect_err("truncated JSON");
    assert!(err.to_string().contains("scheduler_config.json"), "{err}");
    let err = SchedulerConfig::from_json(r#"{"beta_schedule": "sqrt"}"#).expect_err("bad enum");
    assert!(err.to_string().contains("sqrt"), "{err}");
    let err = SchedulerConfig::from_json(r#"{"num_train_timesteps": "many"}"#).expect_err("type");
    assert!(err.to_string().contains("num_train_timesteps") || err.to_string().contains("many"));

    let missing = Path::new("/nonexistent/scheduler_config.json");
    let err = SchedulerConfig::load(missing).expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/"), "{err}");
}

#[test]
fn unsupported_options_are_refused() {
    let build_with = |json: &str, sampler: Sampler, steps: usize| {
        let config = SchedulerConfig::from_json(json).expect("config");
        build::<Vec<f32>>(sampler, ScheduleType::Automatic, &config, steps).map(|_| ())
    };
    let sample = r#"{"prediction_type": "sample"}"#;
    assert!(build_with(sample, Sampler::EulerA, 10).is_err());
    assert!(build_with(sample, Sampler::Ddim, 10).is_ok());
    assert!(build_with(sample, Sampler::DpmPp2mKarras, 10).is_ok());
    assert!(build_with(r#"{"thresholding": true}"#, Sampler::Ddim, 10).is_err());
    assert!(build_with(r#"{"rescale_betas_zero_snr": true}"#, Sampler::Ddim, 10).is_err());
    assert!(build_with("{}", Sampler::Ddim, 0).is_err());
    assert!(build_with("{}", Sampler::Ddim, 1001).is_err());
    assert!(build_with(r#"{"steps_offset": 5}"#, Sampler::Ddim, 1).is_ok());
    // Leading spacing with a large offset leaves the training range, where diffusers fails.
    assert!(build_with(r#"{"steps_offset": 5}"#, Sampler::Ddim, 500).is_err());
    assert!(build_with(r#"{"trained_betas": [0.1, 0.2]}"#, Sampler::Ddim, 1).is_err());
    // NumPy's arange gives trailing spacing 62 timesteps for 61 steps, the last -1.
    let trailing = r#"{"timestep_spacing": "trailing"}"#;
    assert!(build_with(trailing, Sampler::Ddim, 61).is_err());
    assert!(build_with(trailing, Sampler::EulerA, 61).is_ok());
}

#[test]
fn too_little_strength_runs_no_step() {
    let config = SchedulerConfig::default();
    for sampler in Sampler::ALL {
        let mut scheduler =
            build::<Vec<f32>>(*sampler, ScheduleType::Automatic, &config, 4).expect("build");
        let run = scheduler.img2img(0.2).expect("strength");
        assert!(run.is_empty(), "{sampler}");
        assert!(scheduler.img2img(1.5).is_err());
        let x = vec![0.0f32; 4];
        let end = scheduler.timesteps().len();
        assert!(scheduler.add_noise(&x, &x, end).is_err());
    }
}
