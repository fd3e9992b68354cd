//! Getting a model ready: resolve what the user named (preset, folder, name in `models/`),
//! download a preset if needed (with [`DownloadEvent`]s), and load it on a device, on the
//! caller's thread: [`load_blocking`] returns the model or the error, [`load_and_report`]
//! reports the job's end as an event too. A front end that must not wait (the GUI) calls
//! them on a thread of its own and keeps the cancel flag.
//!
//! The same job serves the CLI (progress bar) and the GUI (progress in the side panel, with
//! Cancel). A loaded model is an `Arc<LoadedModel>`; keep it and pass it to
//! [`crate::run::runner::run_blocking`] for as many runs as wanted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::DType;

use crate::device::{self, DeviceSpec};
use crate::load::checkpoint::CheckpointOptions;
use crate::load::hub::{self, DownloadEvent, FetchOptions};
use crate::load::lora::LoraSpec;
use crate::load::open::{LoadOptions, LoadedModel, ModelPath};
use crate::load::resolve::{self, ModelSource};

use crate::load::weights::hash::HashCache;
use loopback_core::{Error, Result};

/// Which model to get ready, and where.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// A preset name (`sd15`, `sd21`, `sd-turbo`), a diffusers folder, a `.safetensors`
    /// checkpoint, or the name of either in one of `search_dirs`.
    pub spec: String,
    /// Where to run it.
    pub device: DeviceSpec,
    /// The precision of the weights and the compute (`--precision`).
    pub precision: device::Precision,
    /// Never download; use the Hugging Face cache only (also set by `HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Folders searched for local models by name ([`resolve::default_search_dirs`]).
    pub search_dirs: Vec<PathBuf>,
    /// The Hugging Face cache to use; `None`: the standard one.
    pub cache_dir: Option<PathBuf>,
    /// A replacement VAE (`--vae`): a `.safetensors` file or a diffusers VAE folder.
    pub vae: Option<PathBuf>,
    /// How to read a single-file checkpoint (config folder, prediction type).
    pub checkpoint: CheckpointOptions,
    /// Where model hashes are cached; `None`: the app's cache folder.
    pub hash_cache: Option<PathBuf>,
    /// LoRAs merged into the weights at load (a different set means another load); see
    /// [`crate::load::lora::specs_for_prompt`] for the prompt's `<lora:…>` tags.
    pub loras: Vec<LoraSpec>,
    /// A ControlNet loaded with the model: a file or folder, or its name in the
    /// `ControlNet/` folder of a search folder (the `controlnet` setting); `None`: none.
    pub controlnet: Option<String>,
}

impl ModelRequest {
    /// A request for `spec` on `device` with the default search folders and cache.
    pub fn new(spec: impl Into<String>, device: DeviceSpec) -> Self {
        ModelRequest {
            spec: spec.into(),
            device,
            precision: device::Precision::Auto,
            offline: false,
            search_dirs: resolve::default_search_dirs(),
            cache_dir: None,
            vae: None,
            checkpoint: CheckpointOptions::default(),
            hash_cache: None,
            loras: Vec::new(),
            controlnet: None,
        }
    }
}

/// What a load job reports, in order: any number of `Download`s (presets not yet cached),
/// `Loading`, then exactly one of `Loaded`, `Failed` or `Cancelled`.
#[derive(Debug, Clone)]
pub enum LoadEvent {
    /// Download progress of a preset's files.
    Download(DownloadEvent),
    /// The weights are being read (memory-mapped) onto the device.
    Loading {
        /// The diffusers folder.
        path: PathBuf,
        /// The device, in words ("CPU", "CUDA GPU 0", …).
        device: String,
    },
    /// The model is ready.
    Loaded {
        /// The model, to pass to the runner as often as wanted.
        model: Arc<LoadedModel>,
        /// Seconds spent loading the weights (downloads not included).
        seconds: f64,
    },
    /// Something optional could not be had and the load goes on without it (a TAESD decoder
    /// or the fp16-fix VAE that could not be downloaded); one line saying what and why.
    Note(String),
    /// The model could not be got ready; one line saying why.
    Failed(String),
    /// Cancelled (a partial download is kept and resumed next time).
    Cancelled,
}

/// Gets `request` ready on this thread like [`load_blocking`], reporting every event to
/// `sink`, the one that ends the job included: `Loaded` (which carries the model), `Failed`
/// (one line) or `Cancelled` (`cancel` was set; a model loaded meanwhile is dropped after
/// its `Loaded`). Front ends run it on a thread of their own and keep `cancel` to stop it.
pub fn load_and_report(
    request: &ModelRequest,
    cancel: &Arc<AtomicBool>,
    sink: &mut dyn FnMut(LoadEvent),
) {
    let last = match load_blocking(request, cancel, sink) {
        // `load_blocking` already reported `Loaded`.
        Ok(_) if !cancel.load(Ordering::SeqCst) => return,
        Ok(_) => LoadEvent::Cancelled,
        Err(_) if cancel.load(Ordering::SeqCst) => LoadEvent::Cancelled,
        Err(e) => LoadEvent::Failed(e.to_string()),
    };
    sink(last);
}

/// Gets `request` ready on this thread, reporting `Download`, `Loading` and (on success)
/// `Loaded` to `sink`. Errors are returned, not reported.
pub fn load_blocking(
    request: &ModelRequest,
    cancel: &Arc<AtomicBool>,
    sink: &mut dyn FnMut(LoadEvent),
) -> Result<Arc<LoadedModel>> {
    let (device, dtype) = device::select_with(request.device, request.precision)?;
    if let Some(note) = device::precision_note(&device, dtype) {
        sink(LoadEvent::Note(note));
    }
    let f16 = dtype == DType::F16;
    // An SDXL preset in f16 gets the fp16-fix VAE unless the user chose a VAE.
    let mut vae = request.vae.clone();
    let model_path = match resolve::resolve(&request.spec, &request.search_dirs)? {
        ModelSource::Folder(path) => ModelPath::Folder(path),
        ModelSource::Checkpoint(path) => ModelPath::Checkpoint(path),
        ModelSource::Preset(preset) => {
            let options = FetchOptions {
                offline: request.offline || hub::offline_from_env(),
                cache_dir: request.cache_dir.clone(),
                cancel: Some(Arc::clone(cancel)),
                endpoint: None,
            };
            let folder = hub::fetch(preset, f16, &options, &mut |event| {
                sink(LoadEvent::Download(event));
            })?;
            for companion in preset.companions(f16) {
                match hub::fetch_companion(companion, &options, &mut |event| {
                    sink(LoadEvent::Download(event));
                }) {
                    Ok(dir) if companion == hub::SDXL_FP16_FIX_VAE && vae.is_none() => {
                        vae = Some(dir);
                    }
                    Ok(_) => {}
                    Err(_) if cancel.load(Ordering::SeqCst) => {
                        return Err(Error::Engine("model loading cancelled".into()));
                    }
                    Err(e) => sink(LoadEvent::Note(format!(
                        "going on without {} ({}): {e}",
                        companion.purpose, companion.repo_id
                    ))),
                }
            }
            ModelPath::Folder(folder)
        }
    };
    let path = model_path.path().to_path_buf();
    if cancel.load(Ordering::SeqCst) {
        return Err(Error::Engine("model loading cancelled".into()));
    }
    sink(LoadEvent::Loading {
        path: path.clone(),
        device: device::describe(&device),
    });
    let started = Instant::now();
    let options = LoadOptions {
        vae,
        checkpoint: request.checkpoint.clone(),
        loras: request.loras.clone(),
        search_dirs: request.search_dirs.clone(),
        hf_cache: request.cache_dir.clone(),
        controlnet: request
            .controlnet
            .as_deref()
            .filter(|spec| !spec.trim().is_empty())
            .map(|spec| crate::load::controlnet::resolve(spec, &request.search_dirs))
            .transpose()?,
    };
    let mut model = LoadedModel::load_with(&model_path, &options, &device, dtype)?;
    // Hashing a multi-GB checkpoint takes seconds: done here, after loading, and only for
    // files not in the cache. A hash that cannot be computed is left out of the metadata.
    let cache = match &request.hash_cache {
        Some(dir) => Some(HashCache::new(dir)),
        None => HashCache::default_location(),
    };
    let _ = model.compute_hashes(cache.as_ref());
    let model = Arc::new(model);
    sink(LoadEvent::Loaded {
        model: Arc::clone(&model),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(model)
}
