//! The shape of a model (its three configs), read without loading any weights, and the
//! weights it keeps loaded during a loop.

use std::path::PathBuf;

use super::dtypes::Dtypes;
use super::params::{clip_parameters, controlnet_parameters, unet_parameters, vae_parameters};
use crate::load::resolve::{self, ModelSource};
use crate::model::arch::Arch;
use crate::model::config::{ClipFile, ModelFiles, UNetFile, VaeFile};
use crate::run::tiling::TileSettings;
use loopback_core::Result;

/// The shape of a model, enough to estimate its memory: the three configs.
#[derive(Debug, Clone)]
pub struct ModelShape {
    /// A name for messages (preset, folder or architecture).
    pub name: String,
    /// The UNet config.
    pub unet: UNetFile,
    /// The VAE config.
    pub vae: VaeFile,
    /// The text encoder config.
    pub clip: ClipFile,
    /// SDXL's second text encoder config (with its text projection); `None` for SD 1.x/2.x.
    pub clip2: Option<ClipFile>,
    /// Whether a ControlNet runs beside the UNet (its weights and residuals count).
    pub controlnet: bool,
    /// The run's tiled-diffusion settings; `None`: no loop is tiled.
    pub tiling: Option<TileSettings>,
}

impl ModelShape {
    /// The shape of a diffusers folder's configs.
    pub fn from_files(files: &ModelFiles) -> Self {
        ModelShape {
            name: files.root.display().to_string(),
            unet: files.unet.clone(),
            vae: files.vae.clone(),
            clip: files.clip.clone(),
            clip2: files.clip2.clone(),
            controlnet: false,
            tiling: None,
        }
    }

    /// This shape for a run of `settings`: with its ControlNet (when the `controlnet` setting
    /// names one) and its tiled diffusion.
    pub fn with_run(mut self, settings: &loopback_core::Settings) -> Self {
        self.controlnet = !settings.controlnet.trim().is_empty();
        self.tiling = Some(TileSettings::of(settings));
        self
    }

    /// The model's native size in pixels (`sample_size` × the VAE's downscale).
    pub fn native_size(&self) -> usize {
        self.unet.sample_size.unwrap_or(64) * self.vae.downscale().max(1)
    }

    /// A published architecture.
    pub fn from_arch(arch: Arch) -> Result<Self> {
        Ok(ModelShape {
            name: format!("{arch:?} architecture"),
            unet: arch.unet()?,
            vae: arch.vae()?,
            clip: arch.clip(),
            clip2: arch.clip2(),
            controlnet: false,
            tiling: None,
        })
    }

    /// The shape of what `--model SPEC` names, read without loading any weights: a folder's
    /// configs, or a preset's architecture (SD 1.5, SD 2.1 for SD 2.1 and SD-Turbo, SDXL for
    /// SDXL and SDXL-Turbo).
    pub fn resolve(spec: &str, search_dirs: &[PathBuf]) -> Result<Self> {
        match resolve::resolve(spec, search_dirs)? {
            ModelSource::Folder(path) => Ok(Self::from_files(&ModelFiles::read(&path)?)),
            ModelSource::Checkpoint(path) => {
                let ckpt = crate::load::checkpoint::Checkpoint::open(&path, &Default::default())?;
                let vae = match &ckpt.vae_config {
                    Some(vae) => vae.clone(),
                    None => Arch::Sd15.vae()?,
                };
                Ok(Self::from_files(&ckpt.model_files(vae)))
            }
            ModelSource::Preset(preset) => {
                let arch = preset.arch();
                Ok(ModelShape {
                    name: preset.name().to_string(),
                    ..Self::from_arch(arch)?
                })
            }
        }
    }

    /// Parameters of the three networks (and of the ControlNet, when one runs).
    pub fn parameters(&self) -> u64 {
        let controlnet = if self.controlnet {
            controlnet_parameters(&self.unet)
        } else {
            0
        };
        unet_parameters(&self.unet)
            + vae_parameters(&self.vae)
            + self.text_parameters()
            + controlnet
    }

    /// Parameters of the text encoder(s).
    pub fn text_parameters(&self) -> u64 {
        clip_parameters(&self.clip) + self.clip2.as_ref().map_or(0, clip_parameters)
    }

    /// Bytes of weights loaded through a loop's heavy phases (UNet steps, VAE passes), held
    /// in the weights' dtype of `dtypes` ([`Dtypes`], or one `DType`): all three networks, or
    /// without the text encoders when they are freed once the prompts are encoded.
    pub fn resident_weight_bytes(
        &self,
        dtypes: impl Into<Dtypes>,
        encoders: EncoderWeights,
    ) -> u64 {
        let parameters = match encoders {
            EncoderWeights::Kept => self.parameters(),
            EncoderWeights::Released => self.parameters() - self.text_parameters(),
        };
        parameters * dtypes.into().weights.size_in_bytes() as u64
    }
}

/// What happens to the text encoders' weights once a run has encoded its prompts (they are
/// encoded first in every loop, before the VAE encode and the UNet steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderWeights {
    /// They stay loaded (the app, which may run again with other prompts).
    Kept,
    /// They are freed (the CLI's one-shot `run`, `TextEncoders::set_release_after_use`), so
    /// no loop's heavy phases hold them.
    Released,
}
