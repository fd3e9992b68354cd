//! The loop runner: runs a whole loopback job on a worker thread and reports [`Event`]s.
//!
//! Per loop (`loopback-algorithm.md`, "One loop"): resize to the loop's size with the resize
//! mode, img2img at the loop's denoise and seed, optional colour correction towards the
//! original, then the result feeds the next loop. After the last loop the finishing chain runs.
//! Cancellation is checked after every denoising step; every finished loop's image has
//! already been sent, and [`Event::Cancelled`] carries them again.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::{DynamicImage, RgbImage};

use crate::load::lora;
use crate::load::open::LoadedModel;
use crate::run::pipeline::{Img2ImgParams, img2img};
use crate::run::preview::{latents_to_rgb, taesd_to_rgb};
use loopback_core::imageops::color::ColorReference;
use loopback_core::imageops::{finish, resize};
use loopback_core::io::to_diffusion_rgb;
use loopback_core::metadata::{ModelInfo, Recipe};
use loopback_core::plan::{self, LoopSpec, Plan};
use loopback_core::settings::{Settings, Size};
use loopback_core::{Error, Result};

/// What the runner reports, in order: `ModelLoaded`, then per loop `LoopStarted`,
/// `StepFinished` + `Preview` per step, `LoopFinished`; then exactly one of `Finished`,
/// `Cancelled` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// The model is ready (loaded now, or reused).
    ModelLoaded {
        /// The model's name.
        name: String,
        /// Seconds spent loading (0 when reused).
        seconds: f64,
    },
    /// A loop begins.
    LoopStarted {
        /// The loop's plan entry.
        spec: LoopSpec,
        /// Loops in the run.
        loops: u32,
    },
    /// A denoising step finished.
    StepFinished {
        /// 1-based loop number.
        loop_index: u32,
        /// 1-based step within the loop.
        step: usize,
        /// Steps in this loop.
        total: usize,
        /// Time since the run started.
        elapsed: Duration,
        /// Estimated time left for the whole run.
        eta: Option<Duration>,
    },
    /// A cheap preview of the latents after a step (latent resolution).
    Preview {
        /// 1-based loop number.
        loop_index: u32,
        /// The preview image.
        image: Arc<RgbImage>,
    },
    /// A loop finished; its (colour-corrected) result.
    LoopFinished {
        /// 1-based loop number.
        index: u32,
        /// The loop's output.
        image: Arc<RgbImage>,
    },
    /// The run finished.
    Finished(Box<RunOutput>),
    /// The run was cancelled; the loops that finished are kept.
    Cancelled {
        /// Every finished loop's output, in order.
        loops: Vec<Arc<RgbImage>>,
    },
    /// The run failed.
    Failed {
        /// One line saying what went wrong.
        message: String,
        /// Every finished loop's output, in order.
        loops: Vec<Arc<RgbImage>>,
    },
}

/// The result of a finished run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The last loop's output, before the finishing chain (re-finish from this).
    pub unfinished: Arc<RgbImage>,
    /// The final image, after the finishing chain.
    pub finished: Arc<DynamicImage>,
    /// Every loop's output, in order.
    pub loops: Vec<Arc<RgbImage>>,
    /// Everything needed to reproduce the run (written into the PNG).
    pub recipe: Recipe,
}

/// A job for the runner.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The input image as given (alpha is flattened onto white for diffusion).
    pub input: Arc<DynamicImage>,
    /// Every setting.
    pub settings: Settings,
}

/// A running job: its events and its cancel switch.
#[derive(Debug)]
pub struct RunHandle {
    /// Events, ending with `Finished`, `Cancelled` or `Failed`.
    pub events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RunHandle {
    /// Asks the run to stop after the current step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// A flag that cancels the run when set (for Ctrl-C handlers).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancel)
    }

    /// Waits for the worker thread to end.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts `request` on a worker thread with `model`.
pub fn spawn(model: Arc<LoadedModel>, request: RunRequest) -> RunHandle {
    spawn_with_cancel(model, request, Arc::new(AtomicBool::new(false)))
}

/// Like [`spawn`], with a cancel flag the caller already holds (e.g. one a Ctrl-C handler
/// sets); [`RunHandle::cancel`] sets the same flag.
pub fn spawn_with_cancel(
    model: Arc<LoadedModel>,
    request: RunRequest,
    cancel: Arc<AtomicBool>,
) -> RunHandle {
    let (tx, events) = channel();
    let flag = Arc::clone(&cancel);
    let thread = std::thread::Builder::new()
        .name("loopback-runner".into())
        .spawn(move || {
            let _ = tx.send(Event::ModelLoaded {
                name: model.name.clone(),
                seconds: 0.0,
            });
            let mut sink = |event: Event| {
                let _ = tx.send(event);
            };
            let mut job = Job {
                model: &model,
                sink: &mut sink,
                cancel: &flag,
                loops: Vec::new(),
            };
            let result = job.run(&request);
            let loops = std::mem::take(&mut job.loops);
            let last = match result {
                Ok(Some(output)) => Event::Finished(Box::new(output)),
                Ok(None) => Event::Cancelled { loops },
                Err(e) => Event::Failed {
                    message: e.to_string(),
                    loops,
                },
            };
            let _ = tx.send(last);
        })
        .ok();
    RunHandle {
        events,
        cancel,
        thread,
    }
}

/// Runs `request` on the calling thread, passing every event except the final one to `sink`;
/// `Ok(None)` when cancelled (through `cancel`, checked after every step).
pub fn run_blocking(
    model: &LoadedModel,
    request: &RunRequest,
    sink: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> Result<Option<RunOutput>> {
    Job {
        model,
        sink,
        cancel,
        loops: Vec::new(),
    }
    .run(request)
}

struct Job<'a, 's> {
    model: &'a LoadedModel,
    sink: &'s mut dyn FnMut(Event),
    cancel: &'a AtomicBool,
    loops: Vec<Arc<RgbImage>>,
}

/// Cost of a loop in "latent pixel steps", for the ETA.
fn cost(spec: &LoopSpec) -> f64 {
    f64::from(spec.width) * f64::from(spec.height) * spec.steps as f64
}

impl Job<'_, '_> {
    fn send(&mut self, event: Event) {
        (self.sink)(event);
    }

    fn run(&mut self, request: &RunRequest) -> Result<Option<RunOutput>> {
        let settings = &request.settings;
        settings.validate()?;
        let prompt = self.prompt_text(&settings.prompt)?;
        let original = to_diffusion_rgb(&request.input);
        let start = plan::start_size(
            settings,
            Some(Size::new(original.width(), original.height())),
        )?;
        let seed = plan::resolve_seed(settings.seed);
        let mut means = vec![plan::rgb_mean(&original)];
        let mut plan = plan::plan(settings, start, seed, &means)?;
        let reference = settings
            .color_correction
            .then(|| ColorReference::new(&request.input.to_rgb8()));

        let started = Instant::now();
        let mut done_cost = 0.0;
        let mut current = Arc::new(original);
        for k in 1..=settings.loops {
            plan = plan::plan(settings, start, seed, &means)?;
            let spec = plan.loops[(k - 1) as usize];
            let total_cost: f64 = plan.loops.iter().map(cost).sum();
            self.send(Event::LoopStarted {
                spec,
                loops: settings.loops,
            });
            let resized =
                resize::resize_image(settings.resize_mode, &current, spec.width, spec.height)?;
            let params = Img2ImgParams {
                prompt: prompt.clone(),
                negative_prompt: settings.negative_prompt.clone(),
                sampler: settings.sampler,
                steps: settings.steps as usize,
                cfg: settings.cfg,
                strength: spec.denoise,
                seed: spec.seed,
            };
            let per_step = f64::from(spec.width) * f64::from(spec.height);
            let model = self.model;
            let cancel = self.cancel;
            let sink = &mut *self.sink;
            let mut on_step = |p: crate::run::pipeline::StepProgress<'_>| {
                let done = done_cost + per_step * p.step as f64;
                let elapsed = started.elapsed();
                let eta =
                    (done > 0.0).then(|| elapsed.mul_f64(((total_cost - done) / done).max(0.0)));
                sink(Event::StepFinished {
                    loop_index: k,
                    step: p.step,
                    total: p.total,
                    elapsed,
                    eta,
                });
                let preview = match &model.taesd {
                    Some(taesd) => taesd_to_rgb(taesd, p.latents),
                    None => latents_to_rgb(p.latents),
                };
                if let Ok(image) = preview {
                    sink(Event::Preview {
                        loop_index: k,
                        image: Arc::new(image),
                    });
                }
                if cancel.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let Some(mut out) =
                img2img(&model.model, &model.text, &resized, &params, &mut on_step)?
            else {
                return Ok(None);
            };
            done_cost += cost(&spec);
            if let Some(reference) = &reference {
                out = reference.apply(&out);
            }
            let out = Arc::new(out);
            self.loops.push(Arc::clone(&out));
            self.send(Event::LoopFinished {
                index: k,
                image: Arc::clone(&out),
            });
            means.push(plan::rgb_mean(&out));
            current = Arc::clone(&out);
            if self.cancel.load(Ordering::SeqCst) && k < settings.loops {
                return Ok(None);
            }
        }
        let finished = finish::apply_dynamic(
            &DynamicImage::ImageRgb8((*current).clone()),
            &settings.finishing(),
        );
        let mut recipe = Recipe::new(settings, &plan, Some(self.model_info()));
        recipe.loras = self.model.loras.clone();
        Ok(Some(RunOutput {
            unfinished: current,
            finished: Arc::new(finished),
            loops: self.loops.clone(),
            recipe,
        }))
    }

    /// The prompt without its `<lora:…>` tags (what the tokenizer gets); fails when a tag asks
    /// for a LoRA the model was not loaded with (the set is merged at load).
    fn prompt_text(&self, prompt: &str) -> Result<String> {
        let (text, tags) = lora::split_prompt(prompt)?;
        for tag in tags {
            let loaded = self
                .model
                .loras
                .iter()
                .any(|l| l.name == tag.name && (l.weight - tag.weight).abs() < 1e-9);
            if !loaded {
                return Err(Error::setting(
                    "prompt",
                    format!("<lora:{}:{}>", tag.name, tag.weight),
                    "the model was loaded without this LoRA at this weight; reload it with the \
                     prompt's LoRAs",
                ));
            }
        }
        Ok(text)
    }

    fn model_info(&self) -> ModelInfo {
        ModelInfo {
            name: self.model.name.clone(),
            hash: self.model.hash.clone(),
            vae: self.model.vae.clone(),
        }
    }
}

/// The plan a run of `settings` on `input` will follow (adaptive sizes estimated).
pub fn preview_plan(settings: &Settings, input: &DynamicImage, seed: u32) -> Result<Plan> {
    let rgb = to_diffusion_rgb(input);
    let start = plan::start_size(settings, Some(Size::new(rgb.width(), rgb.height())))?;
    plan::plan(settings, start, seed, &[plan::rgb_mean(&rgb)])
}
