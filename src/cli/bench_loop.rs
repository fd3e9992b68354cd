//! `bench --loop`: one whole img2img loop at a size (prompt encoding, VAE encode, the
//! denoising steps, VAE decode), timed phase by phase, on a diffusers folder.
//! `tools/bench/loop_torch.py` times the same loop with diffusers' img2img pipeline.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use image::{Rgb, RgbImage};
use loopback_core::settings::{Choice, Sampler, ScheduleType};
use loopback_engine::device::{self, DeviceSpec, Precision};
use loopback_engine::model::SdModel;
use loopback_engine::run::memory;
use loopback_engine::run::pipeline::{self, Img2ImgParams, TextAndSchedule};
use serde_json::json;

/// What `bench --loop` runs.
#[derive(Debug, Clone)]
pub struct LoopBench<'a> {
    /// The diffusers folder.
    pub model: &'a Path,
    /// Image side in pixels.
    pub size: u32,
    /// Scheduled steps; the loop runs the last `steps × denoise` of them.
    pub steps: usize,
    /// Denoising strength.
    pub denoise: f64,
    /// The sampler.
    pub sampler: Sampler,
    /// Its schedule type.
    pub schedule: ScheduleType,
    /// Where to run.
    pub device: DeviceSpec,
    /// At which precision.
    pub precision: Precision,
}

/// The input image: a smooth colour gradient (the time does not depend on the content).
/// `tools/bench/loop_torch.py` makes the same one.
pub fn gradient(size: u32) -> RgbImage {
    let scale = 255.0 / f64::from(size.max(2) - 1);
    RgbImage::from_fn(size, size, |x, y| {
        let (x, y) = (f64::from(x) * scale, f64::from(y) * scale);
        Rgb([x as u8, y as u8, ((x + y) / 2.0) as u8])
    })
}

/// Loads the model, runs one loop once and reports the whole loop's time, its phases and the
/// peak resident memory (the peak is reset after loading, where Linux allows it).
/// `bench.size` must be a multiple of the VAE's downscale (`bench` checks for 8).
pub fn run(bench: &LoopBench<'_>) -> anyhow::Result<serde_json::Value> {
    let (device, dtype) = device::select_with(bench.device, bench.precision)?;
    let load = Instant::now();
    let model = SdModel::load(bench.model, &device, dtype)?;
    let text = TextAndSchedule::load(bench.model)?;
    let load_s = load.elapsed().as_secs_f64();

    let image = gradient(bench.size);
    // The defaults of the app: CFG 7, with a prompt and an empty negative prompt.
    let params = Img2ImgParams {
        prompt: "a photograph of a cat sitting on a wooden table".into(),
        negative_prompt: String::new(),
        sampler: bench.sampler,
        schedule: bench.schedule,
        steps: bench.steps,
        cfg: 7.0,
        strength: bench.denoise,
        seed: 1,
        conditioning: Default::default(),
        tiling: None,
        control: None,
    };
    let before = memory::process_rss().unwrap_or(0);
    let reset = memory::reset_peak_rss();
    let start = Instant::now();
    let mut marks = Vec::new();
    let out = pipeline::img2img(&model, &text, &image, &params, &mut |_| {
        marks.push(start.elapsed().as_secs_f64());
        ControlFlow::Continue(())
    })?;
    device.synchronize()?;
    let loop_s = start.elapsed().as_secs_f64();
    let peak = memory::process_peak_rss().unwrap_or(0);
    anyhow::ensure!(out.is_some(), "the loop was cancelled");

    let phases = Phases::split(&marks, loop_s);
    Ok(json!({
        "model": bench.model.display().to_string(),
        "device": device::describe(&device),
        "dtype": format!("{dtype:?}"),
        "size": bench.size,
        "scheduled_steps": bench.steps,
        "denoise": bench.denoise,
        "sampler": bench.sampler.label(),
        "schedule": bench.sampler.schedule(bench.schedule).label(),
        "cfg": params.cfg,
        "threads": candle_core::utils::get_num_threads(),
        "load_s": load_s,
        "loop": {
            "seconds": loop_s,
            "steps_run": marks.len(),
            "before_steps_s": phases.before,
            "step_mean_s": phases.step,
            "after_steps_s": phases.after,
        },
        "rss_before_mib": mib(before),
        "peak_rss_mib": reset.then(|| mib(peak)),
        "peak_increase_mib": reset.then(|| mib(peak.saturating_sub(before))),
    }))
}

/// A loop's time split at its step callbacks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Phases {
    /// Prompt encoding, VAE encode and noise: up to the first step's start.
    before: f64,
    /// Mean time of a denoising step.
    step: f64,
    /// VAE decode and the image conversion: after the last step.
    after: f64,
}

impl Phases {
    /// `marks`: seconds from the loop's start at the end of each step; `total`: the loop's
    /// seconds. The first step's start is not observed, so it is taken as the mean of the
    /// others (of itself when it is the only one); where that would start it before the loop
    /// (a first step quicker than the others, as happens on tiny models), the steps are taken
    /// to fill the loop up to the last mark. The three parts always add up to `total`.
    fn split(marks: &[f64], total: f64) -> Self {
        let (Some(&first), Some(&last)) = (marks.first(), marks.last()) else {
            return Phases {
                before: total,
                step: 0.0,
                after: 0.0,
            };
        };
        let step = if marks.len() > 1 {
            (last - first) / (marks.len() - 1) as f64
        } else {
            first / 2.0
        };
        let after = total - last;
        if first >= step {
            Phases {
                before: first - step,
                step,
                after,
            }
        } else {
            Phases {
                before: 0.0,
                step: last / marks.len() as f64,
                after,
            }
        }
    }
}

/// Bytes in MiB, for the reports (this one and `bench`'s).
pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_at_the_step_marks() {
        // Steps of 2 s after 3 s of encoding, then 1.5 s of decoding.
        let p = Phases::split(&[5.0, 7.0, 9.0], 10.5);
        assert_eq!(
            p,
            Phases {
                before: 3.0,
                step: 2.0,
                after: 1.5
            }
        );
        // A first step quicker than the mean of the others: nothing before the steps, and the
        // parts still add up.
        let quick = Phases::split(&[1.0, 4.0, 7.0], 8.0);
        assert_eq!(
            quick,
            Phases {
                before: 0.0,
                step: 7.0 / 3.0,
                after: 1.0
            }
        );
        let none = Phases::split(&[], 4.0);
        assert_eq!(none.before, 4.0);
    }

    #[test]
    fn the_gradient_spans_the_range() {
        let g = gradient(64);
        assert_eq!(g.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(g.get_pixel(63, 63).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(63, 0).0, [255, 0, 127]);
    }
}
