//! Where TAESD weights are looked for, in order:
//! 1. each models folder (`models/` by default): `VAE-taesd/taesd_decoder.safetensors` (A1111's
//!    folder and file name; A1111 itself downloads `.pth` files, which are not read here),
//!    then the diffusers folders `VAE-taesd/taesd/` and `taesd/`;
//! 2. the Hugging Face cache: the latest snapshot of `madebyollin/taesd` (diffusers folder or
//!    its `taesd_decoder.safetensors`).
//!
//! `taesdxl` instead of `taesd` for SDXL models. Nothing is downloaded.

use std::path::{Path, PathBuf};

/// Which TAESD a model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaesdFamily {
    /// SD 1.x and 2.x: `madebyollin/taesd`.
    Sd,
    /// SDXL: `madebyollin/taesdxl`.
    Sdxl,
}

impl TaesdFamily {
    /// The file and folder stem: `taesd` or `taesdxl`.
    pub fn stem(self) -> &'static str {
        match self {
            TaesdFamily::Sd => "taesd",
            TaesdFamily::Sdxl => "taesdxl",
        }
    }

    /// The Hugging Face repository.
    pub fn repo_id(self) -> &'static str {
        match self {
            TaesdFamily::Sd => "madebyollin/taesd",
            TaesdFamily::Sdxl => "madebyollin/taesdxl",
        }
    }
}

/// A diffusers `AutoencoderTiny` folder: config and weights present.
fn is_tiny_folder(dir: &Path) -> bool {
    dir.join("config.json").is_file() && dir.join("diffusion_pytorch_model.safetensors").is_file()
}

/// The first TAESD decoder found for `family` (a diffusers folder or an original decoder file),
/// looking in `model_dirs`, then in the Hugging Face cache `hf_cache`.
pub fn find(
    family: TaesdFamily,
    model_dirs: &[PathBuf],
    hf_cache: Option<&Path>,
) -> Option<PathBuf> {
    let stem = family.stem();
    let file = format!("{stem}_decoder.safetensors");
    for dir in model_dirs {
        let candidate = dir.join("VAE-taesd").join(&file);
        if candidate.is_file() {
            return Some(candidate);
        }
        for folder in [dir.join("VAE-taesd").join(stem), dir.join(stem)] {
            if is_tiny_folder(&folder) {
                return Some(folder);
            }
        }
    }
    let repo = hf_cache?.join(format!("models--{}", family.repo_id().replace('/', "--")));
    let mut snapshots: Vec<(std::time::SystemTime, PathBuf)> =
        std::fs::read_dir(repo.join("snapshots"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((modified, e.path()))
            })
            .collect();
    snapshots.sort();
    snapshots.into_iter().rev().find_map(|(_, snap)| {
        if is_tiny_folder(&snap) {
            Some(snap)
        } else {
            let decoder = snap.join(&file);
            decoder.is_file().then_some(decoder)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_folder_first_then_the_cache() {
        let models = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let dirs = [models.path().to_path_buf()];
        assert_eq!(find(TaesdFamily::Sd, &dirs, Some(cache.path())), None);

        let snap = cache
            .path()
            .join("models--madebyollin--taesdxl/snapshots/abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(snap.join("diffusion_pytorch_model.safetensors"), "x").unwrap();
        assert_eq!(
            find(TaesdFamily::Sdxl, &dirs, Some(cache.path())),
            Some(snap.clone())
        );
        assert_eq!(find(TaesdFamily::Sd, &dirs, Some(cache.path())), None);

        std::fs::create_dir_all(models.path().join("VAE-taesd")).unwrap();
        let file = models.path().join("VAE-taesd/taesdxl_decoder.safetensors");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(
            find(TaesdFamily::Sdxl, &dirs, Some(cache.path())),
            Some(file)
        );
    }
}
