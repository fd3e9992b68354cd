//! Starting the model load and the run, after the checks that come first: a model chosen,
//! the settings in range, the loaded model the one asked for (else it is loaded first), the
//! loop plan accepted and its memory estimate fitting.

use std::sync::Arc;

use super::app::App;
use super::model::{load_key, same_model};
use super::state::{Picture, Shown};
use loopback_core::plan::{self, PlanInput};
use loopback_core::settings::Settings;
use loopback_engine::run::memory::{self, EncoderWeights, ModelShape};
use loopback_engine::run::runner::RunRequest;

impl App {
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
    pub(super) fn start_run(&mut self, from: Shown) {
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
        let shape = ModelShape::from_files(&model.model.files).with_run(&settings);
        let limit = if model.model.device.is_cpu() {
            memory::available_bytes()
        } else {
            None
        };
        let batch = memory::unet_batch(settings.cfg);
        let dtypes = memory::Dtypes::for_compute(model.model.compute, model.model.dtype);
        if let Err(refusal) =
            memory::check_plan(&shape, &plan, dtypes, batch, limit, EncoderWeights::Kept)
        {
            self.toasts
                .error("Not enough memory for this plan", Some(refusal.to_string()));
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
            embeddings: Default::default(),
            input: image,
            settings,
        };
        self.run_id = Some(self.jobs.run(model, request));
    }

    /// The plan of a run of `settings` on the input image.
    pub(super) fn plan_for(&self, settings: &Settings) -> Result<plan::Plan, String> {
        let input = self.session.input.as_ref().ok_or("no input image")?;
        let input = PlanInput::Image {
            size: input.picture.size(),
            mean: input.mean,
        };
        plan::plan_for(settings, input, plan::resolve_seed(settings.seed))
            .map_err(|e| e.to_string())
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
}
