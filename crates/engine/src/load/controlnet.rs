//! Loading a ControlNet: a diffusers folder (`config.json` + weights), or a single file as
//! A1111's ControlNet extension keeps them in `models/ControlNet/` — the original layout
//! (`control_model.input_blocks…`, `input_hint_block`, `zero_convs`, `middle_block_out`;
//! `.safetensors`, or `.pth` read by the safe pickle reader) or diffusers names in one file.
//!
//! A single file carries no config: its encoder is the base model's UNet encoder (a
//! ControlNet is trained as a copy of it), so the base model's UNet config is used and the
//! conditioning embedding's widths are read from the tensor shapes. Whether the ControlNet
//! fits the model (its family: cross-attention width and SDXL's added conditioning) is
//! checked from the header before any weight is read.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::load::checkpoint::{LdmUnetLayout, as_safetensors, ldm_unet_name};
use crate::load::weights::{Derive, SafetensorsFile, WeightSource};
use crate::model::config::UNetFile;
use crate::model::controlnet::{ControlNet, ControlNetFile};
use loopback_core::{Error, Result};

/// The sub-folders of a models folder searched for ControlNets by name, as A1111 and its
/// extension arrange them.
pub const CONTROLNET_DIRS: [&str; 2] = ["ControlNet", "controlnet"];

/// File extensions of single-file ControlNets.
pub const CONTROLNET_EXTENSIONS: [&str; 2] = ["safetensors", "pth"];

/// A loaded ControlNet and what the metadata says of it.
#[derive(Debug)]
pub struct LoadedControlNet {
    /// The network.
    pub net: ControlNet,
    /// The file or folder it came from.
    pub path: PathBuf,
    /// Its name (file stem or folder name), as the extension shows it.
    pub name: String,
    /// The extension's short hash (A1111's legacy 8-digit model hash) of the weights file.
    pub hash: String,
}

/// What a model is, for matching a ControlNet to it: cross-attention width and whether it
/// has SDXL's added conditioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The text embeddings' width (768 SD 1.x, 1024 SD 2.x, 2048 SDXL).
    pub context_dim: usize,
    /// SDXL's `text_time` conditioning.
    pub sdxl: bool,
}

impl Family {
    /// The family of a model with this UNet config.
    pub fn of_unet(cfg: &UNetFile) -> Self {
        Family {
            context_dim: cfg.cross_attention_dim,
            sdxl: cfg.addition_embed_type.as_deref() == Some("text_time"),
        }
    }

    /// A name for messages.
    pub fn label(self) -> String {
        match (self.sdxl, self.context_dim) {
            (true, _) => "SDXL".into(),
            (false, 768) => "SD 1.x".into(),
            (false, 1024) => "SD 2.x".into(),
            (false, d) => format!("a model with {d}-wide text embeddings"),
        }
    }
}

/// Finds the ControlNet `spec` names: a path (file or folder), else a name (with or without
/// extension) in the `ControlNet/` folders of `search_dirs` or in them directly.
pub fn resolve(spec: &str, search_dirs: &[PathBuf]) -> Result<PathBuf> {
    let spec = spec.trim();
    let direct = Path::new(spec);
    if direct.exists() {
        return Ok(direct.to_path_buf());
    }
    let mut looked = Vec::new();
    for dir in search_dirs {
        let mut places: Vec<PathBuf> = CONTROLNET_DIRS.iter().map(|d| dir.join(d)).collect();
        places.push(dir.clone());
        for place in places {
            let candidates = std::iter::once(place.join(spec)).chain(
                CONTROLNET_EXTENSIONS
                    .iter()
                    .map(|ext| place.join(format!("{spec}.{ext}"))),
            );
            for candidate in candidates {
                if candidate.is_file() || candidate.join("config.json").is_file() {
                    return Ok(candidate);
                }
            }
            looked.push(place.display().to_string());
        }
    }
    Err(Error::input(
        direct,
        format!(
            "no such ControlNet file or folder (searched {})",
            if looked.is_empty() {
                "no models folder".into()
            } else {
                looked.join(", ")
            }
        ),
    ))
}

/// A1111's legacy 8-digit model hash, which the ControlNet extension shows beside a model's
/// name: the first 8 hex digits of the SHA-256 of the 64 KiB at offset 1 MiB (of less, or
/// nothing, for a smaller file).
pub fn legacy_hash(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::input(path, e.to_string()))?;
    file.seek(SeekFrom::Start(0x10_0000))
        .map_err(|e| Error::input(path, e.to_string()))?;
    let mut block = Vec::with_capacity(0x1_0000);
    file.take(0x1_0000)
        .read_to_end(&mut block)
        .map_err(|e| Error::input(path, e.to_string()))?;
    let full = crate::load::weights::hash::sha256_hex(block.as_slice(), path)?;
    Ok(full[..8].to_string())
}

/// The weights file of a diffusers ControlNet folder.
fn folder_weights(dir: &Path, dtype: DType) -> Result<PathBuf> {
    let full = dir.join("diffusion_pytorch_model.safetensors");
    let half = dir.join("diffusion_pytorch_model.fp16.safetensors");
    let order = if dtype == DType::F16 {
        [&half, &full]
    } else {
        [&full, &half]
    };
    order
        .into_iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::input(
                dir,
                "has no diffusion_pytorch_model.safetensors (not a diffusers ControlNet folder)",
            )
        })
}

/// Opens the ControlNet at `path` for a model whose UNet config is `base`, on `device` in
/// `dtype`. Refused before any weight is read, with one line naming the file: a file that
/// is not a ControlNet, or one of another family than the model.
pub fn open(
    path: &Path,
    base: &UNetFile,
    device: &Device,
    dtype: DType,
) -> Result<LoadedControlNet> {
    let (net, weights) = build(path, base, device, dtype)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(LoadedControlNet {
        net,
        path: path.to_path_buf(),
        name,
        hash: legacy_hash(&weights)?,
    })
}

/// The network, and the weights file it was read from (for the hash).
fn build(
    path: &Path,
    base: &UNetFile,
    device: &Device,
    dtype: DType,
) -> Result<(ControlNet, PathBuf)> {
    let want = Family::of_unet(base);
    if path.is_dir() {
        let config_path = path.join("config.json");
        let cfg = ControlNetFile::read(&config_path)?;
        check_family(path, Family::of_unet(&cfg.unet), want)?;
        let weights = folder_weights(path, dtype)?;
        let file = Arc::new(SafetensorsFile::open(&weights)?);
        let vb = WeightSource::identity(file).into_var_builder(dtype, device);
        return Ok((ControlNet::new(vb, &cfg, &config_path)?, weights));
    }
    let stored = as_safetensors(path, &["state_dict"])?;
    let file = Arc::new(SafetensorsFile::open(&stored)?);
    let (source, embedding) = single_file_names(&file, path, base)?;
    let found = single_file_family(&file, &source, path)?;
    check_family(path, found, want)?;
    let cfg = ControlNetFile::for_unet(base, embedding, path)?;
    let vb = source.into_var_builder(dtype, device);
    Ok((ControlNet::new(vb, &cfg, path)?, path.to_path_buf()))
}

fn check_family(path: &Path, found: Family, want: Family) -> Result<()> {
    if found == want {
        return Ok(());
    }
    Err(Error::input(
        path,
        format!(
            "is a ControlNet for {}; the model is {} (a ControlNet fits only its own family)",
            found.label(),
            want.label()
        ),
    ))
}

/// The diffusers name of a single-file ControlNet tensor in the original layout (prefix
/// `control_model.` already removed), for an encoder laid out as `layout` whose conditioning
/// embedding has `hint_convs` convolutions.
fn original_name(name: &str, layout: LdmUnetLayout, hint_convs: usize) -> Option<String> {
    if let Some(rest) = name.strip_prefix("input_hint_block.") {
        let (index, param) = rest.split_once('.')?;
        let index: usize = index.parse().ok()?;
        if !index.is_multiple_of(2) || !matches!(param, "weight" | "bias") {
            return None;
        }
        let k = index / 2;
        let module = if k == 0 {
            "conv_in".to_string()
        } else if k + 1 == hint_convs {
            "conv_out".to_string()
        } else {
            format!("blocks.{}", k - 1)
        };
        return Some(format!("controlnet_cond_embedding.{module}.{param}"));
    }
    if let Some(rest) = name.strip_prefix("zero_convs.") {
        let (index, param) = rest.split_once(".0.")?;
        return Some(format!("controlnet_down_blocks.{index}.{param}"));
    }
    if let Some(param) = name.strip_prefix("middle_block_out.0.") {
        return Some(format!("controlnet_mid_block.{param}"));
    }
    ldm_unet_name(name, layout)
}

/// Every tensor of a single-file ControlNet under its diffusers name, and the widths of its
/// conditioning embedding's stages. `path` is the file the user named.
fn single_file_names(
    file: &Arc<SafetensorsFile>,
    path: &Path,
    base: &UNetFile,
) -> Result<(WeightSource, Vec<usize>)> {
    let names = file.names();
    let strip = |n: &str| n.strip_prefix("control_model.").unwrap_or(n).to_string();
    let has = |prefix: &str| names.iter().any(|n| strip(n).starts_with(prefix));
    let mut source = WeightSource::new();
    if has("controlnet_cond_embedding.") {
        for name in &names {
            source.insert(strip(name), Arc::clone(file), name.clone(), Derive::Plain);
        }
    } else if has("input_hint_block.") {
        let layout = LdmUnetLayout {
            levels: base.block_out_channels.len(),
            layers_per_block: base.layers_per_block,
        };
        let hint_convs = names
            .iter()
            .filter(|n| {
                let s = strip(n);
                s.starts_with("input_hint_block.") && s.ends_with(".weight")
            })
            .count();
        for name in &names {
            if let Some(requested) = original_name(&strip(name), layout, hint_convs) {
                source.insert(requested, Arc::clone(file), name.clone(), Derive::Plain);
            }
        }
    } else {
        let hint = if names
            .iter()
            .any(|n| n.starts_with("model.diffusion_model."))
        {
            " (a Stable Diffusion checkpoint: give it with --model)"
        } else if names.iter().any(|n| n.contains("lora_")) {
            " (a LoRA file?)"
        } else {
            ""
        };
        return Err(Error::input(
            path,
            format!(
                "is not a ControlNet: no input_hint_block or controlnet_cond_embedding tensors{hint}"
            ),
        ));
    }
    // The embedding's stage widths: conv_in's output, then every stride-2 block's output.
    let out = |requested: &str| -> Option<usize> {
        let stored = source.get(requested)?;
        file.shape(&stored.name).map(|s| s[0])
    };
    let mut widths = vec![
        out("controlnet_cond_embedding.conv_in.weight")
            .ok_or_else(|| Error::input(path, "has no conditioning embedding input convolution"))?,
    ];
    let mut i = 1;
    while let Some(w) = out(&format!("controlnet_cond_embedding.blocks.{i}.weight")) {
        widths.push(w);
        i += 2;
    }
    Ok((source, widths))
}

/// The family of a single-file ControlNet from its shapes: the cross-attention width of its
/// first transformer, and whether it has SDXL's added embedding.
fn single_file_family(
    file: &SafetensorsFile,
    source: &WeightSource,
    path: &Path,
) -> Result<Family> {
    let names = source.names();
    let context_dim = names
        .iter()
        .find(|n| n.ends_with("attn2.to_k.weight"))
        .and_then(|n| source.get(n))
        .and_then(|r| file.shape(&r.name))
        .and_then(|s| s.get(1).copied())
        .ok_or_else(|| Error::input(path, "is not a ControlNet: it has no cross-attention"))?;
    Ok(Family {
        context_dim,
        sdxl: names.iter().any(|n| n.starts_with("add_embedding.")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_names_map_to_diffusers() {
        let layout = LdmUnetLayout {
            levels: 4,
            layers_per_block: 2,
        };
        let map = |n: &str| original_name(n, layout, 8);
        assert_eq!(
            map("input_hint_block.0.weight").as_deref(),
            Some("controlnet_cond_embedding.conv_in.weight")
        );
        assert_eq!(
            map("input_hint_block.4.bias").as_deref(),
            Some("controlnet_cond_embedding.blocks.1.bias")
        );
        assert_eq!(
            map("input_hint_block.14.weight").as_deref(),
            Some("controlnet_cond_embedding.conv_out.weight")
        );
        assert_eq!(map("input_hint_block.1.weight"), None);
        assert_eq!(
            map("zero_convs.11.0.weight").as_deref(),
            Some("controlnet_down_blocks.11.weight")
        );
        assert_eq!(
            map("middle_block_out.0.bias").as_deref(),
            Some("controlnet_mid_block.bias")
        );
        assert_eq!(
            map("input_blocks.0.0.weight").as_deref(),
            Some("conv_in.weight")
        );
        assert_eq!(
            map("time_embed.2.bias").as_deref(),
            Some("time_embedding.linear_2.bias")
        );
    }

    #[test]
    fn families_are_named() {
        let f = |context_dim, sdxl| Family { context_dim, sdxl };
        assert_eq!(f(768, false).label(), "SD 1.x");
        assert_eq!(f(1024, false).label(), "SD 2.x");
        assert_eq!(f(2048, true).label(), "SDXL");
        assert_eq!(f(8, false).label(), "a model with 8-wide text embeddings");
    }
}
