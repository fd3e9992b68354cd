//! VAE tensor names: the original (`first_stage_model.`) layout → diffusers.
//!
//! The original encoder numbers its levels `down.I.block.J`, the decoder `up.I.block.J` with
//! `I` the resolution level (so diffusers' `up_blocks` run in the reverse order); the mid
//! block's attention uses 1×1 convolutions `q`, `k`, `v`, `proj_out` that diffusers stores as
//! linear layers `to_q`, `to_k`, `to_v`, `to_out.0`.

use crate::load::checkpoint::unet_names::{index_and_rest, split_param};
use crate::load::weights::{Derive, SafetensorsFile};

/// The prefix of VAE tensors in a full checkpoint.
pub const VAE_PREFIX: &str = "first_stage_model.";

/// A resnet's inner name (`norm1`, `conv1`, `norm2`, `conv2`, `nin_shortcut`).
fn resnet_inner(rest: &str) -> Option<String> {
    let (module, param) = split_param(rest)?;
    let mapped = match module {
        "norm1" | "conv1" | "norm2" | "conv2" => module,
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    };
    Some(format!("{mapped}.{param}"))
}

/// The mid block (`mid.block_1`, `mid.attn_1`, `mid.block_2`) of the encoder or decoder.
fn mid(rest: &str) -> Option<(String, Derive)> {
    if let Some(rest) = rest.strip_prefix("block_1.") {
        return Some((
            format!("mid_block.resnets.0.{}", resnet_inner(rest)?),
            Derive::Plain,
        ));
    }
    if let Some(rest) = rest.strip_prefix("block_2.") {
        return Some((
            format!("mid_block.resnets.1.{}", resnet_inner(rest)?),
            Derive::Plain,
        ));
    }
    let rest = rest.strip_prefix("attn_1.")?;
    let (module, param) = split_param(rest)?;
    let (mapped, conv) = match module {
        "norm" => ("group_norm", false),
        "q" => ("to_q", true),
        "k" => ("to_k", true),
        "v" => ("to_v", true),
        "proj_out" => ("to_out.0", true),
        _ => return None,
    };
    // Weights of the 1×1 convolutions become linear weights: the reshape is filled in by
    // the caller, which knows the stored shape.
    let derive = if conv && param == "weight" {
        Derive::Reshape(Vec::new())
    } else {
        Derive::Plain
    };
    Some((format!("mid_block.attentions.0.{mapped}.{param}"), derive))
}

/// The diffusers name of the original-layout VAE tensor `name` (with or without the
/// `first_stage_model.` prefix) for a VAE of `levels` resolution levels, and how to derive
/// it; `None` when `name` is not a VAE parameter. A [`Derive::Reshape`] with an empty shape
/// means "as a linear weight": `[c, c, 1, 1]` → `[c, c]`.
pub fn ldm_vae_name(name: &str, levels: usize) -> Option<(String, Derive)> {
    let name = name.strip_prefix(VAE_PREFIX).unwrap_or(name);
    let plain = |s: String| Some((s, Derive::Plain));
    if let Some(param) = name.strip_prefix("quant_conv.") {
        return matches!(param, "weight" | "bias").then(|| (name.to_string(), Derive::Plain));
    }
    if let Some(param) = name.strip_prefix("post_quant_conv.") {
        return matches!(param, "weight" | "bias").then(|| (name.to_string(), Derive::Plain));
    }
    let (side, rest) = if let Some(rest) = name.strip_prefix("encoder.") {
        ("encoder", rest)
    } else {
        ("decoder", name.strip_prefix("decoder.")?)
    };
    if let Some(rest) = rest.strip_prefix("mid.") {
        let (mapped, derive) = mid(rest)?;
        return Some((format!("{side}.{mapped}"), derive));
    }
    let (module, param) = split_param(rest)?;
    match module {
        "conv_in" | "conv_out" => return plain(format!("{side}.{module}.{param}")),
        "norm_out" => return plain(format!("{side}.conv_norm_out.{param}")),
        _ => {}
    }
    let (blocks, rest) = match side {
        "encoder" => ("down_blocks", rest.strip_prefix("down.")?),
        _ => ("up_blocks", rest.strip_prefix("up.")?),
    };
    let (level, rest) = index_and_rest(rest)?;
    if level >= levels {
        return None;
    }
    let diffusers_level = if side == "encoder" {
        level
    } else {
        levels - 1 - level
    };
    let base = format!("{side}.{blocks}.{diffusers_level}");
    if let Some(rest) = rest.strip_prefix("block.") {
        let (j, rest) = index_and_rest(rest)?;
        return plain(format!("{base}.resnets.{j}.{}", resnet_inner(rest)?));
    }
    let sampler = if side == "encoder" {
        (rest.strip_prefix("downsample.conv."), "downsamplers")
    } else {
        (rest.strip_prefix("upsample.conv."), "upsamplers")
    };
    match sampler {
        (Some(param), kind) if matches!(param, "weight" | "bias") => {
            plain(format!("{base}.{kind}.0.conv.{param}"))
        }
        _ => None,
    }
}

/// A [`Derive::Reshape`] without a shape (from [`ldm_vae_name`]) becomes the
/// stored `[c, c, 1, 1]` as `[c, c]`; a weight already stored 2-D stays as it is.
pub(crate) fn linear_reshape(file: &SafetensorsFile, name: &str, derive: Derive) -> Derive {
    match derive {
        Derive::Reshape(shape) if shape.is_empty() => match file.shape(name) {
            Some(&[o, i, 1, 1]) => Derive::Reshape(vec![o, i]),
            _ => Derive::Plain,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let cases = [
            (
                "first_stage_model.encoder.conv_in.weight",
                "encoder.conv_in.weight",
            ),
            ("encoder.norm_out.bias", "encoder.conv_norm_out.bias"),
            (
                "encoder.down.0.block.1.conv2.weight",
                "encoder.down_blocks.0.resnets.1.conv2.weight",
            ),
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
            ),
            (
                "encoder.mid.block_2.norm1.weight",
                "encoder.mid_block.resnets.1.norm1.weight",
            ),
            (
                "decoder.mid.attn_1.norm.bias",
                "decoder.mid_block.attentions.0.group_norm.bias",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("post_quant_conv.bias", "post_quant_conv.bias"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                ldm_vae_name(ldm, 4),
                Some((diffusers.to_string(), Derive::Plain)),
                "{ldm}"
            );
        }
        assert_eq!(
            ldm_vae_name("first_stage_model.encoder.mid.attn_1.proj_out.weight", 4),
            Some((
                "encoder.mid_block.attentions.0.to_out.0.weight".into(),
                Derive::Reshape(Vec::new())
            ))
        );
        assert_eq!(
            ldm_vae_name("decoder.mid.attn_1.q.bias", 4),
            Some((
                "decoder.mid_block.attentions.0.to_q.bias".into(),
                Derive::Plain
            ))
        );
        for bad in [
            "decoder.up.4.block.0.conv1.weight",
            "model_ema.x",
            "encoder.mid.attn_1.z.weight",
        ] {
            assert_eq!(ldm_vae_name(bad, 4), None, "{bad}");
        }
    }
}
