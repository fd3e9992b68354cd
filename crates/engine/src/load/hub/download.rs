//! The online part of [`fetch`](crate::load::hub::fetch): pin the commit, download what is missing,
//! retry and resume, report progress.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hf_hub::Cache;

use crate::load::hub::cache::{self, blob_path, link_pointer, lock_blob, snapshot_dir};
use crate::load::hub::http::{Client, HttpError};
use crate::load::hub::rate::RateMeter;
use crate::load::hub::{DEFAULT_ENDPOINT, DownloadEvent, FetchOptions, RepoFiles, not_cached};
use loopback_core::{Error, Result};

/// Attempts after the first when a download fails in a way worth retrying.
const RETRIES: u32 = 5;
/// The pause before the first retry; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Least time between two `Progress` events of one file.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Downloads the `missing` files of `wanted` (see [`fetch`](crate::load::hub::fetch)).
pub(super) fn fetch_online(
    wanted: &RepoFiles,
    missing: &[String],
    cache_dir: &Path,
    options: &FetchOptions,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    let repo = wanted.repo_id;
    let files = &wanted.files;
    let cancel = options.cancel.as_deref();
    check_cancel(cancel, repo)?;
    let endpoint = options
        .endpoint
        .clone()
        .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let client = Client::new(&endpoint, token(cache_dir));

    let info = client.repo_info(repo, "main").map_err(|e| match e {
        HttpError::Network(reason) => not_cached(
            wanted,
            missing,
            cache_dir,
            &format!(
                "{} cannot be reached ({reason}); check the connection",
                client.endpoint()
            ),
        ),
        other => hub_error(other, repo, None, client.endpoint()),
    })?;
    let remote: HashSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let absent: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !remote.is_empty() && !remote.contains(f))
        .collect();
    if !absent.is_empty() {
        return Err(Error::Input {
            path: PathBuf::from(repo),
            reason: format!(
                "the repository (commit {}) has no {}; the preset's file list is out of date \
                 — pass --model PATH to a local diffusers folder",
                info.sha,
                absent.join(", ")
            ),
        });
    }
    let commit = info.sha;
    cache::set_main_commit(cache_dir, repo, &commit)?;
    let snapshot = snapshot_dir(cache_dir, repo, &commit);
    for file in files {
        let pointer = snapshot.join(file);
        if pointer.is_file() {
            continue;
        }
        check_cancel(cancel, repo)?;
        let blob =
            download_with_retries(&client, cache_dir, repo, &commit, file, cancel, progress)?;
        link_pointer(&pointer, &blob, file)?;
    }
    progress(DownloadEvent::AllDone);
    Ok(snapshot)
}

/// The access token: `HF_TOKEN`, else the `token` file next to the cache folder (as `hf-hub`
/// and `huggingface-cli login` keep it), else the one next to the standard cache.
fn token(cache_dir: &Path) -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .or_else(|| Cache::new(cache_dir.to_path_buf()).token())
        .or_else(|| crate::load::hub::default_cache_dir().and_then(|dir| Cache::new(dir).token()))
}

/// An error if `cancel` is set.
fn check_cancel(cancel: Option<&AtomicBool>, repo: &str) -> Result<()> {
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        Err(hub_error(HttpError::Cancelled, repo, None, ""))
    } else {
        Ok(())
    }
}

/// Turns progress callbacks of one file into [`DownloadEvent`]s.
struct Reporter<'a> {
    /// The caller's callback.
    progress: &'a mut dyn FnMut(DownloadEvent),
    /// The file, as events name it.
    file: String,
    /// Speed over the last seconds.
    meter: RateMeter,
    /// When the last `Progress` event went out.
    last: Option<Instant>,
    /// Whether `Started` went out.
    started: bool,
}

impl Reporter<'_> {
    /// `Started`, once.
    fn start(&mut self, total: u64) {
        if !self.started {
            self.started = true;
            (self.progress)(DownloadEvent::Started {
                file: self.file.clone(),
                total_bytes: Some(total),
            });
        }
    }

    /// `Progress`, throttled to one per [`PROGRESS_INTERVAL`] except the last.
    fn bytes(&mut self, have: u64, total: u64) {
        let now = Instant::now();
        let rate = self.meter.record(now, have);
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= PROGRESS_INTERVAL);
        if due || have == total {
            self.last = Some(now);
            (self.progress)(DownloadEvent::Progress {
                file: self.file.clone(),
                downloaded: have,
                total: Some(total),
                bytes_per_sec: rate,
                eta_secs: self.meter.eta_secs(total.saturating_sub(have)),
            });
        }
    }
}

/// Puts `file` at `commit` into the cache's blobs (unless there already) and returns the
/// blob, retrying what is worth retrying.
fn download_with_retries(
    client: &Client,
    cache_dir: &Path,
    repo: &str,
    commit: &str,
    file: &str,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(DownloadEvent),
) -> Result<PathBuf> {
    let mut reporter = Reporter {
        progress,
        file: file.to_string(),
        meter: RateMeter::new(),
        last: None,
        started: false,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        match download_once(client, cache_dir, repo, commit, file, cancel, &mut reporter) {
            Ok(blob) => {
                if reporter.started {
                    (reporter.progress)(DownloadEvent::Finished {
                        file: file.to_string(),
                    });
                }
                return Ok(blob);
            }
            Err(e) if e.is_retryable() && attempt < RETRIES => {
                attempt += 1;
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    check_cancel(cancel, repo)?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff *= 2;
            }
            Err(e) => return Err(hub_error(e, repo, Some(file), client.endpoint())),
        }
    }
}

/// One attempt at [`download_with_retries`].
fn download_once(
    client: &Client,
    cache_dir: &Path,
    repo: &str,
    commit: &str,
    file: &str,
    cancel: Option<&AtomicBool>,
    reporter: &mut Reporter<'_>,
) -> Result<PathBuf, HttpError> {
    let meta = client.file_meta(repo, commit, file)?;
    let blob = blob_path(cache_dir, repo, &meta.etag);
    if blob.is_file() {
        return Ok(blob);
    }
    let blobs = blob.parent().unwrap_or(cache_dir).to_path_buf();
    std::fs::create_dir_all(&blobs).map_err(|e| HttpError::Io(blobs.clone(), e.to_string()))?;
    let _lock = lock_blob(cache_dir, repo, &meta.etag, cancel)
        .map_err(HttpError::Local)?
        .ok_or(HttpError::Cancelled)?;
    if blob.is_file() {
        // Another process finished it while we waited.
        return Ok(blob);
    }
    let partial = blobs.join(format!("{}.incomplete", meta.etag));
    reporter.start(meta.size);
    client.transfer(&meta, &partial, cancel, &mut |have| {
        reporter.bytes(have, meta.size)
    })?;
    std::fs::rename(&partial, &blob).map_err(|e| HttpError::Io(blob.clone(), e.to_string()))?;
    Ok(blob)
}

/// A one-line error for `repo` (and `file`).
fn hub_error(error: HttpError, repo: &str, file: Option<&str>, endpoint: &str) -> Error {
    let what = file.map_or_else(|| "this repository".to_string(), str::to_string);
    let reason = match error {
        HttpError::Io(path, reason) => return Error::output(path, reason),
        HttpError::Local(error) => return error,
        HttpError::Cancelled => {
            "download cancelled; run again to resume where it stopped".to_string()
        }
        HttpError::Network(reason) => format!(
            "downloading {what} from {endpoint} failed ({reason}); run again to resume where it \
             stopped"
        ),
        HttpError::Transfer(code) => format!(
            "downloading {what} failed (the file server answered HTTP {code}); run again to \
             resume where it stopped"
        ),
        HttpError::Status { code, message } => {
            let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
            match code {
                401 | 403 => format!(
                    "{endpoint} refused access to {what} (HTTP {code}{detail}); if the \
                     repository is gated, accept its terms on the website and set HF_TOKEN"
                ),
                404 => format!("{what} was not found on {endpoint} (HTTP 404{detail})"),
                _ => format!("{endpoint} answered HTTP {code} for {what}{detail}"),
            }
        }
        HttpError::Protocol(reason) => {
            format!("unexpected answer from {endpoint} for {what}: {reason}")
        }
    };
    Error::Input {
        path: PathBuf::from(repo),
        reason,
    }
}
