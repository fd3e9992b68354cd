//! The model library: the models, VAEs, LoRAs and TAESD decoders on disk, for the CLI's
//! `models` command and the app's pickers.
//!
//! Searched, in each search folder (`models/` by default), as A1111 arranges them:
//! - checkpoints: `*.safetensors` and `*.ckpt` directly in it and in `Stable-diffusion/`;
//! - diffusers folders: its sub-folders that are complete diffusers models;
//! - VAEs: `VAE/`; LoRAs: `Lora/` and `LyCORIS/`; TAESD decoders: `VAE-taesd/`;
//! - textual-inversion embeddings: `embeddings/`, and `embeddings/` beside the search folder
//!   (A1111's layout);
//!
//! and the diffusers models in the Hugging Face cache (`models--ORG--NAME/snapshots/*`).
//! Scanning reads only safetensors headers (to tell the family) and never hashes a file:
//! the hash is shown when it is already cached ([`HashCache`]), e.g. after a load.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::load::checkpoint::detect::detect;
use crate::load::resolve::check_diffusers_folder;
use crate::load::weights::file::SafetensorsFile;
use crate::load::weights::hash::HashCache;

/// What kind of file an [`Entry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A single-file checkpoint (`--model FILE`).
    Checkpoint,
    /// A diffusers folder (`--model FOLDER`).
    Diffusers,
    /// A VAE (`--vae FILE`).
    Vae,
    /// A LoRA (`--lora FILE:WEIGHT`, `<lora:NAME:WEIGHT>`).
    Lora,
    /// A TAESD preview decoder.
    Taesd,
    /// A textual-inversion embedding (called by name in a prompt).
    Embedding,
}

impl Kind {
    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Checkpoint => "checkpoint",
            Kind::Diffusers => "diffusers",
            Kind::Vae => "vae",
            Kind::Lora => "lora",
            Kind::Taesd => "taesd",
            Kind::Embedding => "embedding",
        }
    }
}

/// One model file or folder found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// The name to pick it by (file stem, folder name, or `ORG/NAME` in the cache).
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size on disk in bytes (a folder: all its files).
    pub bytes: u64,
    /// The model family (`SD 1.x`, `SD 2.x`, `SDXL`) where it can be told.
    pub family: Option<String>,
    /// A1111's short hash (10 hex digits), when already cached.
    pub hash: Option<String>,
    /// Found in the Hugging Face cache rather than a search folder.
    pub in_hf_cache: bool,
}

/// Everything found in `search_dirs` and the Hugging Face cache `hf_cache`, sorted by kind
/// then name. Unreadable folders and files are skipped.
pub fn scan(
    search_dirs: &[PathBuf],
    hf_cache: Option<&Path>,
    hashes: Option<&HashCache>,
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for dir in search_dirs {
        for folder in [dir.clone(), dir.join("Stable-diffusion")] {
            for file in safetensors_in(&folder) {
                entries.push(file_entry(
                    Kind::Checkpoint,
                    &file,
                    checkpoint_family(&file),
                    hashes,
                ));
            }
            // PyTorch checkpoints: listed by name (their family shows once loaded).
            for file in files_in(&folder, &["ckpt"]) {
                entries.push(file_entry(Kind::Checkpoint, &file, None, hashes));
            }
        }
        for sub in subfolders(dir) {
            if check_diffusers_folder(&sub).is_ok() {
                entries.push(folder_entry(Kind::Diffusers, &sub, false));
            }
        }
        for file in safetensors_in(&dir.join("VAE")) {
            entries.push(file_entry(Kind::Vae, &file, None, hashes));
        }
        for folder in [dir.join("Lora"), dir.join("LyCORIS")] {
            for file in safetensors_in(&folder) {
                entries.push(file_entry(Kind::Lora, &file, None, hashes));
            }
        }
        for file in safetensors_in(&dir.join("VAE-taesd")) {
            entries.push(file_entry(Kind::Taesd, &file, None, hashes));
        }
        let beside = dir.parent().map(|p| p.join("embeddings"));
        for folder in std::iter::once(dir.join("embeddings")).chain(beside) {
            for file in safetensors_in(&folder) {
                entries.push(file_entry(Kind::Embedding, &file, None, hashes));
            }
        }
    }
    if let Some(cache) = hf_cache {
        entries.extend(hf_cache_models(cache));
    }
    entries.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    entries.dedup_by(|a, b| a.path == b.path);
    entries
}

/// The family of a checkpoint, from its tensor names; `None` when it is not a checkpoint
/// the engine can load (a VAE or LoRA put in the wrong folder, a damaged file).
fn checkpoint_family(path: &Path) -> Option<String> {
    let file = SafetensorsFile::open(path).ok()?;
    detect(&file).ok().map(|d| d.family.label().to_string())
}

/// The family of a diffusers folder, from its text encoders as for checkpoints: a second
/// text encoder is SDXL; OpenCLIP's `gelu` is SD 2.x; OpenAI CLIP's `quick_gelu` SD 1.x.
fn folder_family(dir: &Path) -> Option<String> {
    if dir.join("text_encoder_2").is_dir() {
        return Some("SDXL".into());
    }
    let text = std::fs::read_to_string(dir.join("text_encoder/config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let family = match json["hidden_act"].as_str().unwrap_or("quick_gelu") {
        "gelu" => "SD 2.x",
        _ => "SD 1.x",
    };
    Some(family.to_string())
}

fn file_entry(
    kind: Kind,
    path: &Path,
    family: Option<String>,
    hashes: Option<&HashCache>,
) -> Entry {
    Entry {
        kind,
        name: stem(path),
        path: path.to_path_buf(),
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        family,
        hash: hashes
            .and_then(|h| h.cached(path))
            .map(|full| full.chars().take(10).collect()),
        in_hf_cache: false,
    }
}

fn folder_entry(kind: Kind, dir: &Path, in_hf_cache: bool) -> Entry {
    Entry {
        kind,
        name: stem(dir),
        path: dir.to_path_buf(),
        bytes: folder_bytes(dir),
        family: folder_family(dir),
        hash: None,
        in_hf_cache,
    }
}

/// Diffusers models in the Hugging Face hub cache: `models--ORG--NAME/snapshots/REV/` with a
/// `model_index.json` (the newest snapshot of each).
fn hf_cache_models(cache: &Path) -> Vec<Entry> {
    let mut found = Vec::new();
    for repo in subfolders(cache) {
        let Some(dir_name) = repo.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(id) = dir_name.strip_prefix("models--") else {
            continue;
        };
        let mut snapshots: Vec<PathBuf> = subfolders(&repo.join("snapshots"))
            .into_iter()
            .filter(|s| s.join("model_index.json").is_file())
            .collect();
        snapshots.sort_by_key(|s| std::fs::metadata(s).and_then(|m| m.modified()).ok());
        if let Some(newest) = snapshots.pop() {
            let mut entry = folder_entry(Kind::Diffusers, &newest, true);
            entry.name = id.replacen("--", "/", 1);
            found.push(entry);
        }
    }
    found
}

/// `.safetensors` files directly in `dir`, sorted.
fn safetensors_in(dir: &Path) -> Vec<PathBuf> {
    files_in(dir, &["safetensors"])
}

/// The files of `dir` with one of `extensions` (case-insensitive), sorted.
fn files_in(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
        })
        .collect();
    files.sort();
    files
}

/// Sub-folders of `dir` that are not hidden, sorted.
fn subfolders(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Total size of the files under `dir` (symbolic links followed, as the HF cache uses them).
fn folder_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A size for people: `2.1 GB`, `144 MB`, `12 kB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}
