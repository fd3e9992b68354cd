//! The standard Hugging Face cache, as the Python `huggingface_hub` library lays it out (and
//! `hf-hub` reads it), so models downloaded by either are shared:
//!
//! ```text
//! <cache>/models--<owner>--<name>/
//!     refs/main                      the commit `main` pointed to, as text
//!     blobs/<etag>                   file contents, named by ETag (SHA-256 for LFS files)
//!     blobs/<etag>.incomplete        a download in progress (resumed from its length)
//!     snapshots/<commit>/<path>      relative symlink to ../../(…)/blobs/<etag>
//! <cache>/.locks/models--<owner>--<name>/<etag>.lock
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hf_hub::{Cache, Repo};

use loopback_core::{Error, Result};

/// The cache folder a Python `huggingface_hub` would use, given the values of the
/// environment variables it reads (pass `None` for unset ones): `HF_HUB_CACHE` (or the legacy
/// `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
/// `HOME/.cache/huggingface/hub`. A leading `~` in a variable is expanded with `home`.
/// `None` only when nothing is set and the home folder is unknown. The same rules hold on
/// Windows, where `huggingface_hub` also uses `.cache` under the home folder
/// (`%USERPROFILE%\.cache\huggingface\hub`; `std::env::home_dir` reads `USERPROFILE`).
pub fn cache_dir_from(
    hf_hub_cache: Option<OsString>,
    hf_home: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<PathBuf>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty());
    let expand = |v: OsString| expand_tilde(Path::new(&v), home.as_deref());
    if let Some(dir) = set(hf_hub_cache) {
        return Some(expand(dir));
    }
    if let Some(dir) = set(hf_home) {
        return Some(expand(dir).join("hub"));
    }
    if let Some(dir) = set(xdg_cache_home) {
        return Some(expand(dir).join("huggingface").join("hub"));
    }
    home.map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// The cache folder from this process's environment (see [`cache_dir_from`]).
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = std::env::var_os;
    cache_dir_from(
        var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")),
        var("HF_HOME"),
        var("XDG_CACHE_HOME"),
        std::env::home_dir(),
    )
}

/// The repository name (`NAME` of `ORG/NAME`) when `dir` is a snapshot folder of the
/// Hugging Face cache (`…/models--ORG--NAME/snapshots/REV`), for recording a model by a name
/// people know rather than by its commit.
pub fn snapshot_repo_name(dir: &Path) -> Option<String> {
    let snapshots = dir.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let repo = snapshots.parent()?.file_name()?.to_str()?;
    let id = repo.strip_prefix("models--")?;
    let name = id.rsplit("--").next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// `~/x` → `<home>/x`; anything else unchanged.
pub(crate) fn expand_tilde(path: &Path, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// The folder of a model repository in the cache.
pub(crate) fn repo_dir(cache_dir: &Path, repo_id: &str) -> PathBuf {
    cache_dir.join(Repo::model(repo_id.to_string()).folder_name())
}

/// `snapshots/<commit>` of a repository.
pub(crate) fn snapshot_dir(cache_dir: &Path, repo_id: &str, commit: &str) -> PathBuf {
    repo_dir(cache_dir, repo_id).join("snapshots").join(commit)
}

/// `blobs/<etag>` of a repository.
pub(crate) fn blob_path(cache_dir: &Path, repo_id: &str, etag: &str) -> PathBuf {
    repo_dir(cache_dir, repo_id).join("blobs").join(etag)
}

/// Whether `s` is safe as a single path component (a commit hash or an ETag from a server).
pub(crate) fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The commit `refs/main` of a cached repository names, if any.
pub(crate) fn main_commit(cache_dir: &Path, repo_id: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(repo_dir(cache_dir, repo_id).join("refs").join("main")).ok()?;
    let commit = text.trim();
    is_plain_name(commit).then(|| commit.to_string())
}

/// Records that `main` is at `commit` (`refs/main`).
pub(crate) fn set_main_commit(cache_dir: &Path, repo_id: &str, commit: &str) -> Result<()> {
    let cache = Cache::new(cache_dir.to_path_buf());
    cache
        .repo(Repo::model(repo_id.to_string()))
        .create_ref(commit)
        .map_err(|e| Error::output(repo_dir(cache_dir, repo_id).join("refs"), e.to_string()))
}

/// What the cache holds of a set of files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A snapshot folder holding every file.
    Complete(PathBuf),
    /// No snapshot holds them all; these are missing from the best candidate (the one
    /// `refs/main` names, else the first snapshot found), in the order asked.
    Incomplete(Vec<String>),
}

/// Looks for a snapshot of `repo_id` holding every one of `files` (readable files, symlinks
/// followed): the one `refs/main` names first, then any other snapshot.
pub(crate) fn lookup(cache_dir: &Path, repo_id: &str, files: &[&str]) -> Lookup {
    let missing_in = |dir: &Path| -> Vec<String> {
        files
            .iter()
            .filter(|f| !dir.join(f).is_file())
            .map(|f| f.to_string())
            .collect()
    };
    let main = main_commit(cache_dir, repo_id).map(|c| snapshot_dir(cache_dir, repo_id, &c));
    let mut candidates: Vec<PathBuf> = main.iter().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(repo_dir(cache_dir, repo_id).join("snapshots")) {
        let mut others: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && Some(p) != main.as_ref())
            .collect();
        others.sort();
        candidates.extend(others);
    }
    let mut first_missing = None;
    for dir in &candidates {
        let missing = missing_in(dir);
        if missing.is_empty() {
            return Lookup::Complete(dir.clone());
        }
        first_missing.get_or_insert(missing);
    }
    Lookup::Incomplete(
        first_missing.unwrap_or_else(|| files.iter().map(|f| f.to_string()).collect()),
    )
}

/// Makes `snapshots/<commit>/<file>` point at `blob`: a relative symlink as the Python
/// library makes, else (Windows without symlink rights) a hard link, else a copy.
pub(crate) fn link_pointer(pointer: &Path, blob: &Path, file: &str) -> Result<()> {
    let out_err = |e: std::io::Error| Error::output(pointer, e.to_string());
    if pointer.is_file() {
        return Ok(());
    }
    if let Some(parent) = pointer.parent() {
        std::fs::create_dir_all(parent).map_err(out_err)?;
    }
    // A dangling link (its blob was deleted) is replaced.
    if std::fs::symlink_metadata(pointer).is_ok() {
        std::fs::remove_file(pointer).map_err(out_err)?;
    }
    let depth = Path::new(file).components().count();
    let mut target = PathBuf::new();
    for _ in 0..=depth {
        target.push("..");
    }
    target.push("blobs");
    if let Some(name) = blob.file_name() {
        target.push(name);
    }
    if symlink(&target, pointer).is_ok() && pointer.is_file() {
        return Ok(());
    }
    let _ = std::fs::remove_file(pointer);
    if std::fs::hard_link(blob, pointer).is_ok() {
        return Ok(());
    }
    std::fs::copy(blob, pointer).map(|_| ()).map_err(out_err)
}

/// A file symlink, where the platform has them.
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::symlink_file(target, link)
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (target, link);
        Err(std::io::Error::other("no symlinks on this platform"))
    }
}

/// An exclusive lock on one blob, held while it is downloaded; at the path the Python
/// library uses, so the two never write the same blob at once. Released on drop.
pub(crate) struct BlobLock {
    /// The locked file (unlocked when closed).
    _file: File,
}

/// Takes the lock for `etag`, waiting (and checking `cancel` every 200 ms) while another
/// process holds it. `Ok(None)` when cancelled while waiting.
pub(crate) fn lock_blob(
    cache_dir: &Path,
    repo_id: &str,
    etag: &str,
    cancel: Option<&AtomicBool>,
) -> Result<Option<BlobLock>> {
    let folder = Repo::model(repo_id.to_string()).folder_name();
    let path = cache_dir
        .join(".locks")
        .join(folder)
        .join(format!("{etag}.lock"));
    let out_err = |e: std::io::Error| Error::output(&path, e.to_string());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(out_err)?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(out_err)?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(BlobLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => {
                if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(out_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_folders_are_named_by_their_repository() {
        let snap = Path::new("/c/hub/models--madebyollin--sdxl-vae-fp16-fix/snapshots/abc123");
        assert_eq!(
            snapshot_repo_name(snap).as_deref(),
            Some("sdxl-vae-fp16-fix")
        );
        assert_eq!(snapshot_repo_name(Path::new("/m/models/my-model")), None);
        assert_eq!(snapshot_repo_name(Path::new("/x/snapshots/abc")), None);
    }
}
