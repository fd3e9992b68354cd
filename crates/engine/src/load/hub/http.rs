//! The Hub's HTTP protocol, as the Python `huggingface_hub` library and `hf-hub` speak it:
//! the repository-info API for the commit and file list, a one-byte ranged `GET` on
//! `<endpoint>/<repo>/resolve/<commit>/<file>` for a file's ETag and size (LFS and Xet files
//! answer with a redirect to a CDN carrying `X-Linked-Etag` and `X-Linked-Size`), then the
//! bytes from wherever that points, resumed with `Range: bytes=<have>-`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hf_hub::api::RepoInfo;
use hf_hub::{Repo, RepoType};

use crate::load::hub::cache::is_plain_name;

/// Bytes read per step of a transfer: cancellation and progress are checked this often.
const CHUNK: usize = 64 * 1024;
/// Redirects within the Hub (renamed repositories) followed when resolving a file.
const MAX_HUB_REDIRECTS: usize = 5;

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// The server could not be reached or the connection broke.
    Network(String),
    /// The Hub answered with an error status (and maybe its `X-Error-Message`).
    Status {
        /// The HTTP status.
        code: u16,
        /// The Hub's explanation, if it gave one.
        message: Option<String>,
    },
    /// A transfer from the file server failed with an HTTP status (perhaps an expired signed
    /// URL): worth retrying after resolving the file again.
    Transfer(u16),
    /// The answer lacked something the protocol promises.
    Protocol(String),
    /// A local file could not be written.
    Io(std::path::PathBuf, String),
    /// A local problem already described.
    Local(loopback_core::Error),
    /// The caller asked to stop.
    Cancelled,
}

impl HttpError {
    /// Whether trying again (from where the download stopped) may help.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            HttpError::Network(_) | HttpError::Transfer(_) => true,
            HttpError::Status { code, .. } => *code >= 500 || *code == 429,
            HttpError::Protocol(_)
            | HttpError::Io(..)
            | HttpError::Local(_)
            | HttpError::Cancelled => false,
        }
    }
}

/// Where a file's bytes are and what they are.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    /// The blob name: the file's ETag (SHA-256 for LFS files), unquoted.
    pub etag: String,
    /// The file's size in bytes.
    pub size: u64,
    /// Where to `GET` the bytes (the resolve URL itself, or the CDN it redirects to).
    pub url: String,
}

/// An HTTP client for one Hub endpoint.
pub(crate) struct Client {
    /// Does not follow redirects: resolving needs the redirect's own headers.
    hub: ureq::Agent,
    /// Follows redirects: for the bytes.
    files: ureq::Agent,
    /// `https://huggingface.co` or a mirror, without a trailing slash.
    endpoint: String,
    /// Sent as a bearer token to the endpoint only (never to the CDN).
    token: Option<String>,
}

impl Client {
    /// A client for `endpoint`. Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`,
    /// except for a loopback endpoint.
    pub(crate) fn new(endpoint: &str, token: Option<String>) -> Self {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let host = origin(&endpoint).unwrap_or(&endpoint);
        let loopback = ["://127.0.0.1", "://localhost", "://[::1]"]
            .iter()
            .any(|h| host.contains(h));
        let agent = |redirects: u32| {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(!loopback)
                .timeout_connect(Duration::from_secs(20))
                .timeout_read(Duration::from_secs(60))
                .redirects(redirects)
                .user_agent(&format!(
                    "{}/{}; hf-hub/0.4; rust",
                    loopback_core::APP_NAME,
                    loopback_core::APP_VERSION
                ))
                .build()
        };
        Self {
            hub: agent(0),
            files: agent(8),
            endpoint,
            token,
        }
    }

    /// The endpoint, for messages.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A `GET` with the common headers; the token only goes to the endpoint's own host.
    fn get(&self, agent: &ureq::Agent, url: &str) -> ureq::Request {
        let request = agent.get(url).set("Accept-Encoding", "identity");
        match &self.token {
            Some(token) if origin(url) == origin(&self.endpoint) => {
                request.set("Authorization", &format!("Bearer {token}"))
            }
            _ => request,
        }
    }

    /// The commit `revision` points to and the repository's file list.
    pub(crate) fn repo_info(&self, repo_id: &str, revision: &str) -> Result<RepoInfo, HttpError> {
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
        let url = format!("{}/api/{}", self.endpoint, repo.api_url());
        let response = self.get(&self.files, &url).call().map_err(from_ureq)?;
        let text = response
            .into_string()
            .map_err(|e| HttpError::Network(e.to_string()))?;
        let info: RepoInfo = serde_json::from_str(&text)
            .map_err(|e| HttpError::Protocol(format!("repository info is not valid: {e}")))?;
        if !is_plain_name(&info.sha) {
            return Err(HttpError::Protocol(format!(
                "repository info names an odd commit {:?}",
                info.sha
            )));
        }
        Ok(info)
    }

    /// The resolve URL of `file` at `commit`.
    pub(crate) fn resolve_url(&self, repo_id: &str, commit: &str, file: &str) -> String {
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, commit.to_string());
        format!(
            "{}/{}/resolve/{}/{}",
            self.endpoint,
            repo.url(),
            repo.url_revision(),
            file
        )
    }

    /// Resolves `file` at `commit`: its ETag, size and where its bytes are.
    pub(crate) fn file_meta(
        &self,
        repo_id: &str,
        commit: &str,
        file: &str,
    ) -> Result<FileMeta, HttpError> {
        let mut url = self.resolve_url(repo_id, commit, file);
        for _ in 0..=MAX_HUB_REDIRECTS {
            let response = self
                .get(&self.hub, &url)
                .set("Range", "bytes=0-0")
                .call()
                .map_err(from_ureq)?;
            let redirect = (300..400).contains(&response.status());
            let location = response.header("location").map(str::to_string);
            if let (true, Some(path)) = (redirect, &location)
                && path.starts_with('/')
            {
                // A renamed repository: the redirect stays on the Hub.
                let base = origin(&url).unwrap_or(&self.endpoint).to_string();
                url = format!("{base}{path}");
                continue;
            }
            let etag = response
                .header("x-linked-etag")
                .or_else(|| response.header("etag"))
                .map(normalize_etag)
                .ok_or_else(|| HttpError::Protocol("no ETag header".into()))?;
            if !is_plain_name(&etag) {
                return Err(HttpError::Protocol(format!("odd ETag {etag:?}")));
            }
            let linked_size = response
                .header("x-linked-size")
                .and_then(|s| s.trim().parse::<u64>().ok());
            if redirect {
                let location = location
                    .ok_or_else(|| HttpError::Protocol("redirect without Location".into()))?;
                let size = match linked_size {
                    Some(size) => size,
                    None => self.remote_size(&location)?,
                };
                return Ok(FileMeta {
                    etag,
                    size,
                    url: location,
                });
            }
            let size = linked_size
                .or_else(|| response.header("content-range").and_then(range_total))
                .or_else(|| {
                    (response.status() == 200)
                        .then(|| response.header("content-length"))
                        .flatten()
                        .and_then(|s| s.trim().parse().ok())
                })
                .ok_or_else(|| HttpError::Protocol("no file size in the answer".into()))?;
            return Ok(FileMeta { etag, size, url });
        }
        Err(HttpError::Protocol("too many redirects".into()))
    }

    /// The size of the file at `url`, from a one-byte ranged request's `Content-Range`.
    fn remote_size(&self, url: &str) -> Result<u64, HttpError> {
        let response = self
            .get(&self.files, url)
            .set("Range", "bytes=0-0")
            .call()
            .map_err(from_ureq)?;
        response
            .header("content-range")
            .and_then(range_total)
            .ok_or_else(|| HttpError::Protocol("no Content-Range in the answer".into()))
    }

    /// Downloads `meta` into `partial`, appending to what it already holds (a resumed
    /// download), until it holds `meta.size` bytes. Calls `on_bytes` with the bytes held after
    /// each chunk; checks `cancel` between chunks.
    pub(crate) fn transfer(
        &self,
        meta: &FileMeta,
        partial: &Path,
        cancel: Option<&AtomicBool>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<(), HttpError> {
        let io_err = |e: std::io::Error| HttpError::Io(partial.to_path_buf(), e.to_string());
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(partial)
            .map_err(io_err)?;
        let mut have = file.metadata().map_err(io_err)?.len();
        if have > meta.size {
            file.set_len(0).map_err(io_err)?;
            have = 0;
        }
        on_bytes(have);
        if have == meta.size {
            return Ok(());
        }
        let mut request = self.get(&self.files, &meta.url);
        if have > 0 {
            request = request.set("Range", &format!("bytes={have}-"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(416, _)) => {
                // Our partial file does not fit the server's: start again.
                file.set_len(0).map_err(io_err)?;
                return Err(HttpError::Network("the server refused to resume".into()));
            }
            Err(ureq::Error::Status(code, _)) => return Err(HttpError::Transfer(code)),
            Err(e) => return Err(from_ureq(e)),
        };
        let resumed_at = response
            .header("content-range")
            .and_then(range_start)
            .unwrap_or(0);
        if response.status() != 206 || resumed_at != have {
            // The server sent the whole file (or another range): start again from it.
            if resumed_at != 0 {
                return Err(HttpError::Protocol(format!(
                    "asked for bytes from {have}, got bytes from {resumed_at}"
                )));
            }
            file.set_len(0).map_err(io_err)?;
            have = 0;
            on_bytes(0);
        }
        let mut reader = response.into_reader();
        let mut buf = vec![0u8; CHUNK];
        loop {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(HttpError::Cancelled);
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HttpError::Network(e.to_string())),
            };
            if have + n as u64 > meta.size {
                file.set_len(0).map_err(io_err)?;
                return Err(HttpError::Protocol(format!(
                    "the server sent more than the {} bytes announced",
                    meta.size
                )));
            }
            file.write_all(&buf[..n]).map_err(io_err)?;
            have += n as u64;
            on_bytes(have);
        }
        if have < meta.size {
            return Err(HttpError::Network(format!(
                "the connection closed after {have} of {} bytes",
                meta.size
            )));
        }
        file.sync_all().map_err(io_err)
    }
}

/// A ureq error as ours, with the Hub's `X-Error-Message` when it sent one.
fn from_ureq(error: ureq::Error) -> HttpError {
    match error {
        ureq::Error::Status(code, response) => HttpError::Status {
            code,
            message: response
                .header("x-error-message")
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty()),
        },
        ureq::Error::Transport(t) => HttpError::Network(t.to_string()),
    }
}

/// `W/"abc"` or `"abc"` → `abc`.
fn normalize_etag(raw: &str) -> String {
    let raw = raw.trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    raw.trim_matches('"').to_string()
}

/// The total of a `Content-Range: bytes 0-0/1234` header.
fn range_total(header: &str) -> Option<u64> {
    header.rsplit('/').next()?.trim().parse().ok()
}

/// The first byte of a `Content-Range: bytes 100-199/1234` header.
fn range_start(header: &str) -> Option<u64> {
    let spec = header.trim().strip_prefix("bytes")?.trim_start();
    spec.split('-').next()?.trim().parse().ok()
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}
