//! Built-in models ([`Preset`]s) fetched from the Hugging Face Hub into the standard Hugging
//! Face cache, shared with Python's `huggingface_hub`/diffusers and with `hf-hub`.
//!
//! [`fetch`] returns a snapshot folder that is an ordinary diffusers folder (only the files
//! an img2img run needs, [`Preset::files`]):
//! - everything cached (under the snapshot `refs/main` names, or any other snapshot): no
//!   network at all;
//! - otherwise, unless [`FetchOptions::offline`]: the commit `main` points to is asked for,
//!   missing files are downloaded (files whose blob another snapshot already has are only
//!   linked), with [`DownloadEvent`]s on the way;
//! - a download that stops (network failure, cancellation, the program closed) leaves
//!   `blobs/<etag>.incomplete`, which the next run resumes with an HTTP range request — the
//!   same file and mechanism Python's `huggingface_hub` uses, so either resumes the other's;
//! - network errors are retried 5 times (0.5 s to 8 s apart), resuming each time.
//!
//! `hf-hub` (0.4, blocking `ureq` flavour) provides the cache conventions (repository folder
//! names, `refs/`, the token file), URLs and the repository-info type. The transfer itself is
//! done here with `ureq`, the HTTP client `hf-hub` uses, speaking the same protocol, because
//! `hf-hub`'s downloader cannot be stopped before a file is complete (its progress callback
//! cannot abort) and keeps its partial files as `.part`, which Python does not resume.

mod cache;
mod download;
mod http;
mod preset;
mod rate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use loopback_core::{Error, Result};

pub use cache::{cache_dir_from, default_cache_dir, snapshot_repo_name};
pub use preset::{
    Companion, Preset, SD2_F16_BYTES, SD2_F32_BYTES, SD15_F16_BYTES, SD15_F32_BYTES,
    SDXL_F16_BYTES, SDXL_F32_BYTES, SDXL_FP16_FIX_VAE, TAESD, TAESDXL,
};
pub use rate::RateMeter;

/// The public Hub, used unless [`FetchOptions::endpoint`] or `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How [`fetch`] may get files.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Use the cache only; never touch the network (`--offline`; see also
    /// [`offline_from_env`]).
    pub offline: bool,
    /// The cache folder (the `hub` folder, holding `models--…`). `None`: the standard one,
    /// [`default_cache_dir`] (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Set it (from any thread) to stop a download between chunks of 64 KiB; [`fetch`] then
    /// returns an error and the partial file is kept for resuming.
    pub cancel: Option<Arc<AtomicBool>>,
    /// The Hub's address. `None`: `HF_ENDPOINT` if set, else [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
}

/// What [`fetch`] reports while downloading. Only files actually transferred get
/// `Started`/`Progress`/`Finished`; a successful fetch always ends with `AllDone`.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// A file's download begins (or resumes).
    Started {
        /// The path inside the repository, e.g. `unet/diffusion_pytorch_model.safetensors`.
        file: String,
        /// Its size in bytes, when the server said.
        total_bytes: Option<u64>,
    },
    /// Bytes arrived (at most about ten events a second per file, and one at the end).
    Progress {
        /// The path inside the repository.
        file: String,
        /// Bytes on disk so far, including any resumed from an earlier run.
        downloaded: u64,
        /// The file's size in bytes, when known.
        total: Option<u64>,
        /// Recent speed (bytes per second, averaged over 5 s); 0 while unknown.
        bytes_per_sec: f64,
        /// Seconds left for this file at that speed; `None` while unknown.
        eta_secs: Option<f64>,
    },
    /// A file is complete and in the cache.
    Finished {
        /// The path inside the repository.
        file: String,
    },
    /// Every file of the preset is in the cache.
    AllDone,
}

/// The cache folder `options` name, or the standard one.
pub fn resolve_cache_dir(options: &FetchOptions) -> Result<PathBuf> {
    options
        .cache_dir
        .clone()
        .or_else(default_cache_dir)
        .ok_or_else(|| {
            Error::input(
                "HF_HOME",
                "cannot find the Hugging Face cache: the home folder is unknown; set HF_HOME",
            )
        })
}

/// Whether `HF_HUB_OFFLINE` asks for offline mode (`1`, `true`, `yes`, `on`), as in Python's
/// `huggingface_hub`; for front ends to combine with their `--offline` flag.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A repository and the files wanted from it: a preset's or a [`Companion`]'s.
#[derive(Debug, Clone)]
pub(crate) struct RepoFiles {
    /// `owner/name`.
    repo_id: &'static str,
    /// Paths inside the repository.
    files: Vec<&'static str>,
    /// About how many bytes all of them are, for messages.
    approx_bytes: u64,
}

impl RepoFiles {
    fn preset(preset: Preset, f16: bool) -> Self {
        RepoFiles {
            repo_id: preset.repo_id(),
            files: preset.files(f16),
            approx_bytes: preset.approx_bytes(f16),
        }
    }

    fn companion(companion: Companion) -> Self {
        RepoFiles {
            repo_id: companion.repo_id,
            files: companion.files.to_vec(),
            approx_bytes: companion.approx_bytes,
        }
    }
}

/// The cached snapshot folder holding every file of `preset` at the given precision, if
/// there is one. Never touches the network.
pub fn find_cached(preset: Preset, dtype_is_f16: bool, cache_dir: &Path) -> Option<PathBuf> {
    match cache::lookup(cache_dir, preset.repo_id(), &preset.files(dtype_is_f16)) {
        cache::Lookup::Complete(dir) => Some(dir),
        cache::Lookup::Incomplete(_) => None,
    }
}

/// Makes every file of `preset` (f16 or f32 weights) available in the Hugging Face cache and
/// returns the snapshot folder, usable as a diffusers folder. See the module documentation
/// for what happens when; `progress` is called on this thread.
///
/// Errors are one line naming the repository and the file concerned: offline (or
/// unreachable) with the file not cached, access refused, the file missing from the
/// repository, the cache not writable, or cancelled.
pub fn fetch(
    preset: Preset,
    dtype_is_f16: bool,
    options: &FetchOptions,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    fetch_repo(&RepoFiles::preset(preset, dtype_is_f16), options, progress)
}

/// [`fetch`] for a [`Companion`] repository (a TAESD decoder, the fp16-fix VAE): the
/// snapshot folder, a diffusers model folder of that component.
pub fn fetch_companion(
    companion: Companion,
    options: &FetchOptions,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    fetch_repo(&RepoFiles::companion(companion), options, progress)
}

fn fetch_repo(
    repo: &RepoFiles,
    options: &FetchOptions,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    let cache_dir = resolve_cache_dir(options)?;
    let missing = match cache::lookup(&cache_dir, repo.repo_id, &repo.files) {
        cache::Lookup::Complete(dir) => {
            progress(DownloadEvent::AllDone);
            return Ok(dir);
        }
        cache::Lookup::Incomplete(missing) => missing,
    };
    if options.offline {
        return Err(not_cached(
            repo,
            &missing,
            &cache_dir,
            "--offline is set; run once online",
        ));
    }
    download::fetch_online(repo, &missing, &cache_dir, options, progress)
}

/// "`repo`: `file` (and N more files, about X GB in all) is not in the Hugging Face cache
/// (`dir`) and `why`, or pass --model PATH to a local diffusers folder".
fn not_cached(repo: &RepoFiles, missing: &[String], cache_dir: &Path, why: &str) -> Error {
    let first = missing.first().map_or("a file", String::as_str);
    let more = match missing.len() {
        0 | 1 => String::new(),
        n => format!(
            " (and {} more file{}; the whole model is about {:.1} GB)",
            n - 1,
            if n == 2 { "" } else { "s" },
            repo.approx_bytes as f64 / 1e9
        ),
    };
    Error::Input {
        path: PathBuf::from(repo.repo_id),
        reason: format!(
            "{first}{more} is not in the Hugging Face cache ({}) and {why}, or pass --model PATH \
             to a local diffusers folder",
            cache_dir.display()
        ),
    }
}
