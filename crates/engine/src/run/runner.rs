//! The loop runner: runs a whole loopback job on the caller's thread ([`run_blocking`],
//! [`run_and_report`]) and reports [`Event`]s to a callback; a front end that must not wait
//! calls it on a thread of its own and keeps the cancel flag.
//!
//! Per loop (`docs/algorithm.md`, "One loop"): resize to the loop's size with the resize
//! mode, img2img at the loop's denoise and seed, optional colour correction towards the
//! original, then the result feeds the next loop. After the last loop the finishing chain runs.
//! Cancellation is checked after every denoising step; every finished loop's image has
//! already been sent, and [`Event::Cancelled`] carries them again.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use image::{DynamicImage, RgbImage};

use crate::conditioning::encode::{ModelEmbeddings, PromptOptions};
use crate::conditioning::prompt::ReadPrompt;
use crate::load::embeddings::Embeddings;
use crate::load::lora;
use crate::load::open::LoadedModel;
use crate::model::controlnet::ControlNet;
use crate::run::control::ControlParams;
use crate::run::pipeline::{Img2ImgParams, img2img_controlled};
use crate::run::preview::{latents_to_rgb, taesd_to_rgb};
use crate::run::tiling::{TileSettings, TileSpec};
use loopback_core::imageops::color::ColorReference;
use loopback_core::imageops::{finish, resize};
use loopback_core::io::to_diffusion_rgb;
use loopback_core::metadata::{ControlNetRecord, EmbeddingRecord, ModelInfo, Recipe};
use loopback_core::plan::{self, LoopSpec, PlanInput};
use loopback_core::settings::Settings;
use loopback_core::{Error, Result};

/// What a run reports, in order: per loop `LoopStarted`, `StepFinished` + `Preview` per step,
/// `LoopFinished`; then exactly one of `Finished`, `Cancelled` or `Failed` ([`run_and_report`]
/// reports it; [`run_blocking`] returns it as its result).
#[derive(Debug, Clone)]
pub enum Event {
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
    /// The textual-inversion embeddings the prompts may call (`Embeddings::scan`).
    pub embeddings: Arc<Embeddings>,
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

/// Runs `request` on the calling thread like [`run_blocking`], reporting every event to
/// `sink`, the one that ends the run included: `Finished`, `Cancelled` or `Failed` (the last
/// two with every finished loop's output). Front ends run it on a thread of their own and
/// keep `cancel` (checked after every step) to stop it.
pub fn run_and_report(
    model: &LoadedModel,
    request: &RunRequest,
    sink: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) {
    let mut job = Job {
        model,
        sink,
        cancel,
        loops: Vec::new(),
    };
    let result = job.run(request);
    let loops = std::mem::take(&mut job.loops);
    let last = match result {
        Ok(Some(output)) => Event::Finished(Box::new(output)),
        Ok(None) => Event::Cancelled { loops },
        Err(e) => Event::Failed {
            message: e.to_string(),
            loops,
        },
    };
    job.send(last);
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

impl<'a> Job<'a, '_> {
    fn send(&mut self, event: Event) {
        (self.sink)(event);
    }

    fn run(&mut self, request: &RunRequest) -> Result<Option<RunOutput>> {
        let settings = &request.settings;
        settings.validate()?;
        let prompt = self.prompt_text(&settings.prompt)?;
        let controlnet = self.controlnet(&settings.controlnet)?;
        let original = to_diffusion_rgb(&request.input);
        let input = PlanInput::of_rgb(&original);
        let seed = plan::resolve_seed(settings.seed);
        let mut plan = plan::plan_for(settings, input, seed)?;
        // Each loop re-plans from the same start with every known input's brightness.
        let start = plan.start;
        let mut means: Vec<f64> = input.mean().into_iter().collect();
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
                schedule: settings.schedule,
                steps: settings.steps as usize,
                cfg: settings.cfg,
                strength: spec.denoise,
                seed: spec.seed,
                conditioning: PromptOptions {
                    clip_skip: settings.clip_skip as usize,
                    pad_conds: settings.pad_conds,
                    embeddings: request.embeddings.clone(),
                },
                tiling: self.tiling(settings, &spec),
                control: controlnet.is_some().then_some(ControlParams {
                    weight: settings.control_weight,
                    start: settings.control_start,
                    end: settings.control_end,
                    mode: settings.control_mode,
                    preprocess: settings.control_preprocess,
                    resample_rate: settings.control_resample_rate,
                }),
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
            // An engine failure (out of GPU memory, say) names the loop and its size; the
            // loops finished before it are kept by the caller.
            let Some(mut out) = img2img_controlled(
                &model.model,
                controlnet,
                &model.text,
                &resized,
                &params,
                &mut on_step,
            )
            .map_err(|e| match e {
                Error::Engine(message) => Error::Engine(format!(
                    "loop {k} at {}x{}: {message}",
                    spec.width, spec.height
                )),
                other => other,
            })?
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
        recipe.controlnet =
            controlnet
                .and(self.model.controlnet.as_ref())
                .map(|c| ControlNetRecord {
                    name: c.name.clone(),
                    hash: Some(c.hash.clone()),
                });
        recipe.embeddings = self.embeddings_used(&prompt, settings, &request.embeddings)?;
        Ok(Some(RunOutput {
            unfinished: current,
            finished: Arc::new(finished),
            loops: self.loops.clone(),
            recipe,
        }))
    }

    /// The ControlNet the `controlnet` setting names: the one loaded with the model (whose
    /// name must match), or none when the setting is empty.
    fn controlnet(&self, setting: &str) -> Result<Option<&'a ControlNet>> {
        let setting = setting.trim();
        if setting.is_empty() {
            return Ok(None);
        }
        let wanted = Path::new(setting)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match &self.model.controlnet {
            Some(loaded) if loaded.name == wanted => Ok(Some(&loaded.net)),
            Some(loaded) => Err(Error::setting(
                "controlnet",
                setting,
                format!(
                    "the model was loaded with the ControlNet {}; load it again with this one",
                    loaded.name
                ),
            )),
            None => Err(Error::setting(
                "controlnet",
                setting,
                "the model was loaded without a ControlNet; load it again with this one",
            )),
        }
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

    /// The tiling of loop `spec` ([`TileSettings::for_loop`]).
    fn tiling(&self, settings: &Settings, spec: &LoopSpec) -> Option<TileSpec> {
        let model = &self.model.model;
        TileSettings::of(settings).for_loop(spec, model.native_size(), model.vae.downscale)
    }

    /// The embeddings the prompts call, for the recipe's `TI hashes`.
    fn embeddings_used(
        &self,
        prompt: &str,
        settings: &Settings,
        embeddings: &Embeddings,
    ) -> Result<Vec<EmbeddingRecord>> {
        let text = &self.model.text;
        let (width, width_2) = self.model.model.text_widths()?;
        let usable = ModelEmbeddings::new(&text.tokenizer, embeddings, width, width_2);
        let mut names: Vec<&str> = Vec::new();
        for p in [prompt, settings.negative_prompt.as_str()] {
            let read = ReadPrompt::new(&text.tokenizer, p, settings.steps as usize, &usable.index);
            for name in read.embeddings_used(&usable.index) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names
            .into_iter()
            .filter_map(|name| embeddings.get(name))
            .map(|e| EmbeddingRecord {
                name: e.name.clone(),
                hash: e.short_hash.clone(),
            })
            .collect())
    }

    fn model_info(&self) -> ModelInfo {
        ModelInfo {
            name: self.model.name.clone(),
            hash: self.model.hash.clone(),
            vae: self.model.vae.clone(),
            precision: Some(self.model.model.precision_label().to_string()),
        }
    }
}
