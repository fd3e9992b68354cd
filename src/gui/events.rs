//! Handling what jobs report: new images, file dialogs' answers, model load and run
//! progress, saves, re-finished images, the screenshot.

use std::sync::Arc;

use egui::TextureOptions;

use super::app::App;
use super::batch::RunEnd;
use super::command::{Command, FileTarget};
use super::jobs::{JobEvent, LoadedImage, Picked, ReadyImage};
use super::save::with_png_extension;
use super::state::{Input, LoraChoice, Outcome, Pending, Picture, Progress, Shown};
use loopback_engine::load::hub::DownloadEvent;
use loopback_engine::load::request::LoadEvent;
use loopback_engine::run::runner::{Event, RunOutput};

impl App {
    /// Handles one job event.
    pub(super) fn on_job_event(&mut self, ctx: &egui::Context, event: JobEvent) {
        match event {
            JobEvent::Image(result) => {
                self.session.loading_image = false;
                match result {
                    Ok(image) => {
                        self.on_image(ctx, *image);
                        self.batch_image_loaded();
                    }
                    // The current work is untouched (a batch goes on with its next image).
                    Err(message) if self.session.batch.is_some() => {
                        self.batch_image_failed(&message)
                    }
                    Err(message) => self.toasts.error("Cannot open the image", Some(message)),
                }
            }
            JobEvent::Picked(picked) => self.on_picked(ctx, picked),
            JobEvent::Saved(result) => {
                self.session.saving = false;
                match result {
                    Ok(paths) => {
                        let text = match paths.as_slice() {
                            [one] => format!("Saved {}", one.display()),
                            many => format!("Saved {} images", many.len()),
                        };
                        self.toasts.info(text);
                    }
                    Err(message) => self.toasts.error("Cannot save", Some(message)),
                }
            }
            JobEvent::Refinished {
                generation,
                image,
                color,
                applied,
            } => {
                if generation == self.finish_generation
                    && let Some(outcome) = &mut self.session.outcome
                {
                    outcome.finished.texture.set(color, TextureOptions::LINEAR);
                    outcome.finished.image = image;
                    outcome.applied = applied;
                    self.finish_requested = None;
                }
            }
            JobEvent::Load(id, event) => {
                if self.load_id == Some(id) {
                    self.on_load_event(id, event);
                }
            }
            JobEvent::Run(id, event, image) => {
                if self.run_id == Some(id) {
                    self.on_run_event(ctx, id, event, image);
                }
            }
            JobEvent::Screenshot(image) => self.on_screenshot(ctx, &image),
            JobEvent::Warnings(lines) => {
                for line in lines {
                    self.toasts.warning(line);
                }
            }
        }
    }

    /// Handles a file dialog's answer.
    fn on_picked(&mut self, ctx: &egui::Context, picked: Picked) {
        self.session.dialog_open = false;
        match picked {
            Picked::Open(Some(path)) => self.execute(ctx, Command::OpenPath(path)),
            Picked::Save(shown, Some(path)) => {
                let path = with_png_extension(path);
                self.execute(
                    ctx,
                    Command::Save {
                        what: vec![(shown, path)],
                        overwrite: false,
                    },
                );
            }
            Picked::SaveAll(Some(dir)) => {
                let what = self.save_all_paths(&dir);
                self.execute(
                    ctx,
                    Command::Save {
                        what,
                        overwrite: false,
                    },
                );
            }
            Picked::Model(Some(dir)) => {
                self.persisted.model = dir.display().to_string();
            }
            Picked::File(target, Some(path)) => match target {
                FileTarget::Checkpoint => self.persisted.model = path.display().to_string(),
                FileTarget::Vae => self.persisted.vae = path.display().to_string(),
                FileTarget::Lora => self.persisted.loras.push(LoraChoice { path, weight: 1.0 }),
                FileTarget::ControlNet | FileTarget::ControlNetFolder => {
                    self.persisted.settings.controlnet = path.display().to_string();
                }
            },
            Picked::Open(None)
            | Picked::Save(_, None)
            | Picked::SaveAll(None)
            | Picked::Model(None)
            | Picked::File(_, None) => {}
        }
    }

    /// A new input image: show it, keep the old run's loops out of the way.
    fn on_image(&mut self, ctx: &egui::Context, loaded: LoadedImage) {
        let LoadedImage {
            path,
            image,
            color,
            mean,
            metadata,
        } = loaded;
        let texture = ctx.load_texture("input", color, TextureOptions::LINEAR);
        let stem = path.as_deref().and_then(|p| p.file_stem()).map_or_else(
            || "pasted".to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        if let Some(path) = &path {
            self.persisted.remember(path.clone());
        }
        self.session
            .pending
            .retain(|p| !matches!(p, Pending::Metadata { .. }));
        if let Some((settings, warnings)) = metadata {
            self.session.pending.push(Pending::Metadata {
                settings: Box::new(settings),
                warnings,
                source: format!("{stem}.png"),
            });
        }
        self.session.input = Some(Input {
            path,
            stem,
            picture: Picture { image, texture },
            mean,
        });
        if !self.session.running() {
            self.session.loops.clear();
            self.session.outcome = None;
            self.session.preview = None;
            self.session.run_seed = None;
        }
        self.view.shown = Shown::Original;
        self.view.compare_with = None;
        self.view.scene_rect = egui::Rect::ZERO;
        if self.options.run && self.session.run_settings.is_none() {
            self.push(Command::Run);
        }
    }

    fn on_load_event(&mut self, id: u64, event: LoadEvent) {
        let model = &mut self.session.model;
        match event {
            LoadEvent::Download(DownloadEvent::Started { file, .. }) => {
                model.status = Some(format!("Downloading {file}…"));
                model.download_fraction = Some(0.0);
            }
            LoadEvent::Download(DownloadEvent::Progress {
                file,
                downloaded,
                total,
                bytes_per_sec,
                ..
            }) => {
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                let of = total
                    .map(|t| format!(" of {:.0} MiB", mib(t)))
                    .unwrap_or_default();
                model.status = Some(format!(
                    "Downloading {file}: {:.0} MiB{of} ({:.1} MiB/s)",
                    mib(downloaded),
                    bytes_per_sec / (1024.0 * 1024.0)
                ));
                model.download_fraction = total
                    .filter(|t| *t > 0)
                    .map(|t| (downloaded as f64 / t as f64) as f32);
            }
            LoadEvent::Download(_) => {}
            LoadEvent::Loading { device, .. } => {
                model.status = Some(format!("Loading the weights on {device}…"));
                model.download_fraction = None;
            }
            LoadEvent::Loaded {
                model: loaded,
                seconds,
            } => {
                model.status = None;
                model.download_fraction = None;
                // The key of what was asked for (the settings may change while loading).
                let spec = self.load_key.take().unwrap_or_default();
                self.toasts
                    .info(format!("Model {} loaded in {seconds:.1} s", loaded.name));
                model.loaded = Some((loaded, spec, self.persisted.device.clone()));
                self.jobs.load_done(id);
                self.load_id = None;
                if let Some(from) = self.session.model.run_when_loaded.take() {
                    self.push(Command::RunFrom(from));
                }
            }
            LoadEvent::Note(message) => self.toasts.warning(message),
            LoadEvent::Failed(message) => {
                model.status = None;
                model.download_fraction = None;
                model.run_when_loaded = None;
                self.jobs.load_done(id);
                self.load_id = None;
                self.toasts
                    .error("The model could not be loaded", Some(message.clone()));
                // A batch cannot go on without its model.
                self.batch_run_ended(RunEnd::Cancelled);
            }
            LoadEvent::Cancelled => {
                model.status = None;
                model.download_fraction = None;
                model.run_when_loaded = None;
                self.jobs.load_done(id);
                self.load_id = None;
            }
        }
    }

    /// A runner event; `image` is its image made ready on the job's thread (made here only
    /// if it is missing).
    fn on_run_event(
        &mut self,
        ctx: &egui::Context,
        id: u64,
        event: Event,
        image: Option<ReadyImage>,
    ) {
        let image = image.or_else(|| ReadyImage::of(&event));
        let progress = self.session.progress.get_or_insert_with(Progress::default);
        match event {
            Event::LoopStarted { spec, loops } => {
                progress.loop_index = spec.index;
                progress.loops = loops;
                progress.step = 0;
                progress.steps = spec.steps as usize;
                progress.spec = Some(spec);
            }
            Event::StepFinished {
                loop_index,
                step,
                total,
                elapsed,
                eta,
            } => {
                progress.loop_index = loop_index;
                progress.step = step;
                progress.steps = total;
                progress.elapsed = elapsed;
                progress.eta = eta;
            }
            Event::Preview { .. } => {
                let Some(ReadyImage { color, .. }) = image else {
                    return;
                };
                match &mut self.session.preview {
                    Some(texture) => texture.set(color, TextureOptions::LINEAR),
                    None => {
                        self.session.preview =
                            Some(ctx.load_texture("preview", color, TextureOptions::LINEAR));
                    }
                }
            }
            Event::LoopFinished { .. } => {
                let Some(ReadyImage {
                    color,
                    image: Some(image),
                }) = image
                else {
                    return;
                };
                let k = self.session.loops.len() + 1;
                let texture = ctx.load_texture(format!("loop-{k}"), color, TextureOptions::LINEAR);
                self.session.loops.push(Picture { image, texture });
            }
            Event::Finished(output) => {
                let Some(ReadyImage { color, .. }) = image else {
                    return;
                };
                let RunOutput {
                    unfinished,
                    finished,
                    recipe,
                    ..
                } = *output;
                let elapsed = progress.elapsed;
                let texture = ctx.load_texture("final", color, TextureOptions::LINEAR);
                let applied = recipe.settings.finishing();
                let mp_steps: f64 = recipe
                    .loops
                    .iter()
                    .map(|l| f64::from(l.width) * f64::from(l.height) * f64::from(l.steps) / 1e6)
                    .sum();
                if mp_steps > 0.0 && elapsed.as_secs_f64() > 0.0 {
                    self.session.seconds_per_mpstep = Some(elapsed.as_secs_f64() / mp_steps);
                }
                self.session.outcome = Some(Outcome {
                    unfinished,
                    finished: Picture {
                        image: finished,
                        texture,
                    },
                    applied,
                    recipe,
                });
                self.end_run(id);
                self.view.shown = Shown::Final;
                self.batch_run_ended(RunEnd::Finished);
                self.toasts.info(format!(
                    "Finished {} loops in {:.1} s",
                    self.session.loops.len(),
                    elapsed.as_secs_f64()
                ));
                if self.options.screenshot.is_some() {
                    self.screenshot_countdown = Some(5);
                }
            }
            Event::Cancelled { .. } => {
                self.end_run(id);
                self.toasts.info(format!(
                    "Cancelled; {} finished loop(s) kept",
                    self.session.loops.len()
                ));
                self.batch_run_ended(RunEnd::Cancelled);
            }
            Event::Failed { message, .. } => {
                self.end_run(id);
                if self.session.batch.is_some() {
                    self.batch_run_ended(RunEnd::Failed(message));
                } else {
                    self.toasts.error("The run failed", Some(message));
                }
            }
        }
    }

    /// The run ended: show the newest image it made.
    fn end_run(&mut self, id: u64) {
        self.jobs.run_done(id);
        self.run_id = None;
        self.session.progress = None;
        if self.view.shown == Shown::Preview {
            self.view.shown = match self.session.loops.len() {
                0 => Shown::Original,
                k => Shown::Loop(k),
            };
        }
    }

    /// `--screenshot`: counts frames after the run finished, then asks for a screenshot.
    pub(super) fn screenshot_tick(&mut self, ctx: &egui::Context) {
        match self.screenshot_countdown {
            Some(0) => {
                self.screenshot_countdown = None;
                self.jobs.screenshot();
            }
            Some(n) => {
                self.screenshot_countdown = Some(n - 1);
                ctx.request_repaint();
            }
            None => {}
        }
    }

    /// Writes the screenshot and closes the window.
    fn on_screenshot(&mut self, ctx: &egui::Context, image: &Arc<egui::ColorImage>) {
        let Some(path) = self.options.screenshot.clone() else {
            return;
        };
        let [w, h] = image.size;
        let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
        let result = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
            .ok_or_else(|| "the screenshot has no pixels".to_string())
            .and_then(|rgba| {
                loopback_core::io::save_image(
                    &path,
                    &image::DynamicImage::ImageRgba8(rgba),
                    &[],
                    true,
                )
                .map_err(|e| e.to_string())
            });
        match result {
            Ok(()) => eprintln!("screenshot written to {}", path.display()),
            Err(e) => eprintln!("screenshot failed: {e}"),
        }
        eprintln!("{}", self.frame_stats.summary());
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
}
