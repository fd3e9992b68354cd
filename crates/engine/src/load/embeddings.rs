//! Textual-inversion embeddings: the files A1111 users keep in `embeddings/`, found by name
//! in the prompt.
//!
//! Searched in `models/embeddings/` and `embeddings/` (A1111 keeps them beside `models/`) and
//! in every `--embeddings-dir` folder, sub-folders included; an embedding is called by its
//! file name without extension. A `.safetensors` file holds either one tensor of shape
//! `(vectors, width)` or `(width)` under any name (`emb_params` from A1111 and kohya,
//! `<token>` from diffusers), or SDXL's pair `clip_l` + `clip_g`. `.pt` and `.bin`
//! embeddings (PyTorch pickles, A1111's `string_to_param` layout) are checked and read without
//! running anything (`checkpoint::pickle`). A file that cannot be read is one warning naming
//! it; the run goes on without it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::load::checkpoint::pickle::{PICKLE_EXTENSIONS, as_safetensors};
use crate::load::weights::hash::sha256_file;
use loopback_core::{Error, Result};

/// The folders searched by default, relative to the working directory.
pub const DEFAULT_DIRS: [&str; 2] = ["models/embeddings", "embeddings"];

/// An embedding's vectors.
#[derive(Debug, Clone)]
pub enum Vectors {
    /// One tensor `(vectors, width)` for the model's (first) text encoder.
    One(Tensor),
    /// SDXL's pair: `clip_l` for the first encoder, `clip_g` for the second.
    Sdxl {
        /// `(vectors, 768)`.
        clip_l: Tensor,
        /// `(vectors, 1280)`.
        clip_g: Tensor,
    },
}

/// A textual-inversion embedding read from a file.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// Its name in prompts: the file name without extension.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// A1111's short hash (the first 12 hex digits of the file's SHA-256), as `TI hashes`
    /// records it.
    pub short_hash: String,
    /// The vectors (f32, on the CPU).
    pub vectors: Vectors,
}

impl Embedding {
    /// How many tokens it takes in a prompt.
    pub fn count(&self) -> usize {
        match &self.vectors {
            Vectors::One(t) | Vectors::Sdxl { clip_l: t, .. } => t.dim(0).unwrap_or(0),
        }
    }

    /// The vectors for a model's encoders: `(first, second)` when their widths are the
    /// encoders' (`second` only for SDXL), else `None` (an embedding made for another model
    /// family, which A1111 skips too).
    pub fn for_encoders(
        &self,
        width: usize,
        width_2: Option<usize>,
    ) -> Option<(Tensor, Option<Tensor>)> {
        let fits = |t: &Tensor, w: usize| t.dim(1).ok() == Some(w);
        match (&self.vectors, width_2) {
            (Vectors::One(t), None) if fits(t, width) => Some((t.clone(), None)),
            (Vectors::Sdxl { clip_l, clip_g }, Some(w2))
                if fits(clip_l, width) && fits(clip_g, w2) =>
            {
                Some((clip_l.clone(), Some(clip_g.clone())))
            }
            _ => None,
        }
    }

    /// Which model family it is made for, by width (for the app's list).
    pub fn family(&self) -> &'static str {
        match &self.vectors {
            Vectors::Sdxl { .. } => "SDXL",
            Vectors::One(t) => match t.dim(1).unwrap_or(0) {
                768 => "SD 1.x",
                1024 => "SD 2.x",
                _ => "other",
            },
        }
    }
}

/// The embeddings found, and what could not be used.
#[derive(Debug, Clone, Default)]
pub struct Embeddings {
    /// Readable embeddings, by name (the first file of a name wins, in search order).
    pub list: Vec<Embedding>,
    /// One line per file that could not be used, naming it.
    pub warnings: Vec<String>,
}

impl Embeddings {
    /// Reads every embedding under `dirs` (missing folders are skipped).
    pub fn scan(dirs: &[PathBuf]) -> Self {
        let mut found = Embeddings::default();
        let mut files = Vec::new();
        for dir in dirs {
            collect_files(dir, &mut files);
        }
        for path in files {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if found.list.iter().any(|e| e.name == name) {
                continue;
            }
            match read_embedding(&path) {
                Ok(embedding) => found.list.push(embedding),
                Err(e) => found.warnings.push(format!("embedding skipped: {e}")),
            }
        }
        found
    }

    /// The embedding called `name`.
    pub fn get(&self, name: &str) -> Option<&Embedding> {
        self.list.iter().find(|e| e.name == name)
    }
}

/// One warning for each of `names` (embeddings a recipe used) that has no file in `dirs`.
pub fn missing(names: &[String], dirs: &[PathBuf]) -> Vec<String> {
    let mut files = Vec::new();
    for dir in dirs {
        collect_files(dir, &mut files);
    }
    names
        .iter()
        .filter(|name| {
            !files
                .iter()
                .any(|f| f.file_stem().and_then(|s| s.to_str()) == Some(name.as_str()))
        })
        .map(|name| {
            format!(
                "the prompt uses the embedding {name}, which is in none of {}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect()
}

/// The default folders plus `extra`.
pub fn search_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    DEFAULT_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(extra.iter().cloned())
        .collect()
}

/// Embedding files under `dir`, sub-folders included, in name order.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            collect_files(&path, out);
        } else if is_embedding_file(&path) {
            out.push(path);
        }
    }
}

/// Whether `path` is named like an embedding (`.safetensors`, `.pt`, `.bin`).
fn is_embedding_file(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    ext == "safetensors"
        || (ext != "ckpt" && ext != "pth" && PICKLE_EXTENSIONS.contains(&ext.as_str()))
}

/// Reads one embedding file.
pub fn read_embedding(path: &Path) -> Result<Embedding> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| Error::input(path, "the file name is not valid UTF-8"))?
        .to_string();
    // A pickle is checked and read without running anything (`checkpoint::pickle`).
    let readable = as_safetensors(path, &["string_to_param"])?;
    let tensors = candle_core::safetensors::load(&readable, &Device::Cpu)
        .map_err(|e| Error::input(path, format!("not a readable safetensors file: {e}")))?;
    let vectors = vectors_of(tensors).map_err(|reason| Error::input(path, reason))?;
    let short_hash = sha256_file(path)?[..12].to_string();
    Ok(Embedding {
        name,
        path: path.to_path_buf(),
        short_hash,
        vectors,
    })
}

/// The vectors of a file's tensors, in A1111's order of layouts.
fn vectors_of(mut tensors: HashMap<String, Tensor>) -> std::result::Result<Vectors, String> {
    let matrix = |t: Tensor, what: &str| -> std::result::Result<Tensor, String> {
        let t = t.to_dtype(DType::F32).map_err(|e| e.to_string())?;
        match t.rank() {
            1 => t.unsqueeze(0).map_err(|e| e.to_string()),
            2 if t.dim(0).unwrap_or(0) > 0 => Ok(t),
            _ => Err(format!(
                "{what} has shape {:?}, not (vectors, width)",
                t.dims()
            )),
        }
    };
    if tensors.contains_key("clip_l") && tensors.contains_key("clip_g") {
        let (Some(clip_l), Some(clip_g)) = (tensors.remove("clip_l"), tensors.remove("clip_g"))
        else {
            return Err("clip_l or clip_g is missing".into());
        };
        let (clip_l, clip_g) = (matrix(clip_l, "clip_l")?, matrix(clip_g, "clip_g")?);
        if clip_l.dim(0).ok() != clip_g.dim(0).ok() {
            return Err("clip_l and clip_g have different vector counts".into());
        }
        return Ok(Vectors::Sdxl { clip_l, clip_g });
    }
    if tensors.len() != 1 {
        return Err(format!(
            "holds {} tensors; an embedding has one (or SDXL's clip_l and clip_g)",
            tensors.len()
        ));
    }
    let (name, tensor) = tensors.into_iter().next().ok_or("holds no tensor")?;
    Ok(Vectors::One(matrix(tensor, &name)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join(name);
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    }

    fn zeros(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap()
    }

    #[test]
    fn every_common_layout_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let one = read_embedding(&write(
            dir.path(),
            "a.safetensors",
            &[("emb_params", zeros(&[3, 768]))],
        ))
        .unwrap();
        assert_eq!(
            (one.name.as_str(), one.count(), one.family()),
            ("a", 3, "SD 1.x")
        );
        assert_eq!(one.short_hash.len(), 12);
        assert!(one.for_encoders(768, None).is_some());
        assert!(one.for_encoders(1024, None).is_none());
        // diffusers' learned_embeds: one vector under the token's name.
        let flat = read_embedding(&write(
            dir.path(),
            "b.safetensors",
            &[("<b>", zeros(&[1024]))],
        ))
        .unwrap();
        assert_eq!((flat.count(), flat.family()), (1, "SD 2.x"));
        let xl = read_embedding(&write(
            dir.path(),
            "c.safetensors",
            &[("clip_l", zeros(&[2, 768])), ("clip_g", zeros(&[2, 1280]))],
        ))
        .unwrap();
        assert_eq!((xl.count(), xl.family()), (2, "SDXL"));
        let (l, g) = xl.for_encoders(768, Some(1280)).unwrap();
        assert_eq!(
            (l.dims(), g.unwrap().dims()),
            (&[2, 768][..], &[2, 1280][..])
        );
        assert!(xl.for_encoders(768, None).is_none());
    }

    #[test]
    fn unusable_files_are_one_warning_each() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "good.safetensors",
            &[("emb_params", zeros(&[1, 8]))],
        );
        write(
            dir.path(),
            "two.safetensors",
            &[("a", zeros(&[1, 8])), ("b", zeros(&[1, 8]))],
        );
        std::fs::write(dir.path().join("pickled.pt"), b"not opened").unwrap();
        std::fs::write(dir.path().join("broken.safetensors"), b"garbage").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let found = Embeddings::scan(&[dir.path().to_path_buf(), dir.path().join("missing")]);
        let names: Vec<&str> = found.list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        assert_eq!(found.warnings.len(), 3, "{:?}", found.warnings);
        assert!(
            found
                .warnings
                .iter()
                .all(|w| w.contains(&*dir.path().to_string_lossy()))
        );
        assert!(found.warnings.iter().any(|w| w.contains("pickle")));
    }
}
