//! Background jobs: reading images, file dialogs, saving, re-finishing, the engine's model
//! loader and loop runner; and the model library scan.
//!
//! Every job runs on one thread of its own and reports [`JobEvent`]s on one channel, then
//! wakes the UI with [`egui::Context::request_repaint`]. The loader and the runner are the
//! engine's blocking functions called on that thread, their events sent as they come; the
//! job keeps an `Arc<AtomicBool>` that cancels them. The app drains the channel with
//! `try_recv` in `App::logic`, so the UI thread never waits for a job. Images are converted
//! to [`egui::ColorImage`]s on the job's thread; the UI thread only uploads them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};

use egui::ColorImage;
use image::{DynamicImage, RgbImage};

use super::state::Shown;
use loopback_core::imageops::finish::{self, Finishing};
use loopback_core::io::to_diffusion_rgb;
use loopback_core::metadata::read_texts_from_path;
use loopback_core::metadata::{embeddings_named, settings_from_texts};
use loopback_core::plan::rgb_mean;
use loopback_core::settings::Settings;
use loopback_engine::load::embeddings::{self, Embeddings};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::load::request::{self, LoadEvent, ModelRequest};
use loopback_engine::load::resolve::default_search_dirs;
use loopback_engine::run::runner::{self, Event, RunRequest};

/// The largest texture side the app uploads; bigger images are shown scaled down.
pub const MAX_TEXTURE_SIDE: u32 = 8192;

/// An image read from a file or the clipboard, ready to show.
pub struct LoadedImage {
    /// The file, or `None` when pasted.
    pub path: Option<PathBuf>,
    /// The image.
    pub image: Arc<DynamicImage>,
    /// The image for the texture.
    pub color: ColorImage,
    /// Mean brightness (for the adaptive curve).
    pub mean: f64,
    /// Settings found in the PNG's texts, with warnings.
    pub metadata: Option<(Settings, Vec<String>)>,
}

/// One image to save: the pixels, the file, and the PNG texts to write with it.
pub type SaveItem = (Arc<DynamicImage>, PathBuf, Vec<(String, String)>);

/// What a file dialog returned.
#[derive(Debug)]
pub enum Picked {
    /// An image to open.
    Open(Option<PathBuf>),
    /// Where to save an image.
    Save(Shown, Option<PathBuf>),
    /// The folder for every loop.
    SaveAll(Option<PathBuf>),
    /// A model folder.
    Model(Option<PathBuf>),
    /// A model file or folder (checkpoint, VAE, LoRA or ControlNet).
    File(super::command::FileTarget, Option<PathBuf>),
}

/// A runner event's image made ready for the UI on the job's thread (see [`JobEvent::Run`]).
pub struct ReadyImage {
    /// The pixels for the texture (scaled down past [`MAX_TEXTURE_SIDE`]).
    pub color: ColorImage,
    /// A loop's output as the session keeps it; `None` for a preview and the final image
    /// (the event carries that one).
    pub image: Option<Arc<DynamicImage>>,
}

impl ReadyImage {
    /// What the UI needs of `event`'s image: a step preview, a loop's output or the final
    /// image; `None` for events without one.
    pub fn of(event: &Event) -> Option<ReadyImage> {
        match event {
            Event::Preview { image, .. } => Some(ReadyImage {
                color: color_rgb(image),
                image: None,
            }),
            Event::LoopFinished { image, .. } => {
                let image = Arc::new(DynamicImage::ImageRgb8((**image).clone()));
                Some(ReadyImage {
                    color: color_image(&image, MAX_TEXTURE_SIDE),
                    image: Some(image),
                })
            }
            Event::Finished(output) => Some(ReadyImage {
                color: color_image(&output.finished, MAX_TEXTURE_SIDE),
                image: None,
            }),
            _ => None,
        }
    }
}

/// What a job reports.
pub enum JobEvent {
    /// An image was read (or could not be: the message names the file and the problem).
    Image(Result<Box<LoadedImage>, String>),
    /// A file dialog closed.
    Picked(Picked),
    /// Images were written (or one could not be).
    Saved(Result<Vec<PathBuf>, String>),
    /// The finishing chain was re-applied.
    Refinished {
        /// Which request this answers.
        generation: u64,
        /// The finished image.
        image: Arc<DynamicImage>,
        /// The image for the texture.
        color: ColorImage,
        /// The finishing used.
        applied: Finishing,
    },
    /// An event of model load job `id`.
    Load(u64, LoadEvent),
    /// An event of run `id`, with its image made ready for a texture (step previews, loop
    /// outputs and the final image).
    Run(u64, Event, Option<ReadyImage>),
    /// A screenshot of the window.
    Screenshot(Arc<ColorImage>),
    /// Something a job could not use but went on without (one line each, naming the file).
    Warnings(Vec<String>),
}

/// Converts an image for a texture, scaling it down when a side exceeds `max_side`.
pub fn color_image(image: &DynamicImage, max_side: u32) -> ColorImage {
    let scaled;
    let image = if image.width() > max_side || image.height() > max_side {
        scaled = image.resize(max_side, max_side, image::imageops::FilterType::Triangle);
        &scaled
    } else {
        image
    };
    let size = [image.width() as usize, image.height() as usize];
    match image {
        DynamicImage::ImageRgb8(rgb) => ColorImage::from_rgb(size, rgb.as_raw()),
        other => ColorImage::from_rgba_unmultiplied(size, other.to_rgba8().as_raw()),
    }
}

/// Converts an RGB image for a texture.
pub fn color_rgb(image: &RgbImage) -> ColorImage {
    let size = [image.width() as usize, image.height() as usize];
    ColorImage::from_rgb(size, image.as_raw())
}

/// The job channel and the cancel flags of the jobs that can be cancelled.
pub struct Jobs {
    tx: Sender<JobEvent>,
    rx: Receiver<JobEvent>,
    ctx: egui::Context,
    finisher: Finisher,
    next_id: u64,
    load: Option<(u64, Arc<AtomicBool>)>,
    run: Option<(u64, Arc<AtomicBool>)>,
}

impl Jobs {
    /// A job system that wakes `ctx` when a job reports.
    pub fn new(ctx: egui::Context) -> Self {
        let (tx, rx) = channel();
        Jobs {
            finisher: Finisher::new(tx.clone(), ctx.clone()),
            tx,
            rx,
            ctx,
            next_id: 0,
            load: None,
            run: None,
        }
    }

    /// The next event, if one is waiting (never blocks).
    pub fn try_next(&self) -> Option<JobEvent> {
        self.rx.try_recv().ok()
    }

    /// A sender for a job's thread, and the context to wake.
    fn reporter(&self) -> Reporter {
        Reporter {
            tx: self.tx.clone(),
            ctx: self.ctx.clone(),
        }
    }

    /// Runs `work` on a new thread and reports its event.
    fn spawn(&self, name: &str, work: impl FnOnce() -> JobEvent + Send + 'static) {
        let reporter = self.reporter();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || reporter.send(work()));
        if let Err(e) = spawned {
            self.reporter().send(JobEvent::Saved(Err(format!(
                "cannot start a worker thread: {e}"
            ))));
        }
    }

    /// Reads an image file.
    pub fn open(&self, path: PathBuf) {
        self.spawn("open-image", move || {
            JobEvent::Image(read_image(&path).map(Box::new))
        });
    }

    /// Prepares a pasted image.
    pub fn paste(&self, pasted: Arc<ColorImage>) {
        self.spawn("paste-image", move || {
            let [w, h] = pasted.size;
            let rgba: Vec<u8> = pasted
                .pixels
                .iter()
                .flat_map(|c| c.to_srgba_unmultiplied())
                .collect();
            let result = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
                .map(|rgba| {
                    let image = DynamicImage::ImageRgba8(rgba);
                    Box::new(prepare(None, image, None))
                })
                .ok_or_else(|| "the pasted image has no pixels".to_string());
            JobEvent::Image(result)
        });
    }

    /// Shows a file dialog on a worker thread; `make` builds the dialog's future.
    pub fn dialog<F, W>(&self, dialog: F, wrap: W)
    where
        F: std::future::Future<Output = Option<rfd::FileHandle>> + Send + 'static,
        W: FnOnce(Option<PathBuf>) -> Picked + Send + 'static,
    {
        self.spawn("file-dialog", move || {
            let picked = pollster::block_on(dialog).map(|h| h.path().to_path_buf());
            JobEvent::Picked(wrap(picked))
        });
    }

    /// Like [`Jobs::dialog`] for the save dialog, which needs to know what is saved.
    pub fn save_dialog<F>(&self, dialog: F, shown: Shown)
    where
        F: std::future::Future<Output = Option<rfd::FileHandle>> + Send + 'static,
    {
        self.spawn("file-dialog", move || {
            let picked = pollster::block_on(dialog).map(|h| h.path().to_path_buf());
            JobEvent::Picked(Picked::Save(shown, picked))
        });
    }

    /// Writes images (PNG texts included) atomically.
    pub fn save(&self, items: Vec<SaveItem>, overwrite: bool) {
        self.spawn("save-images", move || {
            let mut written = Vec::new();
            for (image, path, texts) in items {
                let texts: Vec<(&str, &str)> = texts
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                if let Err(e) = loopback_core::io::save_image(&path, &image, &texts, overwrite) {
                    return JobEvent::Saved(Err(e.to_string()));
                }
                written.push(path);
            }
            JobEvent::Saved(Ok(written))
        });
    }

    /// Re-applies the finishing chain (the newest request wins).
    pub fn refinish(&self, generation: u64, unfinished: Arc<RgbImage>, finishing: Finishing) {
        self.finisher.submit(FinishRequest {
            generation,
            unfinished,
            finishing,
        });
    }

    /// Starts loading a model, cancelling any load in progress; its events arrive as
    /// [`JobEvent::Load`] with the returned id.
    pub fn load_model(&mut self, request: ModelRequest) -> u64 {
        self.cancel_load();
        self.next_id += 1;
        let id = self.next_id;
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let reporter = self.reporter();
        let spawned = std::thread::Builder::new()
            .name("model-loader".into())
            .spawn(move || {
                request::load_and_report(&request, &flag, &mut |event| {
                    reporter.send(JobEvent::Load(id, event));
                });
            });
        if let Err(e) = spawned {
            self.reporter().send(JobEvent::Load(
                id,
                LoadEvent::Failed(format!("cannot start a worker thread: {e}")),
            ));
        }
        self.load = Some((id, cancel));
        id
    }

    /// Cancels the model load in progress, if any (a download stops within 64 KiB; loading
    /// the weights is not interrupted, but its result is then dropped).
    pub fn cancel_load(&mut self) {
        if let Some((_, flag)) = self.load.take() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Forgets a finished load job.
    pub fn load_done(&mut self, id: u64) {
        if self.load.as_ref().is_some_and(|(i, _)| *i == id) {
            self.load = None;
        }
    }

    /// Whether a model load job is in progress.
    pub fn loading(&self) -> bool {
        self.load.is_some()
    }

    /// Starts a run; its events arrive as [`JobEvent::Run`] with the returned id.
    pub fn run(&mut self, model: Arc<LoadedModel>, request: RunRequest) -> u64 {
        self.cancel_run();
        self.next_id += 1;
        let id = self.next_id;
        let cancel = Arc::new(AtomicBool::new(false));
        self.run = Some((id, Arc::clone(&cancel)));
        let reporter = self.reporter();
        let spawned = std::thread::Builder::new()
            .name("loopback-runner".into())
            .spawn(move || {
                // The embeddings are read here, off the UI thread, for every run (a file added
                // since the last run is found).
                let embeddings = Embeddings::scan(&embeddings::search_dirs(&[]));
                if !embeddings.warnings.is_empty() {
                    reporter.send(JobEvent::Warnings(embeddings.warnings.clone()));
                }
                let request = RunRequest {
                    embeddings: Arc::new(embeddings),
                    ..request
                };
                runner::run_and_report(
                    &model,
                    &request,
                    &mut |event| {
                        let image = ReadyImage::of(&event);
                        reporter.send(JobEvent::Run(id, event, image));
                    },
                    &cancel,
                );
            });
        if let Err(e) = spawned {
            self.reporter().send(JobEvent::Run(
                id,
                Event::Failed {
                    message: format!("cannot start a worker thread: {e}"),
                    loops: Vec::new(),
                },
                None,
            ));
        }
        id
    }

    /// Asks the run in flight to stop after the current step.
    pub fn cancel_run(&mut self) {
        if let Some((_, flag)) = &self.run {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Forgets a finished run.
    pub fn run_done(&mut self, id: u64) {
        if self.run.as_ref().is_some_and(|(i, _)| *i == id) {
            self.run = None;
        }
    }

    /// Asks for a screenshot of the next frame, reported as [`JobEvent::Screenshot`].
    pub fn screenshot(&self) {
        let reporter = self.reporter();
        self.ctx
            .request_screenshot(move |image| reporter.send(JobEvent::Screenshot(image)));
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        self.cancel_load();
        self.cancel_run();
    }
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

/// Reads an image file and whatever settings its PNG texts carry.
fn read_image(path: &Path) -> Result<LoadedImage, String> {
    let image = loopback_core::io::load_image(path).map_err(|e| e.to_string())?;
    let texts = read_texts_from_path(path).unwrap_or_default();
    let metadata = settings_from_texts(&texts).map(|(settings, mut warnings)| {
        let names = embeddings_named(&texts);
        warnings.extend(embeddings::missing(&names, &embeddings::search_dirs(&[])));
        (settings, warnings)
    });
    Ok(prepare(Some(path.to_path_buf()), image, metadata))
}

/// Everything the UI needs of a new input image.
fn prepare(
    path: Option<PathBuf>,
    image: DynamicImage,
    metadata: Option<(Settings, Vec<String>)>,
) -> LoadedImage {
    let mean = rgb_mean(&to_diffusion_rgb(&image));
    let color = color_image(&image, MAX_TEXTURE_SIDE);
    LoadedImage {
        path,
        image: Arc::new(image),
        color,
        mean,
        metadata,
    }
}

/// Sends a job's event and wakes the UI.
#[derive(Clone)]
struct Reporter {
    tx: Sender<JobEvent>,
    ctx: egui::Context,
}

impl Reporter {
    fn send(&self, event: JobEvent) {
        // A failed send means the app has closed: nothing to report to.
        if self.tx.send(event).is_ok() {
            self.ctx.request_repaint();
        }
    }
}

/// A request to re-apply the finishing chain.
struct FinishRequest {
    generation: u64,
    unfinished: Arc<RgbImage>,
    finishing: Finishing,
}

/// One worker that re-applies the finishing chain; while it works, newer requests replace
/// older waiting ones, so dragging a slider never queues up stale work.
struct Finisher {
    slot: Arc<Mutex<FinisherSlot>>,
    reporter: Reporter,
}

#[derive(Default)]
struct FinisherSlot {
    waiting: Option<FinishRequest>,
    working: bool,
}

impl Finisher {
    fn new(tx: Sender<JobEvent>, ctx: egui::Context) -> Self {
        Finisher {
            slot: Arc::default(),
            reporter: Reporter { tx, ctx },
        }
    }

    fn submit(&self, request: FinishRequest) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        slot.waiting = Some(request);
        if slot.working {
            return;
        }
        slot.working = true;
        drop(slot);
        let shared = Arc::clone(&self.slot);
        let reporter = self.reporter.clone();
        let spawned = std::thread::Builder::new()
            .name("refinish".into())
            .spawn(move || {
                loop {
                    let request = {
                        let mut slot = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        match slot.waiting.take() {
                            Some(request) => request,
                            None => {
                                slot.working = false;
                                return;
                            }
                        }
                    };
                    let image = DynamicImage::ImageRgb8(finish::apply(
                        &request.unfinished,
                        &request.finishing,
                    ));
                    let color = color_image(&image, MAX_TEXTURE_SIDE);
                    reporter.send(JobEvent::Refinished {
                        generation: request.generation,
                        image: Arc::new(image),
                        color,
                        applied: request.finishing,
                    });
                }
            });
        if spawned.is_err() {
            self.slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .working = false;
        }
    }
}
