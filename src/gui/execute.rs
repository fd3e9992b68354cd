//! Carrying out [`Command`]s: the one place that starts jobs and changes the session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::app::App;
use super::command::{Command, FileTarget};
use super::jobs::Picked;
use super::state::{LoraChoice, Pending, Persisted, Picture, Shown};
use loopback_engine::load::request::ModelRequest;
use loopback_engine::run::memory::{self, EncoderWeights, ModelShape};
use loopback_engine::load::resolve::default_search_dirs;
use loopback_engine::run::runner::RunRequest;
use loopback_core::imageops::finish::Finishing;
use loopback_core::plan;
use loopback_core::settings::Settings;

/// Image files the Open… dialog offers.
const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

impl App {
    /// Carries out `command` (without waiting for anything: slow work goes to a job).
    pub fn execute(&mut self, ctx: &egui::Context, command: Command) {
        match command {
            Command::OpenDialog => self.open_dialog(),
            Command::OpenPath(path) => {
                self.session.loading_image = true;
                self.jobs.open(path);
            }
            Command::RequestPaste => ctx.send_viewport_cmd(egui::ViewportCommand::RequestPaste),
            Command::PasteImage(image) => {
                self.session.loading_image = true;
                self.jobs.paste(image);
            }
            Command::AcceptMetadata => self.accept_metadata(),
            Command::DismissMetadata => {
                self.session
                    .pending
                    .retain(|p| !matches!(p, Pending::Metadata { .. }));
            }
            Command::BrowseModel => {
                let dialog = rfd::AsyncFileDialog::new()
                    .set_title("Choose a diffusers model folder")
                    .pick_folder();
                self.session.dialog_open = true;
                self.jobs.dialog(dialog, Picked::Model);
            }
            Command::BrowseFile(target) => {
                let dialog = rfd::AsyncFileDialog::new()
                    .set_title(target.title())
                    .add_filter("safetensors", &["safetensors"])
                    .pick_file();
                self.session.dialog_open = true;
                self.jobs
                    .dialog(dialog, move |path| Picked::File(target, path));
            }
            Command::RemoveLora(index) => {
                if index < self.persisted.loras.len() {
                    self.persisted.loras.remove(index);
                }
            }
            Command::LoadModel => self.load_model(None),
            Command::CancelModelLoad => {
                self.jobs.cancel_load();
                self.load_id = None;
                self.session.model.status = None;
                self.session.model.download_fraction = None;
                self.session.model.run_when_loaded = None;
                self.toasts.info("Model loading cancelled");
            }
            Command::RefreshModels => {
                self.session.library = scan_library();
            }
            Command::Run => self.start_run(Shown::Original),
            Command::RunFrom(shown) => self.start_run(shown),
            Command::Cancel => {
                if self.session.running() {
                    self.jobs.cancel_run();
                } else if self.jobs.loading() {
                    self.execute(ctx, Command::CancelModelLoad);
                }
            }
            Command::SaveDialog(shown) => self.save_dialog(shown),
            Command::SaveAllDialog => {
                if self.session.loops.is_empty() {
                    self.toasts
                        .error("Nothing to save yet: run the loops first", None);
                    return;
                }
                let dialog = rfd::AsyncFileDialog::new()
                    .set_title("Save every loop into a folder")
                    .pick_folder();
                self.session.dialog_open = true;
                self.jobs.dialog(dialog, Picked::SaveAll);
            }
            Command::Save { what, overwrite } => self.save(what, overwrite),
            Command::DismissOverwrite => {
                self.session
                    .pending
                    .retain(|p| !matches!(p, Pending::Overwrite { .. }));
            }
            Command::ResetSettings => {
                self.persisted.settings = Settings::default();
                self.toasts.info("Settings reset to their defaults");
            }
            Command::ReuseLastSeed => match self.persisted.last_seed {
                Some(seed) => self.persisted.settings.seed = i64::from(seed),
                None => self.toasts.info("No run yet: there is no last seed"),
            },
            Command::Show(shown) => {
                if self.session.texture(shown).is_some() {
                    self.view.shown = shown;
                }
            }
            Command::Refinish => {
                self.finish_requested = None;
                self.refinish_if_needed();
            }
        }
    }

    /// Shows the Open… dialog on a worker thread.
    fn open_dialog(&mut self) {
        if self.session.dialog_open {
            return;
        }
        let mut dialog = rfd::AsyncFileDialog::new()
            .set_title("Open an image")
            .add_filter("Images", &IMAGE_EXTENSIONS);
        if let Some(dir) = self.persisted.recent_files.first().and_then(|p| p.parent()) {
            dialog = dialog.set_directory(dir);
        }
        self.session.dialog_open = true;
        self.jobs.dialog(dialog.pick_file(), Picked::Open);
    }

    /// Takes over the settings of the opened PNG.
    fn accept_metadata(&mut self) {
        let Some(index) = self
            .session
            .pending
            .iter()
            .position(|p| matches!(p, Pending::Metadata { .. }))
        else {
            return;
        };
        if let Pending::Metadata {
            settings, warnings, ..
        } = self.session.pending.remove(index)
        {
            self.persisted.settings = *settings;
            self.toasts.info("Settings loaded from the image");
            for warning in warnings {
                self.toasts.warning(warning);
            }
        }
    }

    /// Starts loading the chosen model; `then_run` starts a run from that image once loaded.
    pub(super) fn load_model(&mut self, then_run: Option<Shown>) {
        let spec = self.persisted.model.trim().to_string();
        if spec.is_empty() {
            self.toasts.error(
                "No model chosen: pick a preset, a local folder or Browse…",
                None,
            );
            return;
        }
        let request = match self.persisted.model_request() {
            Ok(request) => request,
            Err(e) => {
                self.toasts
                    .error("The model could not be loaded", Some(e.to_string()));
                return;
            }
        };
        self.session.model.status = Some(format!("Getting {spec} ready…"));
        self.session.model.download_fraction = None;
        self.session.model.run_when_loaded = then_run;
        self.load_key = Some(load_key(&request));
        self.load_id = Some(self.jobs.load_model(request));
    }

    /// Runs the loops on `from` (the input image, a loop's output or the final image).
    fn start_run(&mut self, from: Shown) {
        if self.session.running() {
            return;
        }
        let Some(image) = self.session.image(from) else {
            self.toasts.error(
                "Open an image first: drop a file on the window, use Open… or paste one",
                None,
            );
            return;
        };
        let settings = self.persisted.settings.clone();
        if let Err(e) = settings.validate() {
            self.toasts
                .error("A setting is out of range", Some(e.to_string()));
            return;
        }
        let model = match &self.session.model.loaded {
            Some((model, key, device)) if same_model(&self.persisted, key, device) => {
                Arc::clone(model)
            }
            _ => {
                self.load_model(Some(from));
                return;
            }
        };
        if from != Shown::Original {
            self.use_as_input(from);
        }
        let mut settings = settings;
        let seed = plan::resolve_seed(settings.seed);
        settings.seed = i64::from(seed);
        let plan = match self.plan_for(&settings) {
            Ok(plan) => plan,
            Err(e) => {
                self.toasts.error("The loop plan is refused", Some(e));
                return;
            }
        };
        // Refuse a plan that cannot fit the memory available (CPU) before starting.
        let shape = ModelShape::from_files(&model.model.files);
        let limit = if model.model.device.is_cpu() {
            memory::available_bytes()
        } else {
            None
        };
        let batch = if settings.cfg > 1.0 { 2 } else { 1 };
        let estimates = memory::estimate_plan(
            &shape,
            &plan,
            model.model.dtype,
            batch,
            limit,
            EncoderWeights::Kept,
        );
        if let Err(e) = memory::check_fits(&estimates, limit, model.model.dtype) {
            self.toasts
                .error("Not enough memory for this plan", Some(e.to_string()));
            return;
        }
        self.persisted.last_seed = Some(seed);
        self.session.run_seed = Some(seed);
        self.session.run_settings = Some(settings.clone());
        self.session.loops.clear();
        self.session.outcome = None;
        self.session.preview = None;
        self.session.progress = Some(Default::default());
        self.finish_requested = None;
        self.view.shown = Shown::Preview;
        let request = RunRequest {
            input: image,
            settings,
        };
        self.run_id = Some(self.jobs.run(model, request));
    }

    /// The plan of a run of `settings` on the input image.
    pub(super) fn plan_for(&self, settings: &Settings) -> Result<plan::Plan, String> {
        let input = self.session.input.as_ref().ok_or("no input image")?;
        let start =
            plan::start_size(settings, Some(input.picture.size())).map_err(|e| e.to_string())?;
        let seed = plan::resolve_seed(settings.seed);
        plan::plan(settings, start, seed, &[input.mean]).map_err(|e| e.to_string())
    }

    /// Makes a loop's output or the final image the new input (for "run from here").
    fn use_as_input(&mut self, from: Shown) {
        let (Some(image), Some(texture)) = (self.session.image(from), self.session.texture(from))
        else {
            return;
        };
        let texture = texture.clone();
        let Some(input) = &mut self.session.input else {
            return;
        };
        let rgb = loopback_core::io::to_diffusion_rgb(&image);
        input.mean = plan::rgb_mean(&rgb);
        input.stem = format!(
            "{}-{}",
            input.stem,
            from.label().to_lowercase().replace(' ', "")
        );
        input.path = None;
        input.picture = Picture { image, texture };
    }

    /// The default file name for `shown`: the input's name, the seed, and the loop.
    pub(super) fn default_name(&self, shown: Shown) -> String {
        let stem = self
            .session
            .input
            .as_ref()
            .map_or("image", |i| i.stem.as_str());
        let seed = self
            .session
            .run_seed
            .map(|s| format!("-{s}"))
            .unwrap_or_default();
        match shown {
            Shown::Loop(k) => format!("{stem}{seed}-loop{k}.png"),
            Shown::Final => format!("{stem}{seed}.png"),
            Shown::Original | Shown::Preview => format!("{stem}.png"),
        }
    }

    /// Shows the Save… dialog for `shown`.
    fn save_dialog(&mut self, shown: Shown) {
        if self.session.image(shown).is_none() {
            self.toasts
                .error("Nothing to save yet: run the loops first", None);
            return;
        }
        if self.session.dialog_open {
            return;
        }
        let mut dialog = rfd::AsyncFileDialog::new()
            .set_title("Save the image")
            .add_filter("PNG", &["png"])
            .set_file_name(self.default_name(shown));
        if let Some(dir) = self
            .session
            .input
            .as_ref()
            .and_then(|i| i.path.as_deref())
            .and_then(Path::parent)
        {
            dialog = dialog.set_directory(dir);
        }
        self.session.dialog_open = true;
        self.jobs.save_dialog(dialog.save_file(), shown);
    }

    /// Writes `what`, asking first when a file exists and `overwrite` is not set.
    fn save(&mut self, what: Vec<(Shown, PathBuf)>, overwrite: bool) {
        if !overwrite && what.iter().any(|(_, path)| path.exists()) {
            self.session.pending.push(Pending::Overwrite { what });
            return;
        }
        let texts = self.recipe_texts();
        let mut items = Vec::new();
        for (shown, path) in what {
            let Some(image) = self.session.image(shown) else {
                continue;
            };
            let texts = if matches!(shown, Shown::Final | Shown::Loop(_)) {
                texts.clone()
            } else {
                Vec::new()
            };
            items.push((image, path, texts));
        }
        if items.is_empty() {
            self.toasts
                .error("Nothing to save yet: run the loops first", None);
            return;
        }
        self.session.saving = true;
        self.jobs.save(items, overwrite);
    }

    /// The PNG texts of the last run, with the finishing as currently applied.
    fn recipe_texts(&self) -> Vec<(String, String)> {
        let Some(outcome) = &self.session.outcome else {
            return Vec::new();
        };
        let mut recipe = outcome.recipe.clone();
        set_finishing(&mut recipe.settings, &outcome.applied);
        recipe.png_texts()
    }

    /// Starts re-applying the finishing chain when the finishing settings changed.
    pub(super) fn refinish_if_needed(&mut self) {
        let Some(outcome) = &self.session.outcome else {
            return;
        };
        let wanted = self.persisted.settings.finishing();
        if wanted == outcome.applied && self.finish_requested.is_none() {
            return;
        }
        if self.finish_requested == Some(wanted) {
            return;
        }
        self.finish_generation += 1;
        self.finish_requested = Some(wanted);
        self.jobs.refinish(
            self.finish_generation,
            Arc::clone(&outcome.unfinished),
            wanted,
        );
    }

    /// Handles a file dialog's answer.
    pub(super) fn on_picked(&mut self, ctx: &egui::Context, picked: Picked) {
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
                let mut what: Vec<(Shown, PathBuf)> = (1..=self.session.loops.len())
                    .map(|k| (Shown::Loop(k), dir.join(self.default_name(Shown::Loop(k)))))
                    .collect();
                if self.session.outcome.is_some() {
                    what.push((Shown::Final, dir.join(self.default_name(Shown::Final))));
                }
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
            },
            Picked::Open(None)
            | Picked::Save(_, None)
            | Picked::SaveAll(None)
            | Picked::Model(None)
            | Picked::File(_, None) => {}
        }
    }
}

/// Adds `.png` when the chosen name has no extension.
fn with_png_extension(path: PathBuf) -> PathBuf {
    if path.extension().is_some() {
        path
    } else {
        path.with_extension("png")
    }
}

/// Writes the finishing-chain values into `settings`.
pub fn set_finishing(settings: &mut Settings, f: &Finishing) {
    settings.sharpness = f.sharpness;
    settings.brightness = f.brightness;
    settings.color = f.color;
    settings.contrast = f.contrast;
    settings.detail = f.detail;
    settings.smooth = f.smooth;
    settings.blur = f.blur;
    settings.contour = f.contour;
}

/// Whether `persisted` names the model `loaded` was loaded for.
pub fn same_model(persisted: &Persisted, key: &str, device: &str) -> bool {
    persisted.device == device
        && persisted
            .model_request()
            .is_ok_and(|request| load_key(&request) == key)
}

/// What a model was loaded for: the model, the replacement VAE and the LoRAs with their
/// weights (another of any of these means another load).
pub fn load_key(request: &ModelRequest) -> String {
    let loras: Vec<String> = request
        .loras
        .iter()
        .map(|l| format!("{}:{}", l.path.display(), l.weight))
        .collect();
    format!(
        "{}|vae={}|loras={}",
        request.spec,
        request
            .vae
            .as_ref()
            .map(|v| v.display().to_string())
            .unwrap_or_default(),
        loras.join(",")
    )
}

/// The model library the Model section offers: `models/` and the Hugging Face cache, with
/// hashes already cached.
pub fn scan_library() -> Vec<loopback_engine::load::library::Entry> {
    loopback_engine::load::library::scan(
        &default_search_dirs(),
        loopback_engine::load::hub::default_cache_dir().as_deref(),
        loopback_engine::load::weights::hash::HashCache::default_location().as_ref(),
    )
}
