//! Single-file checkpoints: `.safetensors` files in the original CompVis / Stability layout
//! (what A1111, ComfyUI and model sites share) for SD 1.x, SD 2.x and SDXL base.
//!
//! [`Checkpoint::open`] reads the header only: it detects the family from the tensor names
//! and shapes ([`detect`]), builds the configs the engine needs ([`configs`]) and maps every
//! tensor to the diffusers name the engine's modules ask for ([`unet_names`],
//! [`vae_names`], [`clip_names`]). The weights are read per tensor when the model is built
//! ([`crate::load::weights`]). PyTorch pickles (`.ckpt`) are checked against an allowlist and
//! read without running anything, then opened as a safetensors copy ([`pickle`]).

pub mod clip_names;
pub mod configs;
pub mod detect;
pub mod pickle;
pub mod unet_names;
pub mod vae_file;
pub mod vae_names;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use detect::{Detected, Family};
pub use pickle::{PICKLE_EXTENSIONS, as_safetensors, check_pickle};
pub use unet_names::{LdmUnetLayout, ldm_unet_name};
pub use vae_file::{CustomVae, VaeSource};

use crate::load::weights::{Derive, SafetensorsFile, WeightSource};
use crate::model::config::{ClipFile, ModelFiles, UNetFile, VaeFile};
use crate::scheduler::{PredictionType, SchedulerConfig};
use clip_names::{clip_l_name, open_clip_names};
use detect::TextKind;
use loopback_core::{Error, Result};
use vae_names::linear_reshape;

/// How to read a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// A diffusers model folder whose `unet/`, `vae/`, `text_encoder/` configs, scheduler and
    /// tokenizer describe the checkpoint (as diffusers' `from_single_file(config=…)`), for
    /// models whose attention heads or GroupNorm groups differ from the released ones.
    pub config: Option<PathBuf>,
    /// The model's prediction type, which the weights cannot show (default: epsilon;
    /// v-prediction for SD 2.x).
    pub prediction: Option<PredictionType>,
}

/// An opened checkpoint: its configs and a weight source per module.
#[derive(Debug)]
pub struct Checkpoint {
    /// The file.
    pub path: PathBuf,
    /// What detection found.
    pub detected: Detected,
    /// UNet config.
    pub unet_config: UNetFile,
    /// VAE config, when the file has a VAE.
    pub vae_config: Option<VaeFile>,
    /// The first (SDXL: CLIP-L) text encoder's config.
    pub text_config: ClipFile,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG, with its projection).
    pub text2_config: Option<ClipFile>,
    /// Scheduler settings.
    pub scheduler: SchedulerConfig,
    /// Whether prompts are padded with `!` (OpenCLIP-only SD 2.x) rather than end-of-text.
    pub pad_with_exclamation: bool,
    /// The UNet's tensors under diffusers names.
    pub unet: WeightSource,
    /// The VAE's tensors under diffusers names, when the file has a VAE.
    pub vae: Option<WeightSource>,
    /// The first text encoder's tensors under transformers names.
    pub text: WeightSource,
    /// SDXL's second text encoder's tensors.
    pub text2: Option<WeightSource>,
    /// Stored tensors no module uses (EMA copies, schedule buffers, `position_ids`, …).
    pub unused: Vec<String>,
}

/// Collects requested → stored mappings, refusing two tensors under one name.
struct Builder {
    file: Arc<SafetensorsFile>,
    source: WeightSource,
}

impl Builder {
    fn new(file: &Arc<SafetensorsFile>) -> Self {
        Builder {
            file: Arc::clone(file),
            source: WeightSource::new(),
        }
    }

    fn add(&mut self, requested: String, stored: &str, derive: Derive) -> Result<()> {
        if let Some(previous) = self.source.get(&requested) {
            return Err(Error::input(
                self.file.path(),
                format!(
                    "tensors {} and {stored} both map to {requested}",
                    previous.name
                ),
            ));
        }
        self.source
            .insert(requested, Arc::clone(&self.file), stored, derive);
        Ok(())
    }
}

impl Checkpoint {
    /// Opens the checkpoint `path`: header, detection, configs and name mapping. A pickle
    /// (`.ckpt`) is checked and read without running anything (`pickle`); a truncated or
    /// foreign file is a one-line error naming it.
    pub fn open(path: &Path, options: &CheckpointOptions) -> Result<Self> {
        let file = Arc::new(SafetensorsFile::open(&as_safetensors(
            path,
            &["state_dict"],
        )?)?);
        let detected = detect::detect(&file)?;
        let family = detected.family;

        // A config folder gives every config (the second text encoder's too); otherwise they
        // are inferred from the tensor shapes.
        let (unet_config, vae_config, text_config, text2_config, scheduler_override) =
            match &options.config {
                Some(folder) => {
                    let files = ModelFiles::read(folder)?;
                    let scheduler =
                        SchedulerConfig::load(&folder.join("scheduler/scheduler_config.json"))?;
                    if family == Family::Sdxl && files.clip2.is_none() {
                        return Err(Error::input(
                            folder,
                            "not an SDXL config folder (no text_encoder_2/) for an SDXL checkpoint",
                        ));
                    }
                    let text2 = files.clip2.filter(|_| family == Family::Sdxl);
                    (
                        files.unet,
                        Some(files.vae),
                        files.clip,
                        text2,
                        Some(scheduler),
                    )
                }
                None => (
                    configs::unet_config(&detected, path)?,
                    detected
                        .vae
                        .as_ref()
                        .map(|v| configs::vae_config(v, configs::latent_scale(family), path))
                        .transpose()?,
                    configs::clip_config(&detected.text[0], family == Family::Sd2, path)?,
                    match family {
                        Family::Sdxl => Some(configs::clip_config(&detected.text[1], false, path)?),
                        _ => None,
                    },
                    None,
                ),
            };
        let mut scheduler =
            scheduler_override.unwrap_or_else(|| configs::scheduler_config(family, None));
        if let Some(p) = options.prediction {
            scheduler.prediction_type = Some(p);
        }

        let layout = LdmUnetLayout {
            levels: detected.unet.levels.len(),
            layers_per_block: detected.unet.layers_per_block,
        };
        let vae_levels = detected.vae.as_ref().map_or(0, |v| v.channels.len());
        let mut unet = Builder::new(&file);
        let mut vae = Builder::new(&file);
        let mut texts: Vec<Builder> = detected.text.iter().map(|_| Builder::new(&file)).collect();
        let mut unused = Vec::new();
        for name in file.names() {
            if let Some(requested) = name
                .starts_with(unet_names::UNET_PREFIX)
                .then(|| ldm_unet_name(&name, layout))
                .flatten()
            {
                unet.add(requested, &name, Derive::Plain)?;
                continue;
            }
            if name.starts_with(vae_names::VAE_PREFIX)
                && let Some((requested, derive)) = vae_names::ldm_vae_name(&name, vae_levels)
            {
                let derive = linear_reshape(&file, &name, derive);
                vae.add(requested, &name, derive)?;
                continue;
            }
            let mut used = false;
            for (text, builder) in detected.text.iter().zip(texts.iter_mut()) {
                match text.kind {
                    TextKind::ClipL => {
                        if let Some(requested) = clip_l_name(&name, &text.prefix) {
                            builder.add(requested, &name, Derive::Plain)?;
                            used = true;
                        }
                    }
                    TextKind::OpenClip => {
                        for m in open_clip_names(&name, &text.prefix, text.width) {
                            builder.add(m.requested, &m.stored, m.derive)?;
                            used = true;
                        }
                    }
                }
            }
            if !used {
                unused.push(name);
            }
        }
        let mut texts = texts.into_iter().map(|b| b.source);
        let text = texts.next().unwrap_or_default();
        let text2 = texts.next();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            pad_with_exclamation: family == Family::Sd2,
            detected,
            unet_config,
            vae_config,
            text_config,
            text2_config,
            scheduler,
            unet: unet.source,
            vae: (!vae.source.is_empty()).then_some(vae.source),
            text,
            text2,
            unused,
        })
    }

    /// The engine's model configs, with `vae` (a replacement VAE's config, or the
    /// checkpoint's own).
    pub fn model_files(&self, vae: VaeFile) -> ModelFiles {
        ModelFiles {
            root: self.path.clone(),
            unet: self.unet_config.clone(),
            vae,
            clip: self.text_config.clone(),
            clip2: self.text2_config.clone(),
        }
    }

    /// Every requested name of every module, with the module's name (for tests and reports).
    pub fn mapped_names(&self) -> HashMap<&'static str, Vec<&str>> {
        let mut out = HashMap::new();
        out.insert("unet", self.unet.names());
        out.insert("text_encoder", self.text.names());
        if let Some(vae) = &self.vae {
            out.insert("vae", vae.names());
        }
        if let Some(text2) = &self.text2 {
            out.insert("text_encoder_2", text2.names());
        }
        out
    }
}
