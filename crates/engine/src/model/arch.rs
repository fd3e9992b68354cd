//! The published architectures of SD 1.5, SD 2.1 and SDXL base 1.0 (their diffusers
//! `config.json` values), for benchmarks with random weights and memory plans when no model
//! is at hand.

use crate::error::engine_err;
use crate::kernels::compute::Compute;
use crate::model::config::{ClipFile, UNetFile, VaeFile};
use crate::model::unet::UNet;
use crate::model::vae::Vae;
use loopback_core::{Error, Result};

/// A known architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Arch {
    /// Stable Diffusion 1.x (UNet 860M, CLIP ViT-L context 768).
    Sd15,
    /// Stable Diffusion 2.x (linear projections, OpenCLIP-H context 1024).
    Sd21,
    /// Stable Diffusion XL base 1.0 (UNet 2.6B, CLIP-L + OpenCLIP-bigG context 2048, added
    /// size/pooled-text conditioning); SDXL-Turbo has the same architecture.
    Sdxl,
}

const SD15_UNET: &str = r#"{
  "block_out_channels": [320, 640, 1280, 1280],
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768,
  "norm_num_groups": 32, "use_linear_projection": false
}"#;

const SD21_UNET: &str = r#"{
  "block_out_channels": [320, 640, 1280, 1280],
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "layers_per_block": 2, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
  "norm_num_groups": 32, "use_linear_projection": true
}"#;

const SDXL_UNET: &str = r#"{
  "block_out_channels": [320, 640, 1280],
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "layers_per_block": 2, "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
  "transformer_layers_per_block": [1, 2, 10], "norm_num_groups": 32,
  "use_linear_projection": true, "addition_embed_type": "text_time",
  "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
  "sample_size": 128
}"#;

const SDXL_VAE: &str = r#"{
  "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
  "norm_num_groups": 32, "scaling_factor": 0.13025, "force_upcast": true
}"#;

const SD_VAE: &str = r#"{
  "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
  "norm_num_groups": 32, "scaling_factor": 0.18215
}"#;

/// A var builder over the variables `map` holds, detached from candle's autograd: built from
/// a [`candle_nn::VarMap`] directly, every operation on a network records its inputs for
/// backpropagation, which keeps every intermediate tensor alive until the output is dropped
/// (a 512² VAE decode then peaks at 13.6 GiB instead of about 1 GiB). Build the network once
/// from the map (which creates the random variables), then again from this.
pub fn frozen_builder(
    map: &candle_nn::VarMap,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> candle_nn::VarBuilder<'static> {
    let tensors: std::collections::HashMap<String, candle_core::Tensor> = match map.data().lock() {
        Ok(data) => data
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
            .collect(),
        Err(poisoned) => poisoned
            .into_inner()
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
            .collect(),
    };
    candle_nn::VarBuilder::from_tensors(tensors, dtype, device)
}

/// Networks of an architecture with random weights, for benchmarks: timing does not depend on
/// the values.
pub struct RandomNetworks {
    /// The UNet, when asked for.
    pub unet: Option<UNet>,
    /// The VAE, when asked for.
    pub vae: Option<Vae>,
}

impl Arch {
    /// Builds the UNet and/or the VAE of this architecture with random weights, detached from
    /// autograd ([`frozen_builder`]).
    pub fn random_networks(
        self,
        unet: bool,
        vae: bool,
        dtype: candle_core::DType,
        device: &candle_core::Device,
    ) -> Result<RandomNetworks> {
        let (unet_file, vae_file) = (self.unet()?, self.vae()?);
        let (compute, dtype) = Compute::for_weights(device, dtype);
        let build = |vb: candle_nn::VarBuilder| -> Result<RandomNetworks> {
            let unet = unet
                .then(|| {
                    UNet::with_compute(vb.pp("unet"), &unet_file, "built-in".as_ref(), compute)
                })
                .transpose()?;
            let vae = vae
                .then(|| {
                    Vae::with_compute(vb.pp("vae"), &vae_file, compute).map_err(engine_err("VAE"))
                })
                .transpose()?;
            Ok(RandomNetworks { unet, vae })
        };
        let map = candle_nn::VarMap::new();
        // Once to create the random variables, then again detached from autograd.
        drop(build(candle_nn::VarBuilder::from_varmap(
            &map, dtype, device,
        ))?);
        build(frozen_builder(&map, dtype, device))
    }

    /// The UNet config.
    pub fn unet(self) -> Result<UNetFile> {
        let text = match self {
            Arch::Sd15 => SD15_UNET,
            Arch::Sd21 => SD21_UNET,
            Arch::Sdxl => SDXL_UNET,
        };
        serde_json::from_str(text).map_err(|e| Error::Engine(format!("built-in UNet config: {e}")))
    }

    /// The text encoder config: CLIP ViT-L/14 (SD 1.x and SDXL's first) or OpenCLIP ViT-H/14
    /// with the last of its 24 layers dropped (SD 2.x).
    pub fn clip(self) -> ClipFile {
        let (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, act) =
            match self {
                Arch::Sd15 | Arch::Sdxl => (768, 3072, 12, 12, "quick_gelu"),
                Arch::Sd21 => (1024, 4096, 23, 16, "gelu"),
            };
        ClipFile {
            vocab_size: 49408,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            max_position_embeddings: 77,
            hidden_act: act.into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: None,
        }
    }

    /// SDXL's second text encoder: OpenCLIP ViT-bigG/14 with its 1280-wide text projection;
    /// `None` for SD 1.x/2.x.
    pub fn clip2(self) -> Option<ClipFile> {
        (self == Arch::Sdxl).then(|| ClipFile {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: Some(1280),
        })
    }

    /// The VAE config (the same for SD 1.x and 2.x; SDXL's differs in its latent scale).
    pub fn vae(self) -> Result<VaeFile> {
        let text = if self == Arch::Sdxl { SDXL_VAE } else { SD_VAE };
        serde_json::from_str(text).map_err(|e| Error::Engine(format!("built-in VAE config: {e}")))
    }
}

/// A ControlNet for a model with the UNet config `unet` (its encoder, the released models'
/// conditioning embedding) with random weights, for benchmarks.
pub fn random_controlnet(
    unet: &UNetFile,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<crate::model::controlnet::ControlNet> {
    use crate::model::controlnet::{ControlNet, ControlNetFile, DEFAULT_EMBEDDING};
    let cfg = ControlNetFile::for_unet(unet, DEFAULT_EMBEDDING.to_vec(), "built-in".as_ref())?;
    let map = candle_nn::VarMap::new();
    // Once to create the random variables, then again detached from autograd.
    drop(ControlNet::new(
        candle_nn::VarBuilder::from_varmap(&map, dtype, device),
        &cfg,
        "built-in".as_ref(),
    )?);
    ControlNet::new(
        frozen_builder(&map, dtype, device),
        &cfg,
        "built-in".as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_configs_parse_and_convert() {
        for arch in [Arch::Sd15, Arch::Sd21] {
            let unet = arch.unet().unwrap();
            let levels = unet.levels(std::path::Path::new("built-in")).unwrap();
            assert_eq!(levels.len(), 4);
            assert!(levels[..3].iter().all(|l| l.attention) && !levels[3].attention);
            assert!(
                levels
                    .iter()
                    .all(|l| l.channels / l.heads == 64 || arch == Arch::Sd15)
            );
            assert_eq!(arch.vae().unwrap().downscale(), 8);
        }
        let unet = Arch::Sdxl.unet().unwrap();
        let levels = unet.levels(std::path::Path::new("built-in")).unwrap();
        assert_eq!(levels.len(), 3);
        assert!(!levels[0].attention && levels[1].attention && levels[2].attention);
        assert_eq!(levels[2].transformer_layers, 10);
        assert!(levels.iter().all(|l| l.channels / l.heads == 64));
        let files = crate::model::config::ModelFiles {
            root: "built-in".into(),
            unet,
            vae: Arch::Sdxl.vae().unwrap(),
            clip: Arch::Sdxl.clip(),
            clip2: Arch::Sdxl.clip2(),
        };
        files
            .check_text_widths(std::path::Path::new("built-in"))
            .unwrap();
        assert_eq!(files.vae.scaling_factor, 0.13025);
    }
}
