//! diffusers-style configs for a checkpoint, built from what [`crate::load::checkpoint::detect`] saw and the
//! released models' conventions (heads, groups, latent scale, scheduler).
//!
//! Each config is written as the JSON diffusers would hold and parsed by the engine's own
//! config types, so defaults stay in one place.

use std::path::Path;

use serde_json::{Value, json};

use crate::load::checkpoint::detect::{Detected, Family, TextKind, TextShape, UnetShape, VaeShape};
use crate::model::config::{ClipFile, UNetFile, VaeFile};
use crate::scheduler::{PredictionType, SchedulerConfig};
use loopback_core::{Error, Result};

/// GroupNorm groups of every released UNet and VAE.
const GROUPS: usize = 32;
/// Width of one attention head in SD 2.x, SDXL and the OpenCLIP / CLIP-L text encoders.
const HEAD_WIDTH: usize = 64;

fn parse<T: serde::de::DeserializeOwned>(value: Value, path: &Path, what: &str) -> Result<T> {
    serde_json::from_value(value)
        .map_err(|e| Error::input(path, format!("cannot build the {what} config: {e}")))
}

/// Heads of a `width`-wide attention at 64 per head.
fn heads_of(width: usize, path: &Path, what: &str) -> Result<usize> {
    if width == 0 || !width.is_multiple_of(HEAD_WIDTH) {
        return Err(Error::input(
            path,
            format!(
                "{what} width {width} is not a multiple of {HEAD_WIDTH}: its attention heads \
                 cannot be inferred; give a diffusers config folder for this model"
            ),
        ));
    }
    Ok(width / HEAD_WIDTH)
}

/// Checks that 32 groups divide every width.
fn check_groups(widths: &[usize], path: &Path, what: &str) -> Result<()> {
    match widths.iter().find(|&&c| c % GROUPS != 0) {
        Some(c) => Err(Error::input(
            path,
            format!(
                "{what} width {c} is not a multiple of {GROUPS} (GroupNorm groups cannot be \
                 inferred; give a diffusers config folder for this model)"
            ),
        )),
        None => Ok(()),
    }
}

/// The UNet config of `detected`.
pub fn unet_config(detected: &Detected, path: &Path) -> Result<UNetFile> {
    let u: &UnetShape = &detected.unet;
    let channels: Vec<usize> = u.levels.iter().map(|l| l.channels).collect();
    check_groups(&channels, path, "UNet")?;
    let last = u.levels.len() - 1;
    // Heads matter only where there is attention (the last level's value is the mid
    // block's); other levels get 64-wide heads when their width allows, else 1.
    let heads = u
        .levels
        .iter()
        .enumerate()
        .map(|(i, l)| match detected.family {
            Family::Sd1 => Ok(8),
            _ if l.depth > 0 || i == last => heads_of(l.channels, path, "UNet level"),
            _ => Ok((l.channels / HEAD_WIDTH).max(1)),
        })
        .collect::<Result<Vec<_>>>()?;
    let depths: Vec<usize> = u
        .levels
        .iter()
        .enumerate()
        .map(|(i, l)| match (l.depth, i == last) {
            (0, true) => u.mid_depth,
            (0, false) => 1,
            (d, _) => d,
        })
        .collect();
    let down: Vec<&str> = u
        .levels
        .iter()
        .map(|l| {
            if l.depth > 0 {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = u
        .levels
        .iter()
        .rev()
        .map(|l| {
            if l.depth > 0 {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let mut config = json!({
        "_class_name": "UNet2DConditionModel",
        "in_channels": u.in_channels,
        "out_channels": u.out_channels,
        "block_out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": u.layers_per_block,
        "attention_head_dim": heads,
        "transformer_layers_per_block": depths,
        "cross_attention_dim": u.context_dim,
        "norm_num_groups": GROUPS,
        "use_linear_projection": u.linear_projection,
        "sample_size": match detected.family { Family::Sd1 => 64, Family::Sd2 => 96, Family::Sdxl => 128 },
    });
    if let (Some(adm), Some(pooled)) = (
        u.adm_in_channels,
        detected.text.last().and_then(|t| t.projection),
    ) && detected.family == Family::Sdxl
    {
        // label_emb's input: the pooled text embedding then 6 sinusoidal size embeddings.
        let time_dim = adm.saturating_sub(pooled) / 6;
        config["addition_embed_type"] = json!("text_time");
        config["addition_time_embed_dim"] = json!(time_dim);
        config["projection_class_embeddings_input_dim"] = json!(adm);
    }
    parse(config, path, "UNet")
}

/// The latent scale of a family's VAE.
pub fn latent_scale(family: Family) -> f64 {
    if family == Family::Sdxl {
        0.13025
    } else {
        0.18215
    }
}

/// The VAE config of a VAE shaped `vae` whose latents are scaled by `scaling_factor`.
pub fn vae_config(vae: &VaeShape, scaling_factor: f64, path: &Path) -> Result<VaeFile> {
    check_groups(&vae.channels, path, "VAE")?;
    let config = json!({
        "_class_name": "AutoencoderKL",
        "in_channels": vae.in_channels,
        "out_channels": vae.out_channels,
        "block_out_channels": vae.channels,
        "layers_per_block": vae.layers_per_block,
        "latent_channels": vae.latent_channels,
        "norm_num_groups": GROUPS,
        "scaling_factor": scaling_factor,
        "use_quant_conv": vae.quant_conv,
        "use_post_quant_conv": vae.quant_conv,
    });
    let config: VaeFile = parse(config, path, "VAE")?;
    config.check(path)?;
    Ok(config)
}

/// The text encoder config of `text`; `drop_last` leaves out the last layer (SD 2.x uses
/// the penultimate layer's output, which diffusers stores as a 23-layer encoder).
pub fn clip_config(text: &TextShape, drop_last: bool, path: &Path) -> Result<ClipFile> {
    let layers = if drop_last {
        text.layers.saturating_sub(1)
    } else {
        text.layers
    };
    if layers == 0 {
        return Err(Error::input(
            path,
            format!("no text encoder layers under {}", text.prefix),
        ));
    }
    let config = json!({
        "vocab_size": text.vocab,
        "hidden_size": text.width,
        "intermediate_size": text.intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads_of(text.width, path, "text encoder")?,
        "max_position_embeddings": text.positions,
        "hidden_act": match text.kind { TextKind::ClipL => "quick_gelu", TextKind::OpenClip => "gelu" },
        "layer_norm_eps": 1e-5,
        "projection_dim": text.projection,
    });
    parse(config, path, "text encoder")
}

/// The scheduler settings the family was trained with; `prediction` overrides the default
/// (epsilon, except SD 2.x: v-prediction, as the 768-pixel SD 2.0/2.1 models — the weights
/// cannot tell a 512-pixel epsilon SD 2.x base from them).
pub fn scheduler_config(family: Family, prediction: Option<PredictionType>) -> SchedulerConfig {
    let default = match family {
        Family::Sd2 => PredictionType::VPrediction,
        _ => PredictionType::Epsilon,
    };
    let class = match family {
        Family::Sd1 => "PNDMScheduler",
        Family::Sd2 => "DDIMScheduler",
        Family::Sdxl => "EulerDiscreteScheduler",
    };
    let prediction = match prediction.unwrap_or(default) {
        PredictionType::Epsilon => "epsilon",
        PredictionType::VPrediction => "v_prediction",
        PredictionType::Sample => "sample",
    };
    let config = json!({
        "_class_name": class,
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction,
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "set_alpha_to_one": false,
        "clip_sample": false,
    });
    serde_json::from_value(config).unwrap_or_default()
}
