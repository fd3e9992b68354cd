//! A replacement VAE (`--vae`): a single `.safetensors` file in the original layout (with or
//! without the `first_stage_model.` prefix, e.g. `vae-ft-mse-840000-ema-pruned.safetensors`),
//! a single file in diffusers' layout, or a diffusers VAE folder (`vae/` itself or a model
//! folder holding one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::load::checkpoint::configs;
use crate::load::checkpoint::detect::{VaeShape, vae_shape};
use crate::load::checkpoint::pickle::as_safetensors;
use crate::load::checkpoint::vae_names::{VAE_PREFIX, ldm_vae_name, linear_reshape};
use crate::load::weights::{Derive, SafetensorsFile, WeightSource};
use crate::model::config::{VaeFile, read_json};
use loopback_core::{Error, Result};

/// Where a replacement VAE comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeSource {
    /// A single `.safetensors` file.
    File(PathBuf),
    /// A diffusers VAE folder (`config.json` + weights).
    Folder(PathBuf),
}

/// An opened replacement VAE.
#[derive(Debug)]
pub struct CustomVae {
    /// Where it came from.
    pub source: VaeSource,
    /// Its name for the metadata (file stem or folder name, as A1111 writes `VAE: name`).
    pub name: String,
    /// The file whose hash identifies it (the file itself, or the folder's weights).
    pub weights_path: PathBuf,
    /// Its config.
    pub config: VaeFile,
    /// Its tensors under diffusers names.
    pub weights: WeightSource,
}

/// The diffusers VAE weights in `dir`, full precision first.
fn folder_weights(dir: &Path) -> Option<PathBuf> {
    [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
    ]
    .iter()
    .map(|f| dir.join(f))
    .find(|p| p.is_file())
}

/// The shape of a VAE stored with diffusers names.
fn diffusers_shape(file: &SafetensorsFile) -> Result<VaeShape> {
    let dim = |name: &str, i: usize| {
        file.shape(name)
            .and_then(|s| s.get(i).copied())
            .ok_or_else(|| Error::input(file.path(), format!("not a VAE: missing tensor {name}")))
    };
    let names = file.names();
    let count = |prefix: &str| {
        (0..)
            .take_while(|i| {
                let p = format!("{prefix}{i}.");
                names.iter().any(|n| n.starts_with(&p))
            })
            .count()
    };
    let levels = count("encoder.down_blocks.");
    let channels = (0..levels)
        .map(|i| {
            dim(
                &format!("encoder.down_blocks.{i}.resnets.0.conv2.weight"),
                0,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(VaeShape {
        in_channels: dim("encoder.conv_in.weight", 1)?,
        out_channels: dim("decoder.conv_out.weight", 0)?,
        channels,
        layers_per_block: count("encoder.down_blocks.0.resnets."),
        latent_channels: dim("decoder.conv_in.weight", 1)?,
        quant_conv: file.info("quant_conv.weight").is_some(),
    })
}

/// `base` when `shape` is the architecture it describes (keeping its groups and latent
/// scale), else a config built from `shape` with `base`'s latent scale.
fn config_for(shape: &VaeShape, base: &VaeFile, path: &Path) -> Result<VaeFile> {
    let same = base.block_out_channels == shape.channels
        && base.layers_per_block == shape.layers_per_block
        && base.latent_channels == shape.latent_channels
        && base.in_channels == shape.in_channels
        && base.out_channels == shape.out_channels;
    if same {
        let mut config = base.clone();
        config.use_quant_conv = shape.quant_conv;
        config.use_post_quant_conv = shape.quant_conv;
        return Ok(config);
    }
    configs::vae_config(shape, base.scaling_factor, path)
}

impl CustomVae {
    /// Opens the VAE at `path` for a model whose own VAE is `base` (its latent scale is
    /// kept; the replacement must produce the same latents).
    pub fn open(path: &Path, base: &VaeFile) -> Result<Self> {
        if path.is_dir() {
            return Self::open_folder(path);
        }
        let file = Arc::new(SafetensorsFile::open(&as_safetensors(
            path,
            &["state_dict"],
        )?)?);
        let has = |name: &str| file.info(name).is_some();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (shape, weights) = if has("encoder.down_blocks.0.resnets.0.conv1.weight") {
            (
                diffusers_shape(&file)?,
                WeightSource::identity(Arc::clone(&file)),
            )
        } else {
            let prefix = if has(&format!("{VAE_PREFIX}encoder.conv_in.weight")) {
                VAE_PREFIX
            } else if has("encoder.conv_in.weight") {
                ""
            } else {
                return Err(Error::input(
                    path,
                    "not a VAE: no encoder.conv_in (original layout, with or without \
                     first_stage_model.) nor encoder.down_blocks (diffusers layout)",
                ));
            };
            let shape = vae_shape(&file, prefix)?;
            let mut weights = WeightSource::new();
            for stored in file.names() {
                if !stored.starts_with(prefix) {
                    continue;
                }
                if let Some((requested, derive)) = ldm_vae_name(&stored, shape.channels.len()) {
                    let derive = match derive {
                        Derive::Reshape(_) => linear_reshape(&file, &stored, derive),
                        d => d,
                    };
                    weights.insert(requested, Arc::clone(&file), stored, derive);
                }
            }
            (shape, weights)
        };
        Ok(CustomVae {
            source: VaeSource::File(path.to_path_buf()),
            name,
            weights_path: path.to_path_buf(),
            config: config_for(&shape, base, path)?,
            weights,
        })
    }

    /// Opens a diffusers VAE folder (or the `vae/` of a model folder).
    fn open_folder(path: &Path) -> Result<Self> {
        let dir = if path.join("config.json").is_file() {
            path.to_path_buf()
        } else if path.join("vae/config.json").is_file() {
            path.join("vae")
        } else {
            return Err(Error::input(
                path,
                "not a VAE folder: no config.json (nor vae/config.json)",
            ));
        };
        let config_path = dir.join("config.json");
        let config: VaeFile = read_json(&config_path)?;
        config.check(&config_path)?;
        let weights_path = folder_weights(&dir)
            .ok_or_else(|| Error::input(&dir, "no diffusion_pytorch_model.safetensors weights"))?;
        let file = Arc::new(SafetensorsFile::open(&weights_path)?);
        let name = crate::load::hub::snapshot_repo_name(path)
            .or_else(|| path.file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        Ok(CustomVae {
            source: VaeSource::Folder(path.to_path_buf()),
            name,
            weights_path,
            config,
            weights: WeightSource::identity(file),
        })
    }
}
