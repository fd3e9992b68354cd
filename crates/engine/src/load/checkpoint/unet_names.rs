//! UNet tensor names: the original (CompVis / Stability "LDM" and "SGM") layout → diffusers
//! ([`ldm_unet_name`]), and back ([`sgm_unet_name`], for SDXL LoRAs named in the SGM layout).
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

/// A resnet's modules: (original, diffusers).
const RESNET_MODULES: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// The modules outside the numbered blocks: (original, diffusers).
const TOP_MODULES: [(&str, &str); 7] = [
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
];

/// `module.param` with `module` looked up in `table` (column `from` → the other column).
fn map_module(rest: &str, table: &[(&str, &str)], to_diffusers: bool) -> Option<String> {
    let (module, param) = split_param(rest)?;
    let (_, mapped) = table
        .iter()
        .map(|&(ldm, diffusers)| {
            if to_diffusers {
                (ldm, diffusers)
            } else {
                (diffusers, ldm)
            }
        })
        .find(|(from, _)| *from == module)?;
    Some(format!("{mapped}.{param}"))
}

/// Maps a resnet's inner name (`in_layers.0.weight`, …) to diffusers'.
fn resnet_inner(rest: &str) -> Option<String> {
    map_module(rest, &RESNET_MODULES, true)
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
/// use crate::load::checkpoint::{LdmUnetLayout, ldm_unet_name};
/// let sd15 = LdmUnetLayout { levels: 4, layers_per_block: 2 };
/// assert_eq!(
///     ldm_unet_name("model.diffusion_model.input_blocks.5.1.proj_in.weight", sd15).as_deref(),
///     Some("down_blocks.1.attentions.1.proj_in.weight")
/// );
/// ```
pub fn ldm_unet_name(name: &str, layout: LdmUnetLayout) -> Option<String> {
    let name = name.strip_prefix(UNET_PREFIX).unwrap_or(name);
    let per_level = layout.layers_per_block + 1;
    if let Some(mapped) = map_module(name, &TOP_MODULES, true) {
        return Some(mapped);
    }
    if let Some(rest) = name.strip_prefix("input_blocks.") {
        let (block, rest) = index_and_rest(rest)?;
        if block == 0 {
            return None; // only `input_blocks.0.0` (conv_in), above
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

/// The original-layout (SGM / LDM) name, without the `model.diffusion_model.` prefix, of the
/// diffusers UNet tensor `name` of a model laid out as `layout`: the inverse of
/// [`ldm_unet_name`]. `up_has_attention(level)` says whether up level `level` has
/// transformers, which makes its upsampler module 2 of the level's last block instead of 1.
/// `None` when `name` is not a UNet parameter of such a model.
///
/// ```
/// use crate::load::checkpoint::LdmUnetLayout;
/// use crate::load::checkpoint::unet_names::sgm_unet_name;
/// let sdxl = LdmUnetLayout { levels: 3, layers_per_block: 2 };
/// let name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight";
/// assert_eq!(
///     sgm_unet_name(name, sdxl, |level| level < 2).as_deref(),
///     Some("input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight")
/// );
/// ```
pub fn sgm_unet_name(
    name: &str,
    layout: LdmUnetLayout,
    up_has_attention: impl Fn(usize) -> bool,
) -> Option<String> {
    if let Some(mapped) = map_module(name, &TOP_MODULES, false) {
        return Some(mapped);
    }
    let resnet = |rest: &str| map_module(rest, &RESNET_MODULES, false);
    let per_level = layout.layers_per_block + 1;
    if let Some(rest) = name.strip_prefix("mid_block.") {
        let (kind, rest) = rest.split_once('.')?;
        let (j, rest) = index_and_rest(rest)?;
        return match (kind, j) {
            ("resnets", 0 | 1) => Some(format!("middle_block.{}.{}", 2 * j, resnet(rest)?)),
            ("attentions", 0) => Some(format!("middle_block.1.{}", transformer_inner(rest)?)),
            _ => None,
        };
    }
    let (down, rest) = match (
        name.strip_prefix("down_blocks."),
        name.strip_prefix("up_blocks."),
    ) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return None,
    };
    let (level, rest) = index_and_rest(rest)?;
    let (kind, rest) = rest.split_once('.')?;
    let (j, rest) = index_and_rest(rest)?;
    // Blocks of a level: `layers_per_block` resnets (+ transformers) down, one more up.
    let blocks = if down {
        layout.layers_per_block
    } else {
        per_level
    };
    if level >= layout.levels || (kind != "downsamplers" && kind != "upsamplers" && j >= blocks) {
        return None;
    }
    let (stem, first) = if down {
        ("input_blocks", 1 + level * per_level)
    } else {
        ("output_blocks", level * per_level)
    };
    let sampler = |part: usize, module: &str| -> Option<String> {
        let param = rest.strip_prefix("conv.")?;
        (j == 0 && level + 1 < layout.levels && matches!(param, "weight" | "bias")).then(|| {
            format!(
                "{stem}.{}.{part}.{module}.{param}",
                first + layout.layers_per_block
            )
        })
    };
    match (kind, down) {
        ("resnets", _) => Some(format!("{stem}.{}.0.{}", first + j, resnet(rest)?)),
        ("attentions", _) => Some(format!(
            "{stem}.{}.1.{}",
            first + j,
            transformer_inner(rest)?
        )),
        ("downsamplers", true) => sampler(0, "op"),
        ("upsamplers", false) => sampler(if up_has_attention(level) { 2 } else { 1 }, "conv"),
        _ => None,
    }
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

#[cfg(test)]
mod inverse_tests {
    use std::collections::HashSet;

    use super::*;

    /// Every parameter name of a diffusers UNet with `layout`, transformers on the down and
    /// up levels marked in `down_attn` / `up_attn` (`depth` layers each).
    fn diffusers_names(
        layout: LdmUnetLayout,
        down_attn: &[bool],
        up_attn: &[bool],
        depth: usize,
    ) -> Vec<String> {
        let params = |module: &str| [format!("{module}.weight"), format!("{module}.bias")];
        let resnet = |base: &str| {
            [
                "norm1",
                "conv1",
                "time_emb_proj",
                "norm2",
                "conv2",
                "conv_shortcut",
            ]
            .iter()
            .flat_map(|m| params(&format!("{base}.{m}")))
            .collect::<Vec<_>>()
        };
        let transformer = |base: &str| {
            let mut out: Vec<String> = ["norm", "proj_in", "proj_out"]
                .iter()
                .flat_map(|m| params(&format!("{base}.{m}")))
                .collect();
            for t in 0..depth {
                for m in [
                    "norm1",
                    "attn1.to_q",
                    "attn1.to_out.0",
                    "attn2.to_k",
                    "attn2.to_v",
                    "ff.net.0.proj",
                    "ff.net.2",
                ] {
                    out.extend(params(&format!("{base}.transformer_blocks.{t}.{m}")));
                }
            }
            out
        };
        let mut names: Vec<String> = TOP_MODULES
            .iter()
            .flat_map(|(_, diffusers)| params(diffusers))
            .collect();
        for level in 0..layout.levels {
            let last = level + 1 == layout.levels;
            for j in 0..layout.layers_per_block {
                names.extend(resnet(&format!("down_blocks.{level}.resnets.{j}")));
                if down_attn[level] {
                    names.extend(transformer(&format!("down_blocks.{level}.attentions.{j}")));
                }
            }
            if !last {
                names.extend(params(&format!("down_blocks.{level}.downsamplers.0.conv")));
            }
            for j in 0..=layout.layers_per_block {
                names.extend(resnet(&format!("up_blocks.{level}.resnets.{j}")));
                if up_attn[level] {
                    names.extend(transformer(&format!("up_blocks.{level}.attentions.{j}")));
                }
            }
            if !last {
                names.extend(params(&format!("up_blocks.{level}.upsamplers.0.conv")));
            }
        }
        names.extend(resnet("mid_block.resnets.0"));
        names.extend(resnet("mid_block.resnets.1"));
        names.extend(transformer("mid_block.attentions.0"));
        names
    }

    /// Every name maps to a distinct original name that [`ldm_unet_name`] maps back.
    fn assert_round_trip(names: &[String], layout: LdmUnetLayout, up_attn: &[bool]) {
        let mut seen = HashSet::new();
        for name in names {
            let sgm = sgm_unet_name(name, layout, |l| up_attn[l])
                .unwrap_or_else(|| panic!("{name} has no original-layout name"));
            assert_eq!(
                ldm_unet_name(&sgm, layout).as_deref(),
                Some(name.as_str()),
                "{name} -> {sgm}"
            );
            assert!(seen.insert(sgm.clone()), "{sgm} twice");
        }
    }

    #[test]
    fn round_trips_sd15_and_sdxl_shapes() {
        let sd15 = LdmUnetLayout {
            levels: 4,
            layers_per_block: 2,
        };
        let (down, up) = ([true, true, true, false], [false, true, true, true]);
        assert_round_trip(&diffusers_names(sd15, &down, &up, 1), sd15, &up);
        let sdxl = LdmUnetLayout {
            levels: 3,
            layers_per_block: 2,
        };
        let (down, up) = ([false, true, true], [true, true, false]);
        let names = diffusers_names(sdxl, &down, &up, 10);
        assert_round_trip(&names, sdxl, &up);
        // One transformer-less level more: the upsampler moves to module 1.
        let tiny = LdmUnetLayout {
            levels: 3,
            layers_per_block: 1,
        };
        let tiny_attn = [false, true, false];
        assert_round_trip(
            &diffusers_names(tiny, &tiny_attn, &tiny_attn, 2),
            tiny,
            &tiny_attn,
        );
        let known = [
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.2.conv.weight",
            ),
            (
                "up_blocks.2.resnets.2.conv_shortcut.bias",
                "output_blocks.8.0.skip_connection.bias",
            ),
            (
                "down_blocks.0.downsamplers.0.conv.bias",
                "input_blocks.3.0.op.bias",
            ),
            (
                "mid_block.resnets.1.time_emb_proj.weight",
                "middle_block.2.emb_layers.1.weight",
            ),
            ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
            ("conv_in.bias", "input_blocks.0.0.bias"),
        ];
        for (diffusers, sgm) in known {
            assert_eq!(
                sgm_unet_name(diffusers, sdxl, |l| up[l]).as_deref(),
                Some(sgm)
            );
        }
        for name in [
            "down_blocks.2.downsamplers.0.conv.weight", // no downsampler on the last level
            "up_blocks.2.upsamplers.0.conv.weight",
            "down_blocks.0.resnets.2.conv1.weight", // past layers_per_block
            "up_blocks.0.resnets.3.conv1.weight",
            "down_blocks.3.resnets.0.conv1.weight", // past the last level
            "mid_block.resnets.2.conv1.weight",
            "mid_block.attentions.1.proj_in.weight",
            "down_blocks.0.resnets.0.nonlinearity.weight",
            "time_embedding.linear_3.weight",
            "text_model.encoder.layers.0.mlp.fc1.weight",
        ] {
            assert_eq!(sgm_unet_name(name, sdxl, |l| up[l]), None, "{name}");
        }
    }

    /// The tiny test models' real UNet names round-trip too.
    #[test]
    fn round_trips_the_tiny_models() {
        let fixtures = crate::test_util::fixtures();
        for (model, levels, up_attn) in [
            ("tiny-sd", 2, &[false, true][..]),
            ("tiny-sdxl", 3, &[true, true, false][..]),
        ] {
            let path = fixtures
                .join(model)
                .join("unet/diffusion_pytorch_model.safetensors");
            let names = crate::load::lora::names::safetensors_names(&path).unwrap();
            let layout = LdmUnetLayout {
                levels,
                layers_per_block: 1,
            };
            assert!(names.len() > 100, "{model}");
            assert_round_trip(&names, layout, up_attn);
        }
    }
}
