//! A1111's short model hash: the first 10 hex digits of the SHA-256 of the whole file,
//! cached in a JSON file keyed by path, size and modification time, so each file is hashed
//! once (hashing a 2–7 GB checkpoint takes seconds).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use loopback_core::{Error, Result};

/// The cache file's name inside the cache folder.
const CACHE_FILE: &str = "model-hashes.json";

/// One cached hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// The SHA-256 of the file `path`, as 64 lowercase hex digits.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::input(path, format!("cannot open: {e}")))?;
    sha256_hex(file, path)
}

/// The SHA-256 of what is left to read from `reader` (the file `path`, named in errors),
/// as 64 lowercase hex digits.
pub fn sha256_hex(mut reader: impl Read, path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The app's cache folder: `$XDG_CACHE_HOME/loopback-scaler`, else
/// `~/.cache/loopback-scaler` (`%LOCALAPPDATA%\loopback-scaler` on Windows).
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = if cfg!(windows) {
        var("LOCALAPPDATA")
    } else {
        var("XDG_CACHE_HOME").or_else(|| std::env::home_dir().map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("loopback-scaler"))
}

/// Size and modification time (ns since the epoch) of `path`.
fn stamp(path: &Path) -> Result<(u64, u128)> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((meta.len(), mtime))
}

/// A hash cache stored as JSON in a folder.
#[derive(Debug, Clone)]
pub struct HashCache {
    file: PathBuf,
}

impl HashCache {
    /// The cache in `dir` (created when first written).
    pub fn new(dir: &Path) -> Self {
        HashCache {
            file: dir.join(CACHE_FILE),
        }
    }

    /// The cache in [`default_cache_dir`], if there is one.
    pub fn default_location() -> Option<Self> {
        default_cache_dir().map(|d| Self::new(&d))
    }

    fn read(&self) -> BTreeMap<String, Entry> {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The cached full SHA-256 of `path`, if its size and modification time still match.
    pub fn cached(&self, path: &Path) -> Option<String> {
        let key = key(path);
        let (size, mtime_ns) = stamp(path).ok()?;
        self.read()
            .remove(&key)
            .filter(|e| e.size == size && e.mtime_ns == mtime_ns)
            .map(|e| e.sha256)
    }

    /// The full SHA-256 of `path`: cached, or computed and cached (the cache is rewritten
    /// atomically: a temporary file renamed over it). A cache that cannot be written is
    /// not an error; the hash is still returned.
    pub fn sha256(&self, path: &Path) -> Result<String> {
        if let Some(hash) = self.cached(path) {
            return Ok(hash);
        }
        let (size, mtime_ns) = stamp(path)?;
        let sha256 = sha256_file(path)?;
        let mut entries = self.read();
        entries.insert(
            key(path),
            Entry {
                size,
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        let _ = self.write(&entries);
        Ok(sha256)
    }

    fn write(&self, entries: &BTreeMap<String, Entry>) -> std::io::Result<()> {
        let dir = self.file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, entries)?;
        tmp.persist(&self.file).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The cache key of `path`: its absolute form when it can be had.
fn key(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// A1111's short hash of `path` (10 hex digits), through `cache` when given.
pub fn short_hash(path: &Path, cache: Option<&HashCache>) -> Result<String> {
    let full = match cache {
        Some(cache) => cache.sha256(path)?,
        None => sha256_file(path)?,
    };
    Ok(full[..10].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc.bin");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(short_hash(&path, None).unwrap(), "ba7816bf8f");
    }

    #[test]
    fn cache_is_used_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, b"abc").unwrap();
        let cache = HashCache::new(&dir.path().join("cache"));
        assert_eq!(cache.cached(&path), None);
        let first = cache.sha256(&path).unwrap();
        assert_eq!(cache.cached(&path).as_deref(), Some(first.as_str()));
        // A stale entry (size differs) is not used.
        std::fs::write(&path, b"abcd").unwrap();
        assert_eq!(cache.cached(&path), None);
        let second = cache.sha256(&path).unwrap();
        assert_ne!(first, second);
        assert_eq!(second, sha256_file(&path).unwrap());
        // The cache file holds exactly one entry for the path.
        let text = std::fs::read_to_string(dir.path().join("cache").join(CACHE_FILE)).unwrap();
        assert_eq!(text.matches("sha256").count(), 1);
    }
}
