//! UNet tensor names: the original (CompVis / Stability "LDM" and "SGM") layout → diffusers.
//!
//! The original UNet numbers its blocks flat: `input_blocks.0` is the input convolution, then
//! each resolution level has `layers_per_block` blocks of (resnet, optional transformer)
//! followed, except on the last level, by a downsampler block; `output_blocks` mirror them with
//! one more block per level and the upsampler inside the level's last block. diffusers nests
//! them as `down_blocks.LEVEL.{resnets,attentions,downsamplers}.J`. Transformer internals
//! (`transformer_blocks.T.attn1.to_q`, …) have the same names in both layouts.

/// The shape of the block numbering: what [`ldm_unet_name`] needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LdmUnetLayout {
    /// Resolution levels (4 for SD 1.x/2.x, 3 for SDXL).
    pub levels: usize,
    /// Resnets per down-block level (2 for every released model).
    pub layers_per_block: usize,
}

/// The prefix of UNet tensors in a full checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";

/// Maps a resnet's inner name (`in_layers.0.weight`, …) to diffusers'.
fn resnet_inner(rest: &str) -> Option<String> {
    let (module, param) = split_param(rest)?;
    let mapped = match module {
        "in_layers.0" => "norm1",
        "in_layers.2" => "conv1",
        "emb_layers.1" => "time_emb_proj",
        "out_layers.0" => "norm2",
        "out_layers.3" => "conv2",
        "skip_connection" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{mapped}.{param}"))
}

/// `a.b.weight` → (`a.b`, `weight`), for `weight` and `bias` only.
pub(super) fn split_param(name: &str) -> Option<(&str, &str)> {
    let (module, param) = name.rsplit_once('.')?;
    matches!(param, "weight" | "bias").then_some((module, param))
}

/// `"12.rest"` → (12, `rest`).
pub(super) fn index_and_rest(name: &str) -> Option<(usize, &str)> {
    let (index, rest) = name.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// A transformer's inner name; the same in both layouts, checked for shape only.
fn transformer_inner(rest: &str) -> Option<String> {
    let (module, _) = split_param(rest)?;
    let first = module.split('.').next()?;
    matches!(
        first,
        "norm" | "proj_in" | "proj_out" | "transformer_blocks"
    )
    .then(|| rest.into())
}

/// The diffusers name of the original-layout UNet tensor `name` (with or without the
/// `model.diffusion_model.` prefix), or `None` when `name` is not a UNet parameter of a
/// model laid out as `layout`.
///
/// ```
/// use loopback_scaler::engine::checkpoint::{LdmUnetLayout, ldm_unet_name};
/// let sd15 = LdmUnetLayout { levels: 4, layers_per_block: 2 };
/// assert_eq!(
///     ldm_unet_name("model.diffusion_model.input_blocks.5.1.proj_in.weight", sd15).as_deref(),
///     Some("down_blocks.1.attentions.1.proj_in.weight")
/// );
/// ```
pub fn ldm_unet_name(name: &str, layout: LdmUnetLayout) -> Option<String> {
    let name = name.strip_prefix(UNET_PREFIX).unwrap_or(name);
    let per_level = layout.layers_per_block + 1;
    if let Some(rest) = name.strip_prefix("time_embed.") {
        let (module, param) = split_param(rest)?;
        let linear = match module {
            "0" => "linear_1",
            "2" => "linear_2",
            _ => return None,
        };
        return Some(format!("time_embedding.{linear}.{param}"));
    }
    if let Some(rest) = name.strip_prefix("label_emb.0.") {
        let (module, param) = split_param(rest)?;
        let linear = match module {
            "0" => "linear_1",
            "2" => "linear_2",
            _ => return None,
        };
        return Some(format!("add_embedding.{linear}.{param}"));
    }
    if let Some(rest) = name.strip_prefix("out.") {
        let (module, param) = split_param(rest)?;
        let out = match module {
            "0" => "conv_norm_out",
            "2" => "conv_out",
            _ => return None,
        };
        return Some(format!("{out}.{param}"));
    }
    if let Some(rest) = name.strip_prefix("input_blocks.") {
        let (block, rest) = index_and_rest(rest)?;
        if block == 0 {
            let param = rest.strip_prefix("0.")?;
            return matches!(param, "weight" | "bias").then(|| format!("conv_in.{param}"));
        }
        let level = (block - 1) / per_level;
        let j = (block - 1) % per_level;
        if level >= layout.levels {
            return None;
        }
        let (part, rest) = index_and_rest(rest)?;
        let base = format!("down_blocks.{level}");
        if j == layout.layers_per_block {
            // The downsampler block: `input_blocks.K.0.op`.
            let param = rest.strip_prefix("op.")?;
            return (part == 0 && level + 1 < layout.levels && matches!(param, "weight" | "bias"))
                .then(|| format!("{base}.downsamplers.0.conv.{param}"));
        }
        return match part {
            0 => Some(format!("{base}.resnets.{j}.{}", resnet_inner(rest)?)),
            1 => Some(format!(
                "{base}.attentions.{j}.{}",
                transformer_inner(rest)?
            )),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("middle_block.") {
        let (part, rest) = index_and_rest(rest)?;
        return match part {
            0 => Some(format!("mid_block.resnets.0.{}", resnet_inner(rest)?)),
            1 => Some(format!(
                "mid_block.attentions.0.{}",
                transformer_inner(rest)?
            )),
            2 => Some(format!("mid_block.resnets.1.{}", resnet_inner(rest)?)),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("output_blocks.") {
        let (block, rest) = index_and_rest(rest)?;
        let level = block / per_level;
        let j = block % per_level;
        if level >= layout.levels {
            return None;
        }
        let (part, rest) = index_and_rest(rest)?;
        let base = format!("up_blocks.{level}");
        if part == 0 {
            return Some(format!("{base}.resnets.{j}.{}", resnet_inner(rest)?));
        }
        // The upsampler: the last module of the level's last block (part 1 without a
        // transformer, 2 with one), never on the last up level.
        if let Some(param) = rest.strip_prefix("conv.") {
            return (j == layout.layers_per_block
                && level + 1 < layout.levels
                && matches!(param, "weight" | "bias"))
            .then(|| format!("{base}.upsamplers.0.conv.{param}"));
        }
        if part != 1 {
            return None;
        }
        return Some(format!(
            "{base}.attentions.{j}.{}",
            transformer_inner(rest)?
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD15: LdmUnetLayout = LdmUnetLayout {
        levels: 4,
        layers_per_block: 2,
    };
    const SDXL: LdmUnetLayout = LdmUnetLayout {
        levels: 3,
        layers_per_block: 2,
    };

    fn map(name: &str, layout: LdmUnetLayout) -> Option<String> {
        ldm_unet_name(name, layout)
    }

    #[test]
    fn sd15_blocks() {
        let cases = [
            ("time_embed.0.weight", "time_embedding.linear_1.weight"),
            ("time_embed.2.bias", "time_embedding.linear_2.bias"),
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.0.emb_layers.1.bias",
                "down_blocks.0.resnets.1.time_emb_proj.bias",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
                "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "input_blocks.11.0.out_layers.3.weight",
                "down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "middle_block.0.in_layers.2.weight",
                "mid_block.resnets.0.conv1.weight",
            ),
            (
                "middle_block.1.proj_out.bias",
                "mid_block.attentions.0.proj_out.bias",
            ),
            (
                "middle_block.2.out_layers.0.bias",
                "mid_block.resnets.1.norm2.bias",
            ),
            (
                "output_blocks.0.0.in_layers.0.weight",
                "up_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.3.1.norm.weight",
                "up_blocks.1.attentions.0.norm.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.11.1.proj_in.weight",
                "up_blocks.3.attentions.2.proj_in.weight",
            ),
            ("out.0.weight", "conv_norm_out.weight"),
            ("out.2.bias", "conv_out.bias"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(map(ldm, SD15).as_deref(), Some(diffusers), "{ldm}");
            let prefixed = format!("{UNET_PREFIX}{ldm}");
            assert_eq!(
                map(&prefixed, SD15).as_deref(),
                Some(diffusers),
                "{prefixed}"
            );
        }
    }

    #[test]
    fn sdxl_blocks() {
        let cases = [
            ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
            ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.7.1.transformer_blocks.9.ff.net.0.proj.weight",
                "down_blocks.2.attentions.0.transformer_blocks.9.ff.net.0.proj.weight",
            ),
            (
                "output_blocks.2.2.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.8.0.skip_connection.bias",
                "up_blocks.2.resnets.2.conv_shortcut.bias",
            ),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(map(ldm, SDXL).as_deref(), Some(diffusers), "{ldm}");
        }
    }

    #[test]
    fn rejects_what_does_not_exist() {
        for name in [
            "input_blocks.12.0.in_layers.0.weight", // past the last level
            "input_blocks.12.0.op.weight",
            "input_blocks.11.0.op.weight", // a resnet slot, not a downsampler
            "output_blocks.11.1.conv.weight", // no upsampler on the last up level
            "output_blocks.1.1.conv.weight", // not the level's last block
            "input_blocks.1.0.in_layers.1.weight",
            "time_embed.1.weight",
            "model_ema.decay",
            "betas",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        ] {
            assert_eq!(map(name, SD15), None, "{name}");
        }
        assert_eq!(map("input_blocks.9.0.op.weight", SDXL), None);
    }
}
