//! What a single-file checkpoint holds, read from its tensor names and shapes: the family
//! (SD 1.x, SD 2.x, SDXL), the UNet's levels, transformer depths and widths, the VAE's
//! levels, and each text encoder's width and depth.
//!
//! Attention heads and GroupNorm groups cannot be seen in the weights; they follow the
//! released models (SD 1.x: 8 heads per level; SD 2.x and SDXL: 64-wide heads; 32 groups).
//! A model with other values needs a diffusers config folder ([`crate::load::checkpoint::CheckpointOptions`]).

use std::collections::BTreeSet;

use crate::load::weights::SafetensorsFile;
use loopback_core::{Error, Result};

use crate::load::checkpoint::unet_names::UNET_PREFIX;
use crate::load::checkpoint::vae_names::VAE_PREFIX;

/// A model family, as the text encoders show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: OpenAI CLIP-L (`cond_stage_model.transformer.`).
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H (`cond_stage_model.model.`).
    Sd2,
    /// SDXL base: CLIP-L and OpenCLIP ViT-bigG (`conditioner.embedders.0/1`).
    Sdxl,
}

impl Family {
    /// A short name for messages and the UI.
    pub fn label(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }
}

/// Text encoder layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// OpenAI CLIP stored with transformers' names.
    ClipL,
    /// OpenCLIP names (fused `in_proj`).
    OpenClip,
}

/// One text encoder of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextShape {
    /// Its layout.
    pub kind: TextKind,
    /// The prefix of its tensors, e.g. `cond_stage_model.transformer.`.
    pub prefix: String,
    /// Vocabulary size.
    pub vocab: usize,
    /// Width.
    pub width: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Transformer layers stored.
    pub layers: usize,
    /// Sequence length.
    pub positions: usize,
    /// Output width of `text_projection`, when stored.
    pub projection: Option<usize>,
}

/// One UNet level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnetLevel {
    /// Channels.
    pub channels: usize,
    /// Transformer layers per attention block; 0 without attention.
    pub depth: usize,
}

/// The UNet of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnetShape {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// The levels, in down-path order.
    pub levels: Vec<UnetLevel>,
    /// Resnets per down level.
    pub layers_per_block: usize,
    /// Transformer layers of the mid block.
    pub mid_depth: usize,
    /// Width of the text embeddings (from `attn2.to_k`).
    pub context_dim: usize,
    /// Linear (not 1×1 conv) transformer projections.
    pub linear_projection: bool,
    /// Input width of SDXL's `label_emb` (pooled text + size conditioning).
    pub adm_in_channels: Option<usize>,
}

/// The VAE of a checkpoint (or of a VAE file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeShape {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Channels per level.
    pub channels: Vec<usize>,
    /// Resnets per encoder level.
    pub layers_per_block: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Whether `quant_conv` / `post_quant_conv` are stored.
    pub quant_conv: bool,
}

/// Everything detected in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The family.
    pub family: Family,
    /// The UNet.
    pub unet: UnetShape,
    /// The VAE, when the file has one.
    pub vae: Option<VaeShape>,
    /// The text encoders, in the order the family uses them.
    pub text: Vec<TextShape>,
}

/// Tensor names and shapes, with the lookups detection needs.
struct Names<'a> {
    file: &'a SafetensorsFile,
    names: Vec<String>,
}

impl Names<'_> {
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.file.shape(name)
    }

    fn dim(&self, name: &str, i: usize) -> Result<usize> {
        self.shape(name)
            .and_then(|s| s.get(i).copied())
            .ok_or_else(|| {
                self.error(format!(
                    "missing tensor {name} (or it has too few dimensions)"
                ))
            })
    }

    fn has(&self, name: &str) -> bool {
        self.file.info(name).is_some()
    }

    fn any_prefix(&self, prefix: &str) -> bool {
        self.names.iter().any(|n| n.starts_with(prefix))
    }

    /// The distinct numbers `N` of names `{prefix}N.…`.
    fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        self.names
            .iter()
            .filter_map(|n| n.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect()
    }

    /// How many consecutive indices from 0 exist under `prefix`.
    fn count(&self, prefix: &str) -> usize {
        let found = self.indices(prefix);
        (0..).take_while(|i| found.contains(i)).count()
    }

    fn error(&self, reason: String) -> Error {
        Error::input(self.file.path(), reason)
    }
}

/// Detects what `file` holds; one-line errors naming the file for layouts it is not.
pub fn detect(file: &SafetensorsFile) -> Result<Detected> {
    let n = Names {
        file,
        names: file.names(),
    };
    if !n.any_prefix(UNET_PREFIX) {
        let hint = if n.any_prefix("encoder.") || n.any_prefix(VAE_PREFIX) {
            " (a VAE file? give it with --vae)"
        } else if n.any_prefix("lora_") || n.names.iter().any(|x| x.contains("lora_down")) {
            " (a LoRA file?)"
        } else if n.any_prefix("down_blocks.") {
            " (a diffusers-layout UNet file: give the whole diffusers folder)"
        } else {
            ""
        };
        return Err(n.error(format!(
            "not a Stable Diffusion checkpoint: no UNet tensors (model.diffusion_model.*){hint}"
        )));
    }
    let (family, text) = if n.any_prefix("conditioner.embedders.") {
        let l = text_shape(&n, TextKind::ClipL, "conditioner.embedders.0.transformer.")?;
        let g = text_shape(&n, TextKind::OpenClip, "conditioner.embedders.1.model.")?;
        (Family::Sdxl, vec![l, g])
    } else if n.any_prefix("cond_stage_model.model.") {
        let h = text_shape(&n, TextKind::OpenClip, "cond_stage_model.model.")?;
        (Family::Sd2, vec![h])
    } else if n.any_prefix("cond_stage_model.transformer.") {
        let l = text_shape(&n, TextKind::ClipL, "cond_stage_model.transformer.")?;
        (Family::Sd1, vec![l])
    } else {
        return Err(n.error(
            "unknown checkpoint layout: no text encoder (cond_stage_model.* or \
             conditioner.embedders.*); UNet-only files are not supported"
                .into(),
        ));
    };
    let unet = unet_shape(&n)?;
    let expected: usize = match family {
        Family::Sdxl => text.iter().map(|t| t.width).sum(),
        _ => text[0].width,
    };
    if unet.context_dim != expected {
        return Err(n.error(format!(
            "the UNet's cross-attention width {} does not match the {} text encoder width {expected}",
            unet.context_dim,
            family.label()
        )));
    }
    if family == Family::Sdxl {
        if unet.adm_in_channels.is_none() {
            return Err(n.error("SDXL text encoders but no label_emb in the UNet".into()));
        }
        if text[1].projection.is_none() {
            return Err(n.error("SDXL OpenCLIP text encoder without text_projection".into()));
        }
    }
    let vae = if n.any_prefix(VAE_PREFIX) {
        Some(vae_shape(file, VAE_PREFIX)?)
    } else {
        None
    };
    Ok(Detected {
        family,
        unet,
        vae,
        text,
    })
}

/// The text encoder stored under `prefix`.
fn text_shape(n: &Names, kind: TextKind, prefix: &str) -> Result<TextShape> {
    match kind {
        TextKind::ClipL => {
            let base = if n.has(&format!(
                "{prefix}text_model.embeddings.token_embedding.weight"
            )) {
                format!("{prefix}text_model.")
            } else {
                prefix.to_string()
            };
            let emb = format!("{base}embeddings.token_embedding.weight");
            Ok(TextShape {
                kind,
                prefix: prefix.into(),
                vocab: n.dim(&emb, 0)?,
                width: n.dim(&emb, 1)?,
                intermediate: n.dim(&format!("{base}encoder.layers.0.mlp.fc1.weight"), 0)?,
                layers: n.count(&format!("{base}encoder.layers.")),
                positions: n.dim(&format!("{base}embeddings.position_embedding.weight"), 0)?,
                projection: n
                    .shape(&format!("{prefix}text_projection.weight"))
                    .map(|s| s[0]),
            })
        }
        TextKind::OpenClip => {
            let emb = format!("{prefix}token_embedding.weight");
            Ok(TextShape {
                kind,
                prefix: prefix.into(),
                vocab: n.dim(&emb, 0)?,
                width: n.dim(&emb, 1)?,
                intermediate: n.dim(
                    &format!("{prefix}transformer.resblocks.0.mlp.c_fc.weight"),
                    0,
                )?,
                layers: n.count(&format!("{prefix}transformer.resblocks.")),
                positions: n.dim(&format!("{prefix}positional_embedding"), 0)?,
                projection: n
                    .shape(&format!("{prefix}text_projection"))
                    .and_then(|s| s.get(1).copied()),
            })
        }
    }
}

/// The UNet's shape.
fn unet_shape(n: &Names) -> Result<UnetShape> {
    let p = UNET_PREFIX;
    let conv_in = format!("{p}input_blocks.0.0.weight");
    let in_channels = n.dim(&conv_in, 1)?;
    let out_channels = n.dim(&format!("{p}out.2.weight"), 0)?;
    let blocks = n.count(&format!("{p}input_blocks."));
    let downsamplers = n
        .indices(&format!("{p}input_blocks."))
        .into_iter()
        .filter(|k| n.has(&format!("{p}input_blocks.{k}.0.op.weight")))
        .count();
    let levels = downsamplers + 1;
    // input_blocks: the input conv, then per level `layers_per_block` resnet blocks and a
    // downsampler block (none on the last level): levels × (layers_per_block + 1) in all.
    if !blocks.is_multiple_of(levels) || blocks / levels < 2 {
        return Err(n.error(format!(
            "unknown UNet layout: {blocks} input blocks with {downsamplers} downsamplers"
        )));
    }
    let per_level = blocks / levels;
    let layers_per_block = per_level - 1;
    let mut shapes = Vec::with_capacity(levels);
    let mut context_dim = None;
    let mut linear_projection = false;
    for level in 0..levels {
        let k = 1 + level * per_level;
        let channels = n.dim(&format!("{p}input_blocks.{k}.0.out_layers.3.weight"), 0)?;
        let attn = format!("{p}input_blocks.{k}.1.");
        let depth = n.count(&format!("{attn}transformer_blocks."));
        if depth > 0 {
            let to_k = format!("{attn}transformer_blocks.0.attn2.to_k.weight");
            context_dim.get_or_insert(n.dim(&to_k, 1)?);
            linear_projection = n
                .shape(&format!("{attn}proj_in.weight"))
                .is_some_and(|s| s.len() == 2);
        }
        shapes.push(UnetLevel { channels, depth });
    }
    let mid = format!("{p}middle_block.1.");
    let mid_depth = n.count(&format!("{mid}transformer_blocks."));
    if mid_depth == 0 {
        return Err(n.error("unknown UNet layout: no transformer in the middle block".into()));
    }
    let context_dim = match context_dim {
        Some(c) => c,
        None => n.dim(&format!("{mid}transformer_blocks.0.attn2.to_k.weight"), 1)?,
    };
    Ok(UnetShape {
        in_channels,
        out_channels,
        levels: shapes,
        layers_per_block,
        mid_depth,
        context_dim,
        linear_projection,
        adm_in_channels: n.shape(&format!("{p}label_emb.0.0.weight")).map(|s| s[1]),
    })
}

/// The VAE stored under `prefix` (`first_stage_model.` or "" for a bare VAE file) in the
/// original layout.
pub fn vae_shape(file: &SafetensorsFile, prefix: &str) -> Result<VaeShape> {
    let n = Names {
        file,
        names: file.names(),
    };
    let conv_in = format!("{prefix}encoder.conv_in.weight");
    let levels = n.count(&format!("{prefix}encoder.down."));
    if levels == 0 {
        return Err(n.error(format!(
            "unknown VAE layout: no {prefix}encoder.down.* tensors"
        )));
    }
    let channels = (0..levels)
        .map(|i| n.dim(&format!("{prefix}encoder.down.{i}.block.0.conv2.weight"), 0))
        .collect::<Result<Vec<_>>>()?;
    Ok(VaeShape {
        in_channels: n.dim(&conv_in, 1)?,
        out_channels: n.dim(&format!("{prefix}decoder.conv_out.weight"), 0)?,
        channels,
        layers_per_block: n.count(&format!("{prefix}encoder.down.0.block.")),
        latent_channels: n.dim(&format!("{prefix}decoder.conv_in.weight"), 1)?,
        quant_conv: n.has(&format!("{prefix}quant_conv.weight")),
    })
}
