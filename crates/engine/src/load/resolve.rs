//! Which model a run uses: `--model PRESET|PATH|NAME`, and the local models in `models/`.
//!
//! [`resolve`] tries, in order:
//! 1. a preset name (`sd15`, `sd-2.1`, `sd-turbo`, … see [`Preset::parse`]) unless the spec is
//!    written as a path (`./sd15`);
//! 2. an existing path: a diffusers folder (checked by [`check_diffusers_folder`]) or a
//!    single-file `.safetensors` checkpoint (pickles — `.ckpt`, `.pt`, `.pth`, `.bin` — are
//!    refused unopened);
//! 3. a preset's repository id (`stabilityai/sd-turbo`);
//! 4. a bare name, as `NAME/` or `NAME.safetensors` in each search folder and its
//!    `Stable-diffusion/` sub-folder (A1111's arrangement) — `models/` in the working
//!    directory by default ([`default_search_dirs`]).

use std::path::{Path, PathBuf};

use crate::load::hub::Preset;
use loopback_core::{Error, Result};

/// The folder, relative to the working directory, searched for local models by default.
pub const MODELS_DIR: &str = "models";

/// The sub-folder of a search folder where A1111 keeps checkpoints.
pub const A1111_CHECKPOINT_DIR: &str = "Stable-diffusion";

/// File extensions of single-file checkpoints (only `.safetensors` is loaded).
const CHECKPOINT_EXTENSIONS: [&str; 5] = ["safetensors", "ckpt", "pt", "pth", "bin"];

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A built-in model, fetched into the Hugging Face cache ([`crate::load::hub::fetch`]).
    Preset(Preset),
    /// A local diffusers folder (already checked by [`check_diffusers_folder`]).
    Folder(PathBuf),
    /// A single-file `.safetensors` checkpoint (opened when loaded).
    Checkpoint(PathBuf),
}

/// A diffusers folder found in a search folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalModel {
    /// The folder's name, usable as `--model NAME`.
    pub name: String,
    /// The folder.
    pub path: PathBuf,
}

/// The default search folders: `models/` in the working directory.
pub fn default_search_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from(MODELS_DIR)]
}

/// Works out which model `spec` means (see the module documentation for the order).
///
/// Errors (one line each): an empty spec; a single-file checkpoint; a folder that is not a
/// diffusers folder (naming what is missing); an unknown spec (listing the presets and the
/// folders searched).
pub fn resolve(spec: &str, search_dirs: &[PathBuf]) -> Result<ModelSource> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(Error::setting(
            "model",
            "\"\"",
            format!("give a preset ({}) or a diffusers folder", Preset::names()),
        ));
    }
    let pathlike = looks_like_path(spec);
    if !pathlike && let Some(preset) = Preset::parse(spec) {
        return Ok(ModelSource::Preset(preset));
    }
    let path = expand_tilde(spec);
    if std::fs::symlink_metadata(&path).is_ok() {
        return classify(&path);
    }
    if let Some(preset) = Preset::parse(spec) {
        return Ok(ModelSource::Preset(preset));
    }
    let mut searched = Vec::new();
    if !pathlike {
        for dir in search_dirs {
            let candidate = dir.join(spec);
            if candidate.is_dir() {
                return classify(&candidate);
            }
            for folder in [dir.clone(), dir.join(A1111_CHECKPOINT_DIR)] {
                for ext in CHECKPOINT_EXTENSIONS {
                    let file = folder.join(format!("{spec}.{ext}"));
                    if file.is_file() {
                        return classify(&file);
                    }
                }
            }
            searched.push(candidate.display().to_string());
        }
    }
    let searched = if searched.is_empty() {
        String::new()
    } else {
        format!("; searched {}", searched.join(", "))
    };
    Err(Error::setting(
        "model",
        spec,
        format!(
            "not a preset ({}) nor an existing diffusers folder or checkpoint{searched}",
            Preset::names()
        ),
    ))
}

/// What an existing path is: a diffusers folder, a `.safetensors` checkpoint, or an error
/// (a pickle whose globals are not a state dict's is refused; `checkpoint::pickle`).
fn classify(path: &Path) -> Result<ModelSource> {
    if path.is_dir() {
        check_diffusers_folder(path)?;
        return Ok(ModelSource::Folder(path.to_path_buf()));
    }
    if is_checkpoint(path) {
        if crate::load::checkpoint::pickle::is_pickle(path) {
            crate::load::checkpoint::pickle::check_pickle(path)?;
        }
        return Ok(ModelSource::Checkpoint(path.to_path_buf()));
    }
    Err(Error::input(
        path,
        "is a file, not a model: give a diffusers folder, a .safetensors checkpoint or a preset",
    ))
}

/// Whether `path` is named like a single-file checkpoint.
fn is_checkpoint(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CHECKPOINT_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether the user evidently wrote a path rather than a name.
fn looks_like_path(spec: &str) -> bool {
    spec.contains('/')
        || spec.contains('\\')
        || spec.starts_with('.')
        || spec.starts_with('~')
        || Path::new(spec).is_absolute()
        || is_checkpoint(Path::new(spec))
}

/// `~/x` → `<home>/x`.
fn expand_tilde(spec: &str) -> PathBuf {
    let path = Path::new(spec);
    match (path.strip_prefix("~"), std::env::home_dir()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// Each component with its config and its weights (full or half precision).
const COMPONENTS: [(&str, &str, [&str; 2]); 3] = [
    (
        "unet",
        "config.json",
        [
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ],
    ),
    (
        "vae",
        "config.json",
        [
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors",
        ],
    ),
    (
        "text_encoder",
        "config.json",
        ["model.safetensors", "model.fp16.safetensors"],
    ),
];

/// Checks that `dir` looks like a diffusers Stable Diffusion folder: `unet/`, `vae/` and
/// `text_encoder/` each with `config.json` and safetensors weights (full or `.fp16`
/// precision), and `scheduler/scheduler_config.json`. (`tokenizer/` is optional: the app
/// ships the CLIP tokenizer.) The error names everything missing, and says so when the
/// folder holds only `.bin` pickles or single-file checkpoints instead.
pub fn check_diffusers_folder(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::input(dir, "is not a folder"));
    }
    let mut missing = Vec::new();
    let mut pickles = Vec::new();
    for (component, config, weights) in COMPONENTS {
        let folder = dir.join(component);
        if !folder.join(config).is_file() {
            missing.push(format!("{component}/{config}"));
        }
        if !weights.iter().any(|w| folder.join(w).is_file()) {
            missing.push(format!("{component}/{}", weights[0]));
            let stem = weights[0].trim_end_matches(".safetensors");
            if folder.join(format!("{stem}.bin")).is_file() {
                pickles.push(format!("{component}/{stem}.bin"));
            }
        }
    }
    if !dir.join("scheduler/scheduler_config.json").is_file() {
        missing.push("scheduler/scheduler_config.json".to_string());
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut reason = format!("is not a diffusers folder: missing {}", missing.join(", "));
    if !pickles.is_empty() {
        reason.push_str(&format!(
            " ({} found: PyTorch .bin pickles are not loaded; convert them to safetensors)",
            pickles.join(", ")
        ));
    }
    let checkpoints = single_files(dir);
    if !checkpoints.is_empty() {
        reason.push_str(&format!(
            "; it holds {}: give the file itself as the model",
            checkpoints.join(", ")
        ));
    }
    Err(Error::input(dir, reason))
}

/// Names of single-file checkpoints directly in `dir`, sorted.
fn single_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_checkpoint(p))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// The diffusers folders directly inside the search folders (hidden ones skipped), each
/// folder's models sorted by name, in the order of `search_dirs`; a name already found in
/// an earlier folder is skipped, as [`resolve`] would never reach it. Missing or unreadable
/// search folders are skipped.
pub fn list_local(search_dirs: &[PathBuf]) -> Vec<LocalModel> {
    let mut found: Vec<LocalModel> = Vec::new();
    for dir in search_dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut here: Vec<LocalModel> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let path = e.path();
                (!name.starts_with('.') && check_diffusers_folder(&path).is_ok())
                    .then_some(LocalModel { name, path })
            })
            .collect();
        here.sort_by(|a, b| a.name.cmp(&b.name));
        for model in here {
            if !found.iter().any(|m| m.name == model.name) {
                found.push(model);
            }
        }
    }
    found
}
