//! The app's state: [`Persisted`] (saved between sessions by eframe) and [`Session`] (this
//! run of the app only: images, textures, jobs in flight).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use egui::TextureHandle;
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

use loopback_core::imageops::finish::Finishing;
use loopback_core::metadata::Recipe;
use loopback_core::plan::LoopSpec;
use loopback_core::settings::{Settings, Size};
use loopback_engine::device::DeviceSpec;
use loopback_engine::load::lora::{self, LoraSpec};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::load::request::ModelRequest;

/// How many recent files are remembered.
pub const MAX_RECENT: usize = 8;

/// Everything restored at the next start (eframe persistence, key [`eframe::APP_KEY`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// Every setting of a run: the one source of truth the side panel edits.
    pub settings: Settings,
    /// The model: a preset name, a diffusers folder, or a folder name in `models/`.
    pub model: String,
    /// The device: `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    pub device: String,
    /// The precision: `auto`, `f32`, `bf16` or `f16` (what `--precision` takes).
    pub precision: String,
    /// The last images opened, newest first.
    pub recent_files: Vec<PathBuf>,
    /// Light, dark or follow the system.
    pub theme: egui::ThemePreference,
    /// The first-loop seed of the last run, for "reuse last".
    pub last_seed: Option<u32>,
    /// A replacement VAE (a `.safetensors` file or a VAE folder); empty: the model's own.
    pub vae: String,
    /// LoRAs merged into the model at load, besides the prompt's `<lora:…>` tags.
    pub loras: Vec<LoraChoice>,
}

/// A LoRA picked in the Model section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraChoice {
    /// The LoRA file.
    pub path: PathBuf,
    /// How strongly it applies (1 = as trained).
    pub weight: f64,
}

impl Default for Persisted {
    fn default() -> Self {
        Persisted {
            settings: Settings::default(),
            model: "sd15".into(),
            device: "auto".into(),
            precision: "auto".into(),
            recent_files: Vec::new(),
            theme: egui::ThemePreference::System,
            last_seed: None,
            vae: String::new(),
            loras: Vec::new(),
        }
    }
}

impl Persisted {
    /// The device as the engine understands it (`auto` when the text is not a device).
    pub fn device_spec(&self) -> DeviceSpec {
        self.device.parse().unwrap_or(DeviceSpec::Auto)
    }

    /// The load request for the chosen model, VAE, LoRAs (the picked ones and the prompt's
    /// `<lora:NAME:WEIGHT>` tags, looked up in `models/`) and ControlNet (the `controlnet`
    /// setting, loaded with the model). Errors: a tag naming a LoRA that cannot be found.
    pub fn model_request(&self) -> loopback_core::Result<ModelRequest> {
        let picked: Vec<LoraSpec> = self
            .loras
            .iter()
            .map(|l| LoraSpec {
                path: l.path.clone(),
                weight: l.weight,
            })
            .collect();
        let mut request = ModelRequest::new(self.model.trim(), self.device_spec());
        request.precision = self.precision.parse().unwrap_or_default();
        request.loras = lora::specs_for_prompt(
            &self.settings.prompt,
            &picked,
            &loopback_engine::load::resolve::default_search_dirs(),
        )?;
        let vae = self.vae.trim();
        request.vae = (!vae.is_empty()).then(|| PathBuf::from(vae));
        let controlnet = self.settings.controlnet.trim();
        request.controlnet = (!controlnet.is_empty()).then(|| controlnet.to_string());
        Ok(request)
    }

    /// Puts `path` first in the recent files.
    pub fn remember(&mut self, path: PathBuf) {
        self.recent_files.retain(|p| *p != path);
        self.recent_files.insert(0, path);
        self.recent_files.truncate(MAX_RECENT);
    }
}

/// Which image the viewer shows (or a filmstrip entry names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shown {
    /// The input image.
    Original,
    /// The output of loop `k` (1-based).
    Loop(usize),
    /// The finished image (last loop plus the finishing chain).
    Final,
    /// The latest step preview of the running loop.
    Preview,
}

impl Shown {
    /// A short name for menus and labels.
    pub fn label(self) -> String {
        match self {
            Shown::Original => "Original".into(),
            Shown::Loop(k) => format!("Loop {k}"),
            Shown::Final => "Final".into(),
            Shown::Preview => "Preview".into(),
        }
    }
}

/// An image and its texture.
#[derive(Clone)]
pub struct Picture {
    /// The pixels.
    pub image: Arc<DynamicImage>,
    /// The texture showing them.
    pub texture: TextureHandle,
}

impl Picture {
    /// The image's size in pixels.
    pub fn size(&self) -> Size {
        Size::new(self.image.width(), self.image.height())
    }
}

/// The input image.
#[derive(Clone)]
pub struct Input {
    /// Where it came from: a file, or `None` when pasted.
    pub path: Option<PathBuf>,
    /// A name for default file names (the file stem, or `pasted`).
    pub stem: String,
    /// The image and its texture.
    pub picture: Picture,
    /// The mean brightness the adaptive curve starts from (computed when loaded).
    pub mean: f64,
}

/// A finished run's result.
#[derive(Clone)]
pub struct Outcome {
    /// The last loop's output before the finishing chain (re-finished from this).
    pub unfinished: Arc<RgbImage>,
    /// The finished image shown as "Final".
    pub finished: Picture,
    /// The finishing the shown image was made with.
    pub applied: Finishing,
    /// The recipe written into saved PNGs (its finishing settings updated on save).
    pub recipe: Recipe,
}

/// Progress of the run in flight.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// 1-based loop number.
    pub loop_index: u32,
    /// Loops in the run.
    pub loops: u32,
    /// 1-based step within the loop.
    pub step: usize,
    /// Steps in this loop.
    pub steps: usize,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Estimated time left.
    pub eta: Option<Duration>,
    /// The running loop's plan entry.
    pub spec: Option<LoopSpec>,
}

impl Progress {
    /// Fraction of the whole run done, counting steps of earlier loops as whole loops.
    pub fn fraction(&self) -> f32 {
        if self.loops == 0 {
            return 0.0;
        }
        let within = if self.steps == 0 {
            0.0
        } else {
            self.step as f32 / self.steps as f32
        };
        ((self.loop_index.saturating_sub(1)) as f32 + within) / self.loops as f32
    }
}

/// The model as far as the session knows it.
#[derive(Default)]
pub struct ModelState {
    /// The loaded model and the (spec, device) it was loaded for.
    pub loaded: Option<(Arc<LoadedModel>, String, String)>,
    /// A line about the load in progress ("Downloading unet… 40 %", "Loading on CPU…").
    pub status: Option<String>,
    /// Download progress of the current file, 0–1, when known.
    pub download_fraction: Option<f32>,
    /// Start a run as soon as the model is loaded.
    pub run_when_loaded: Option<Shown>,
    /// The load key the settings ask for, remembered (see [`WantedKey`]).
    pub wanted: WantedKey,
}

/// The load key the settings ask for, remembered with what it was worked out from (the
/// model, VAE, LoRAs, prompt and ControlNet): working it out looks the prompt's `<lora:…>` tags up in
/// the model folders, so it is done again only when one of these changes, or after
/// [`WantedKey::forget`] (a rescan of the library), not on every frame.
#[derive(Debug, Default)]
pub struct WantedKey(Mutex<Option<(KeyInputs, Option<String>)>>);

/// What a load key is worked out from.
#[derive(Debug)]
struct KeyInputs {
    model: String,
    vae: String,
    loras: Vec<LoraChoice>,
    prompt: String,
    controlnet: String,
}

impl KeyInputs {
    fn of(persisted: &Persisted) -> Self {
        KeyInputs {
            model: persisted.model.clone(),
            vae: persisted.vae.clone(),
            loras: persisted.loras.clone(),
            prompt: persisted.settings.prompt.clone(),
            controlnet: persisted.settings.controlnet.clone(),
        }
    }

    fn matches(&self, persisted: &Persisted) -> bool {
        self.model == persisted.model
            && self.vae == persisted.vae
            && self.loras == persisted.loras
            && self.prompt == persisted.settings.prompt
            && self.controlnet == persisted.settings.controlnet
    }
}

impl WantedKey {
    /// The key `persisted` asks for: the one remembered when the model, VAE, LoRAs, prompt
    /// and ControlNet are as they were, else `work_out(persisted)` (`None`: the settings name a model
    /// that cannot be had), remembered for next time.
    pub fn get(
        &self,
        persisted: &Persisted,
        work_out: impl FnOnce(&Persisted) -> Option<String>,
    ) -> Option<String> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((inputs, key)) = &*slot
            && inputs.matches(persisted)
        {
            return key.clone();
        }
        let key = work_out(persisted);
        *slot = Some((KeyInputs::of(persisted), key.clone()));
        key
    }

    /// Forgets the remembered key: the next [`WantedKey::get`] works it out again.
    pub fn forget(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// View settings of the central image viewer.
#[derive(Debug, Clone)]
pub struct ViewState {
    /// The image shown.
    pub shown: Shown,
    /// The image on the left of the compare slider, when comparing.
    pub compare_with: Option<Shown>,
    /// Where the compare split is, 0–1 of the image width.
    pub split: f32,
    /// The visible part of the scene (image pixels); `Rect::ZERO` fits the image.
    pub scene_rect: egui::Rect,
    /// Set to show the image 1:1 next frame.
    pub want_one_to_one: bool,
    /// The size the shown image was laid out at; a change fits the new image.
    pub canvas: egui::Vec2,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            shown: Shown::Original,
            compare_with: None,
            split: 0.5,
            scene_rect: egui::Rect::ZERO,
            want_one_to_one: false,
            canvas: egui::Vec2::ZERO,
        }
    }
}

/// A question waiting for the user's answer.
#[derive(Debug, Clone)]
pub enum Pending {
    /// The opened PNG carries settings: load them?
    Metadata {
        /// The settings read from the file.
        settings: Box<Settings>,
        /// Values that could not be taken over.
        warnings: Vec<String>,
        /// The file's name.
        source: String,
    },
    /// These files exist: replace them?
    Overwrite {
        /// What to save.
        what: Vec<(Shown, PathBuf)>,
    },
}

/// Everything that lives only as long as the app runs.
#[derive(Default)]
pub struct Session {
    /// The input image.
    pub input: Option<Input>,
    /// Every finished loop of the current (or last) run, in order.
    pub loops: Vec<Picture>,
    /// The finished run's result.
    pub outcome: Option<Outcome>,
    /// The latest step preview.
    pub preview: Option<TextureHandle>,
    /// The run in flight.
    pub progress: Option<Progress>,
    /// The first-loop seed of the run in flight or last run.
    pub run_seed: Option<u32>,
    /// The settings of the run in flight or last run.
    pub run_settings: Option<Settings>,
    /// The model.
    pub model: ModelState,
    /// The viewer.
    pub view: ViewState,
    /// Questions waiting for an answer, oldest first.
    pub pending: Vec<Pending>,
    /// A file dialog is open (its buttons are disabled meanwhile).
    pub dialog_open: bool,
    /// An image is being read.
    pub loading_image: bool,
    /// A save is being written.
    pub saving: bool,
    /// Seconds per megapixel-step measured on the last finished run (for time estimates).
    pub seconds_per_mpstep: Option<f64>,
    /// Models, VAEs and LoRAs found in the search folders and the Hugging Face cache.
    pub library: Vec<loopback_engine::load::library::Entry>,
    /// The prompts' token counters.
    pub token_counter: super::token_counter::TokenCounter,
    /// The batch being run (several images dropped, or a folder), if any.
    pub batch: Option<Batch>,
    /// The results of the last batch, in order: each saved image's name, file and thumbnail.
    pub batch_results: Vec<(String, PathBuf, TextureHandle)>,
}

/// Several images run one after another (`super::batch`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The images, in order, with where each stands.
    pub items: Vec<BatchItem>,
    /// Where the results go: `<name>.png` each.
    pub out_dir: PathBuf,
    /// The item being loaded or run.
    pub current: Option<usize>,
    /// The settings at the start, for images that carry none.
    pub base: Settings,
}

/// One image of a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// The input file.
    pub input: PathBuf,
    /// Where it stands.
    pub status: ItemStatus,
}

/// Where a batch item stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemStatus {
    /// Not started.
    Pending,
    /// Being read.
    Loading,
    /// Its loops are running.
    Running,
    /// Its result was saved here.
    Done(PathBuf),
    /// Its result existed already (a batch run again resumes).
    Skipped,
    /// It could not be read or run: why.
    Failed(String),
}

impl Session {
    /// The picture `shown` names, if there is one.
    pub fn texture(&self, shown: Shown) -> Option<&TextureHandle> {
        match shown {
            Shown::Original => self.input.as_ref().map(|i| &i.picture.texture),
            Shown::Loop(k) => self.loops.get(k.checked_sub(1)?).map(|p| &p.texture),
            Shown::Final => self.outcome.as_ref().map(|o| &o.finished.texture),
            Shown::Preview => self.preview.as_ref(),
        }
    }

    /// The full-size image `shown` names (the preview has none).
    pub fn image(&self, shown: Shown) -> Option<Arc<DynamicImage>> {
        match shown {
            Shown::Original => self.input.as_ref().map(|i| Arc::clone(&i.picture.image)),
            Shown::Loop(k) => self
                .loops
                .get(k.checked_sub(1)?)
                .map(|p| Arc::clone(&p.image)),
            Shown::Final => self.outcome.as_ref().map(|o| Arc::clone(&o.finished.image)),
            Shown::Preview => None,
        }
    }

    /// Whether a run is in flight.
    pub fn running(&self) -> bool {
        self.progress.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn wanted_key_is_worked_out_again_only_when_its_inputs_change() {
        let wanted = WantedKey::default();
        let mut persisted = Persisted::default();
        let calls = Cell::new(0);
        let work_out = |p: &Persisted| {
            calls.set(calls.get() + 1);
            Some(format!(
                "{}|{}|{}|{}|{}",
                p.model,
                p.vae,
                p.loras.len(),
                p.settings.prompt,
                p.settings.controlnet
            ))
        };
        let expected = |p: &Persisted| {
            Some(format!(
                "{}|{}|{}|{}|{}",
                p.model,
                p.vae,
                p.loras.len(),
                p.settings.prompt,
                p.settings.controlnet
            ))
        };
        // Every frame asks; the folders are walked once.
        for _ in 0..3 {
            assert_eq!(wanted.get(&persisted, work_out), expected(&persisted));
        }
        assert_eq!(calls.get(), 1);
        // A setting the key does not depend on changes nothing.
        persisted.settings.cfg += 1.0;
        persisted.device = "cpu".into();
        wanted.get(&persisted, work_out);
        assert_eq!(calls.get(), 1);
        // Each input does.
        let changes: [fn(&mut Persisted); 6] = [
            |p| p.settings.prompt = "a cat <lora:tiny_a:0.5>".into(),
            |p| p.model = "sd21".into(),
            |p| p.vae = "vae.safetensors".into(),
            |p| {
                p.loras.push(LoraChoice {
                    path: "a.safetensors".into(),
                    weight: 1.0,
                })
            },
            |p| p.loras[0].weight = 0.5,
            |p| p.settings.controlnet = "tile".into(),
        ];
        for (n, change) in changes.into_iter().enumerate() {
            change(&mut persisted);
            assert_eq!(wanted.get(&persisted, work_out), expected(&persisted));
            wanted.get(&persisted, work_out);
            assert_eq!(calls.get(), n + 2);
        }
        // A rescan forgets it.
        wanted.forget();
        wanted.get(&persisted, work_out);
        assert_eq!(calls.get(), 8);
    }
}
