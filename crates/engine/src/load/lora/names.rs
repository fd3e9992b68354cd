//! Matching a LoRA's module names to the weight names a model loads.
//!
//! kohya writes a module path with every `.` as `_` (`down_blocks_0_attentions_0_proj_in`),
//! which cannot be undone by rule (`to_q`, `proj_in`, `transformer_blocks` contain `_`
//! themselves). So the index goes the other way: every real weight name of the component is
//! flattened the same way and looked up. Names in another layout than the model's (SDXL
//! LoRAs use the original SGM layout: `input_blocks_4_1_…`) are handled by indexing the names
//! of that layout and translating each to the model's name.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::load::checkpoint::LdmUnetLayout;
use crate::load::checkpoint::unet_names::sgm_unet_name;
use loopback_core::{Error, Result};

/// A name translation: a weight name in the LoRA's layout to the name the model fetches;
/// `None` when the model has no such weight.
pub type Translate<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The identity translation, for LoRAs whose names follow the model's own (diffusers) layout,
/// such as every SD 1.x/2.x kohya LoRA.
pub fn same_layout(name: &str) -> Option<String> {
    Some(name.to_string())
}

/// The flat form of a module path: `.` → `_`, without a leading `text_model.` (the text
/// encoder's weights are stored with and without it).
pub fn flat(module: &str) -> String {
    module
        .strip_prefix("text_model.")
        .unwrap_or(module)
        .replace('.', "_")
}

/// The names an SDXL UNet's weights are matched by: each diffusers weight name of `names`
/// under its own name (diffusers/PEFT-trained LoRAs) and under its original SGM name
/// (kohya's SDXL LoRAs: `input_blocks.4.1.…`), mapped to the diffusers name the model
/// fetches. `layout` is the UNet's block numbering. The two layouts cannot collide: their
/// top-level names differ (`down_blocks`/`input_blocks`, `mid_block`/`middle_block`, …).
pub fn sgm_aliases(names: &[String], layout: LdmUnetLayout) -> HashMap<String, String> {
    let up_has_attention = |level: usize| {
        let prefix = format!("up_blocks.{level}.attentions.");
        names.iter().any(|n| n.starts_with(&prefix))
    };
    let mut aliases = HashMap::with_capacity(2 * names.len());
    for name in names {
        if let Some(sgm) = sgm_unet_name(name, layout, up_has_attention) {
            aliases.insert(sgm, name.clone());
        }
        aliases.insert(name.clone(), name.clone());
    }
    aliases
}

/// What a flat module name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The weight name the model fetches.
    Found(String),
    /// Two weights flatten to this name.
    Ambiguous,
    /// No weight of the model has this name.
    Missing,
}

/// Flat module names → the model's weight names, for one component.
#[derive(Debug, Clone, Default)]
pub struct NameIndex {
    map: HashMap<String, Option<String>>,
}

impl NameIndex {
    /// Indexes every `….weight` name of `names` (in the LoRA's layout), translated to the
    /// model's names by `translate`.
    pub fn new<'n>(names: impl IntoIterator<Item = &'n str>, translate: Translate<'_>) -> Self {
        let mut map: HashMap<String, Option<String>> = HashMap::new();
        for name in names {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let Some(target) = translate(name) else {
                continue;
            };
            map.entry(flat(module))
                .and_modify(|e| {
                    if e.as_deref() != Some(target.as_str()) {
                        *e = None;
                    }
                })
                .or_insert(Some(target));
        }
        NameIndex { map }
    }

    /// The weight a LoRA module (flat name, as kohya writes it) changes.
    pub fn lookup(&self, module: &str) -> Lookup {
        let key = module.strip_prefix("text_model_").unwrap_or(module);
        match self.map.get(key) {
            Some(Some(name)) => Lookup::Found(name.clone()),
            Some(None) => Lookup::Ambiguous,
            None => Lookup::Missing,
        }
    }

    /// Names indexed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing was indexed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The tensor names of a safetensors file, from its header alone.
pub fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    let bad =
        |why: String| Error::input(path, format!("cannot read the safetensors header: {why}"));
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    Ok(json
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "__metadata__")
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_underscores_against_real_names() {
        let names = [
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            "down_blocks.0.attentions.0.proj_in.weight",
            "down_blocks.0.attentions.0.proj_in.bias",
            "text_model.encoder.layers.0.self_attn.q_proj.weight",
        ];
        let index = NameIndex::new(names, &same_layout);
        assert_eq!(
            index.lookup("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"),
            Lookup::Found(names[0].into())
        );
        assert_eq!(
            index.lookup("text_model_encoder_layers_0_self_attn_q_proj"),
            Lookup::Found(names[3].into())
        );
        assert_eq!(
            index.lookup("down_blocks_0_attentions_0_proj_out"),
            Lookup::Missing
        );
        // Weights stored without the `text_model.` prefix match kohya's names too.
        let index = NameIndex::new(["encoder.layers.1.mlp.fc1.weight"], &same_layout);
        assert_eq!(
            index.lookup("text_model_encoder_layers_1_mlp_fc1"),
            Lookup::Found("encoder.layers.1.mlp.fc1.weight".into())
        );
    }

    #[test]
    fn sdxl_unet_matches_in_both_layouts_without_ambiguity() {
        let path =
            crate::test_util::fixtures().join("tiny-sdxl/unet/diffusion_pytorch_model.safetensors");
        let names = safetensors_names(&path).unwrap();
        let layout = LdmUnetLayout {
            levels: 3,
            layers_per_block: 1,
        };
        let aliases = sgm_aliases(&names, layout);
        let index = NameIndex::new(aliases.keys().map(String::as_str), &|n| {
            aliases.get(n).cloned()
        });
        for alias in aliases.keys() {
            let Some(module) = alias.strip_suffix(".weight") else {
                continue;
            };
            assert_eq!(
                index.lookup(&flat(module)),
                Lookup::Found(aliases[alias].clone()),
                "{alias}"
            );
        }
        for (kohya, diffusers) in [
            (
                "output_blocks_1_2_conv",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "input_blocks_3_1_transformer_blocks_0_attn1_to_out_0",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
            ),
            (
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
            ),
            (
                "middle_block_0_emb_layers_1",
                "mid_block.resnets.0.time_emb_proj.weight",
            ),
            ("label_emb_0_0", "add_embedding.linear_1.weight"),
        ] {
            assert_eq!(index.lookup(kohya), Lookup::Found(diffusers.into()));
        }
    }

    #[test]
    fn colliding_names_are_ambiguous_and_translation_applies() {
        let index = NameIndex::new(["a.b_c.weight", "a_b.c.weight"], &same_layout);
        assert_eq!(index.lookup("a_b_c"), Lookup::Ambiguous);
        let sgm = |n: &str| {
            n.strip_prefix("input_blocks.1.1.")
                .map(|r| format!("down_blocks.0.attentions.0.{r}"))
        };
        let index = NameIndex::new(["input_blocks.1.1.proj_in.weight", "out.2.weight"], &sgm);
        assert_eq!(
            index.lookup("input_blocks_1_1_proj_in"),
            Lookup::Found("down_blocks.0.attentions.0.proj_in.weight".into())
        );
        assert_eq!(index.lookup("out_2"), Lookup::Missing);
    }
}
