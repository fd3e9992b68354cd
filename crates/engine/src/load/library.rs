//! The model library: the models, VAEs, LoRAs, ControlNets and TAESD decoders on disk, for
//! the CLI's `models` command and the app's pickers.
//!
//! Searched, in each search folder (`models/` by default), as A1111 arranges them:
//! - checkpoints: `*.safetensors` and `*.ckpt` directly in it and in `Stable-diffusion/`;
//! - diffusers folders: its sub-folders that are complete diffusers models;
//! - VAEs: `VAE/`; LoRAs: `Lora/` and `LyCORIS/`; TAESD decoders: `VAE-taesd/`;
//! - ControlNets: `ControlNet/` and `controlnet/` (single `.safetensors` or `.pth` files,
//!   and diffusers ControlNet folders);
//! - textual-inversion embeddings: `embeddings/`, and `embeddings/` beside the search folder
//!   (A1111's layout);
//!
//! and the diffusers models in the Hugging Face cache (`models--ORG--NAME/snapshots/*`).
//! Scanning reads only safetensors headers (to tell the family) and never hashes a file:
//! the hash is shown when it is already cached ([`HashCache`]), e.g. after a load.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::load::checkpoint::detect::detect;
use crate::load::controlnet::{CONTROLNET_DIRS, CONTROLNET_EXTENSIONS};
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
    /// A ControlNet (`--controlnet FILE|FOLDER|NAME`): a single file or a diffusers folder.
    ControlNet,
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
            Kind::ControlNet => "controlnet",
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
                entries.push(folder_entry(
                    Kind::Diffusers,
                    &sub,
                    false,
                    folder_family(&sub),
                ));
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
        entries.extend(controlnets_in(dir, hashes));
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

fn folder_entry(kind: Kind, dir: &Path, in_hf_cache: bool, family: Option<String>) -> Entry {
    Entry {
        kind,
        name: stem(dir),
        path: dir.to_path_buf(),
        bytes: folder_bytes(dir),
        family,
        hash: None,
        in_hf_cache,
    }
}

/// The ControlNets in the `ControlNet/` folders of the search folder `dir`: single files
/// (family from a safetensors header; a `.pth` file's is unknown) and diffusers ControlNet
/// folders (a `config.json` whose `_class_name` is `ControlNetModel`). A folder reached by
/// both spellings (a case-insensitive file system) is listed once.
fn controlnets_in(dir: &Path, hashes: Option<&HashCache>) -> Vec<Entry> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut entries = Vec::new();
    for sub in CONTROLNET_DIRS {
        let folder = dir.join(sub);
        let Ok(real) = std::fs::canonicalize(&folder) else {
            continue;
        };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        for file in files_in(&folder, &CONTROLNET_EXTENSIONS) {
            let family = if has_extension(&file, "safetensors") {
                controlnet_file_family(&file)
            } else {
                None
            };
            entries.push(file_entry(Kind::ControlNet, &file, family, hashes));
        }
        for sub in subfolders(&folder) {
            if let Some(family) = controlnet_folder(&sub) {
                entries.push(folder_entry(Kind::ControlNet, &sub, false, family));
            }
        }
    }
    entries
}

/// The family of a text-embedding width and SDXL's added conditioning, as the checkpoints'
/// families are named; `None` for a width no released family has.
fn controlnet_family(context_dim: usize, sdxl: bool) -> Option<String> {
    let family = match (sdxl, context_dim) {
        (true, _) | (false, 2048) => "SDXL",
        (false, 768) => "SD 1.x",
        (false, 1024) => "SD 2.x",
        _ => return None,
    };
    Some(family.to_string())
}

/// The family of a single-file ControlNet, from its safetensors header only: the width of
/// the first cross-attention key projection, and SDXL's added embedding (`label_emb` in the
/// original layout, `add_embedding` in diffusers names).
fn controlnet_file_family(path: &Path) -> Option<String> {
    let file = SafetensorsFile::open(path).ok()?;
    let names = file.names();
    let key = names
        .iter()
        .filter(|n| n.ends_with("attn2.to_k.weight"))
        .min()?;
    let context_dim = *file.shape(key)?.get(1)?;
    let sdxl = names
        .iter()
        .any(|n| n.contains("label_emb.") || n.contains("add_embedding."));
    controlnet_family(context_dim, sdxl)
}

/// Whether `dir` is a diffusers ControlNet folder, with its family from its config: `None`
/// when it is not one, `Some(None)` when it is but its family cannot be told.
fn controlnet_folder(dir: &Path) -> Option<Option<String>> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    if json["_class_name"].as_str() != Some("ControlNetModel") {
        return None;
    }
    let sdxl = json["addition_embed_type"].as_str() == Some("text_time");
    Some(
        json["cross_attention_dim"]
            .as_u64()
            .and_then(|dim| controlnet_family(dim as usize, sdxl)),
    )
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
            let mut entry = folder_entry(Kind::Diffusers, &newest, true, folder_family(&newest));
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
        .filter(|p| p.is_file() && extensions.iter().any(|x| has_extension(p, x)))
        .collect();
    files.sort();
    files
}

/// Whether `path` ends in `.extension` (case-insensitive).
fn has_extension(path: &Path, extension: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(extension))
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

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    /// Writes a safetensors file holding zero-filled f16 tensors of these names and shapes.
    fn write_safetensors(path: &Path, tensors: &[(&str, &[usize])]) {
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, shape)| vec![0u8; 2 * shape.iter().product::<usize>()])
            .collect();
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .zip(&data)
            .map(|((name, shape), bytes)| {
                let view = TensorView::new(Dtype::F16, shape.to_vec(), bytes).expect("view");
                (name.to_string(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).expect("write safetensors");
    }

    /// A single-file ControlNet in the original layout with this text width (and SDXL's
    /// `label_emb`).
    fn original_controlnet(path: &Path, context_dim: usize, sdxl: bool) {
        let key = [4, context_dim];
        let mut tensors: Vec<(&str, &[usize])> = vec![
            ("control_model.input_hint_block.0.weight", &[16, 3, 3, 3]),
            (
                "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                &key,
            ),
        ];
        if sdxl {
            tensors.push(("control_model.label_emb.0.0.weight", &[4, 8]));
        }
        write_safetensors(path, &tensors);
    }

    fn folder_controlnet(dir: &Path, config: serde_json::Value) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        write_safetensors(
            &dir.join("diffusion_pytorch_model.safetensors"),
            &[("controlnet_cond_embedding.conv_in.weight", &[16, 3, 3, 3])],
        );
    }

    #[test]
    fn controlnets_are_listed_with_their_family() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path().join("models");
        let upper = models.join("ControlNet");
        let lower = models.join("controlnet");
        std::fs::create_dir_all(&upper).unwrap();
        original_controlnet(&upper.join("tile_sd15.safetensors"), 768, false);
        original_controlnet(&upper.join("canny_sd21.safetensors"), 1024, false);
        original_controlnet(&upper.join("depth_xl.safetensors"), 2048, true);
        original_controlnet(&upper.join("odd-width.safetensors"), 8, false);
        std::fs::write(upper.join("openpose.pth"), b"a pickle").unwrap();
        std::fs::write(upper.join("notes.txt"), b"not a model").unwrap();
        folder_controlnet(
            &upper.join("tile-diffusers"),
            serde_json::json!({"_class_name": "ControlNetModel", "cross_attention_dim": 768}),
        );
        folder_controlnet(
            &upper.join("union-xl"),
            serde_json::json!({
                "_class_name": "ControlNetModel",
                "cross_attention_dim": 2048,
                "addition_embed_type": "text_time",
            }),
        );
        // A folder with another class is not a ControlNet.
        folder_controlnet(
            &upper.join("a-unet"),
            serde_json::json!({"_class_name": "UNet2DConditionModel"}),
        );
        // The lower-case spelling is searched too (on a case-insensitive file system it is
        // the same folder, whose files are then listed once).
        std::fs::create_dir_all(&lower).unwrap();
        original_controlnet(&lower.join("lineart.safetensors"), 768, false);

        let entries = scan(std::slice::from_ref(&models), None, None);
        let family = |name: &str| {
            let entry = entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("no {name} in {entries:#?}"));
            assert_eq!(entry.kind, Kind::ControlNet, "{entry:?}");
            assert!(entry.bytes > 0, "{entry:?}");
            entry.family.clone()
        };
        assert_eq!(family("tile_sd15").as_deref(), Some("SD 1.x"));
        assert_eq!(family("canny_sd21").as_deref(), Some("SD 2.x"));
        assert_eq!(family("depth_xl").as_deref(), Some("SDXL"));
        assert_eq!(family("odd-width"), None);
        assert_eq!(family("openpose"), None);
        assert_eq!(family("tile-diffusers").as_deref(), Some("SD 1.x"));
        assert_eq!(family("union-xl").as_deref(), Some("SDXL"));
        assert_eq!(family("lineart").as_deref(), Some("SD 1.x"));
        // Nothing else: not the other files, nor a checkpoint or pipeline in these folders.
        assert_eq!(entries.len(), 8, "{entries:#?}");
        assert_eq!(Kind::ControlNet.label(), "controlnet");
        assert_eq!(
            serde_json::to_value(Kind::ControlNet).unwrap(),
            serde_json::json!("controlnet")
        );
    }
}
