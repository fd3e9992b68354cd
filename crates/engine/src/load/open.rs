//! Building a [`LoadedModel`] from what the user named: a diffusers folder or a single-file
//! checkpoint, optionally with a replacement VAE; and the model and VAE hashes for the
//! metadata, computed after loading.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::conditioning::tokenizer::ClipTokenizer;
use crate::load::checkpoint::{Checkpoint, CheckpointOptions, CustomVae, Family};
use crate::load::lora::{self, LoraSet, LoraSpec};
use crate::load::taesd::{self as taesd_find, TaesdFamily};
use crate::load::weights::hash::{HashCache, short_hash};
use crate::model::config::ModelFiles;
use crate::model::taesd::TaesdDecoder;
use crate::model::{Component, ModelWeights, SdModel, folder_parts};
use crate::run::pipeline::{SdxlText, TextAndSchedule};
use loopback_core::metadata::{LoraRecord, VaeInfo};
use loopback_core::{Error, Result};

/// A loaded model with its tokenizer and scheduler settings, reusable across runs.
#[derive(Debug)]
pub struct LoadedModel {
    /// The folder it came from.
    pub path: PathBuf,
    /// A short name for the metadata.
    pub name: String,
    /// The networks.
    pub model: SdModel,
    /// Tokenizer and scheduler settings.
    pub text: TextAndSchedule,
    /// A1111's short hash of the checkpoint file, once computed (none for folders).
    pub hash: Option<String>,
    /// The replacement VAE, if one was given.
    pub vae: Option<loopback_core::metadata::VaeInfo>,
    /// The replacement VAE's weights file (hashed for the metadata).
    pub vae_path: Option<PathBuf>,
    /// The LoRAs merged into the weights, in order, with their A1111 hashes.
    pub loras: Vec<LoraRecord>,
    /// The ControlNet loaded with the model (`--controlnet`), if any.
    pub controlnet: Option<crate::load::controlnet::LoadedControlNet>,
    /// The TAESD decoder for previews, when its weights were found ([`taesd_find::find`]);
    /// `None`: previews use the latent→RGB projection.
    pub taesd: Option<TaesdDecoder>,
}

impl LoadedModel {
    /// Loads the diffusers folder `path`.
    pub fn load(path: &std::path::Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with_loras(path, device, dtype, &[])
    }

    /// Loads the diffusers folder `path` with `loras` merged into its weights.
    pub fn load_with_loras(
        path: &std::path::Path,
        device: &Device,
        dtype: DType,
        loras: &[LoraSpec],
    ) -> Result<Self> {
        let options = LoadOptions {
            loras: loras.to_vec(),
            ..LoadOptions::default()
        };
        Self::load_with(
            &ModelPath::Folder(path.to_path_buf()),
            &options,
            device,
            dtype,
        )
    }
}

/// A model on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    /// A diffusers folder.
    Folder(PathBuf),
    /// A single-file checkpoint (`.safetensors`, original layout).
    Checkpoint(PathBuf),
}

impl ModelPath {
    /// The path.
    pub fn path(&self) -> &Path {
        match self {
            ModelPath::Folder(p) | ModelPath::Checkpoint(p) => p,
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A replacement VAE: a `.safetensors` file (original or diffusers layout) or a
    /// diffusers VAE folder.
    pub vae: Option<PathBuf>,
    /// How to read a single-file checkpoint.
    pub checkpoint: CheckpointOptions,
    /// LoRAs merged into the weights as they load.
    pub loras: Vec<LoraSpec>,
    /// Models folders searched for a TAESD decoder (previews); empty: the default ones
    /// ([`crate::load::resolve::default_search_dirs`]).
    pub search_dirs: Vec<PathBuf>,
    /// The Hugging Face cache searched for a TAESD decoder; `None`: the standard one.
    pub hf_cache: Option<PathBuf>,
    /// A ControlNet (file or folder) loaded beside the model; checked against its family.
    pub controlnet: Option<PathBuf>,
}

/// The name a model is recorded under: a folder's name (a Hugging Face cache snapshot's
/// repository name), a file's stem (as A1111 writes `Model: v1-5-pruned-emaonly`).
fn display_name(model: &ModelPath) -> String {
    let path = model.path();
    if let Some(repo) = crate::load::hub::snapshot_repo_name(path) {
        return repo;
    }
    let name = match model {
        ModelPath::Folder(_) => path.file_name(),
        ModelPath::Checkpoint(_) => path.file_stem(),
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Replaces the VAE of `files`/`weights` with the one at `vae_path`.
fn replace_vae(
    files: &mut ModelFiles,
    weights: &mut ModelWeights,
    vae_path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<CustomVae> {
    let vae = CustomVae::open(vae_path, &files.vae)?;
    files.vae = vae.config.clone();
    let dtype = crate::model::vae_dtype(files, dtype);
    weights.vae = Component {
        weights: vae.weights.clone().into_var_builder(dtype, device),
        names: vae.weights.names().into_iter().map(String::from).collect(),
        path: vae.weights_path.clone(),
    };
    Ok(vae)
}

impl LoadedModel {
    /// Loads `model` (with `options`' replacement VAE) onto `device` in `dtype`. Hashes are
    /// not computed here (see [`LoadedModel::compute_hashes`]).
    pub fn load_with(
        model: &ModelPath,
        options: &LoadOptions,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let (mut files, mut weights, unet_config, text) = match model {
            ModelPath::Folder(root) => {
                let (files, weights) = folder_parts(root, device, dtype)?;
                (
                    files,
                    weights,
                    root.join("unet/config.json"),
                    TextAndSchedule::load(root)?,
                )
            }
            ModelPath::Checkpoint(path) => checkpoint_parts(path, options, device, dtype)?,
        };
        let custom = match &options.vae {
            Some(vae_path) => Some(replace_vae(
                &mut files,
                &mut weights,
                vae_path,
                device,
                dtype,
            )?),
            None => None,
        };
        // A ControlNet of another family is refused before the model's weights are read.
        let controlnet = options
            .controlnet
            .as_deref()
            .map(|path| crate::load::controlnet::open(path, &files.unet, device, dtype))
            .transpose()?;
        let set = LoraSet::read(&options.loras)?;
        let sd = SdModel::from_parts(files, weights, &unet_config, device, dtype, &set)?;
        let loras = options
            .loras
            .iter()
            .map(|spec| {
                Ok(LoraRecord {
                    name: spec.name(),
                    weight: spec.weight,
                    hash: Some(lora::hash::short_hash(&spec.path)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let family = if sd.files.unet.cross_attention_dim == 2048 {
            TaesdFamily::Sdxl
        } else {
            TaesdFamily::Sd
        };
        // A TAESD that is missing or cannot be read only costs the nicer previews.
        let search_dirs = match options.search_dirs.is_empty() {
            true => crate::load::resolve::default_search_dirs(),
            false => options.search_dirs.clone(),
        };
        let hf_cache = options
            .hf_cache
            .clone()
            .or_else(crate::load::hub::default_cache_dir);
        let taesd = taesd_find::find(family, &search_dirs, hf_cache.as_deref())
            .and_then(|p| TaesdDecoder::load(&p, device, dtype).ok());
        Ok(LoadedModel {
            path: model.path().to_path_buf(),
            name: display_name(model),
            model: sd,
            text,
            hash: None,
            vae: custom.as_ref().map(|v| VaeInfo {
                name: v.name.clone(),
                hash: None,
            }),
            vae_path: custom.map(|v| v.weights_path),
            loras,
            controlnet,
            taesd,
        })
    }

    /// Fills in A1111's short hashes: the checkpoint file's (diffusers folders have no
    /// A1111 hash and get none) and the replacement VAE's, through `cache` so each file is
    /// hashed once. Runs on the loading thread, after loading.
    pub fn compute_hashes(&mut self, cache: Option<&HashCache>) -> Result<()> {
        if self.path.is_file() && self.hash.is_none() {
            self.hash = Some(short_hash(&self.path, cache)?);
        }
        if let (Some(vae), Some(path)) = (&mut self.vae, &self.vae_path)
            && vae.hash.is_none()
        {
            vae.hash = Some(short_hash(path, cache)?);
        }
        Ok(())
    }
}

/// Configs, weights, UNet config path and text settings of a single-file checkpoint.
fn checkpoint_parts(
    path: &Path,
    options: &LoadOptions,
    device: &Device,
    dtype: DType,
) -> Result<(ModelFiles, ModelWeights, PathBuf, TextAndSchedule)> {
    let ckpt = Checkpoint::open(path, &options.checkpoint)?;
    let vae_config = match (&ckpt.vae_config, &options.vae) {
        (Some(config), _) => config.clone(),
        (None, Some(_)) => {
            // A placeholder with the family's latent scale; replaced by the given VAE.
            let mut config: crate::model::config::VaeFile = serde_json::from_value(
                serde_json::json!({"block_out_channels": [128, 256, 512, 512]}),
            )
            .map_err(|e| Error::Engine(format!("VAE config: {e}")))?;
            config.scaling_factor =
                crate::load::checkpoint::configs::latent_scale(ckpt.detected.family);
            config
        }
        (None, None) => {
            return Err(Error::input(
                path,
                "has no VAE (first_stage_model.*); give one with --vae",
            ));
        }
    };
    let files = ckpt.model_files(vae_config);
    let component = |source: &crate::load::weights::WeightSource, dtype: DType| Component {
        weights: source.clone().into_var_builder(dtype, device),
        names: source.names().into_iter().map(String::from).collect(),
        path: path.to_path_buf(),
    };
    let sdxl = ckpt.detected.family == Family::Sdxl;
    // SDXL's VAE overflows in f16: it runs in f32 under f16 weights (as for folders).
    let vae_dtype = if sdxl && dtype == DType::F16 {
        DType::F32
    } else {
        dtype
    };
    let weights = ModelWeights {
        clip: component(&ckpt.text, dtype),
        clip2: ckpt.text2.as_ref().map(|source| component(source, dtype)),
        vae: component(ckpt.vae.as_ref().unwrap_or(&ckpt.text), vae_dtype),
        unet: component(&ckpt.unet, dtype),
    };
    let text = match &options.checkpoint.config {
        Some(folder) => {
            let mut text = TextAndSchedule::load(folder)?;
            text.scheduler = ckpt.scheduler.clone();
            text
        }
        None => {
            let tokenizer = ClipTokenizer::bundled()?;
            let pad_token = if ckpt.pad_with_exclamation {
                tokenizer
                    .token_id("!")
                    .unwrap_or_else(|| tokenizer.eos_id())
            } else {
                tokenizer.eos_id()
            };
            // SDXL's second tokenizer pads with `!` and shares the first one's vocabulary;
            // an empty negative prompt gives zeros, as diffusers' and A1111's SDXL do.
            let sdxl = sdxl.then(|| SdxlText {
                pad_token_2: tokenizer
                    .token_id("!")
                    .unwrap_or_else(|| tokenizer.eos_id()),
                zero_empty_negative: true,
            });
            TextAndSchedule {
                tokenizer,
                pad_token,
                scheduler: ckpt.scheduler.clone(),
                sdxl,
            }
        }
    };
    Ok((files, weights, path.to_path_buf(), text))
}
