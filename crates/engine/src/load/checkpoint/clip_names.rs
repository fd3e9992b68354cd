//! Text encoder tensor names in full checkpoints → the names of the engine's CLIP module
//! (transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`).
//!
//! - OpenAI CLIP-L (SD 1.x `cond_stage_model.transformer.`, SDXL
//!   `conditioner.embedders.0.transformer.`) is stored with transformers' names already.
//! - OpenCLIP ViT-H (SD 2.x `cond_stage_model.model.`) and ViT-bigG (SDXL
//!   `conditioner.embedders.1.model.`) use OpenCLIP's names: a fused `attn.in_proj_weight`
//!   `[3h, h]` (split into q, k, v rows), `ln_1`/`ln_2`, `mlp.c_fc`/`c_proj`, `ln_final`, and
//!   `text_projection` `[h, p]` applied as `x @ P` (a linear weight is its transpose).

use crate::load::weights::Derive;

/// One requested tensor and where it comes from in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The name the engine asks for.
    pub requested: String,
    /// The name in the file.
    pub stored: String,
    /// How the requested tensor is derived from the stored one.
    pub derive: Derive,
}

/// The transformers name of an OpenAI CLIP tensor stored under `prefix` (the rest of the name
/// is already transformers'); `position_ids` buffers are skipped.
pub fn clip_l_name(name: &str, prefix: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?;
    (!rest.ends_with("position_ids")).then(|| rest.to_string())
}

/// The transformers tensors of the OpenCLIP tensor `name` stored under `prefix` (`width`: the
/// model width, to split fused projections): one entry, three for a fused `in_proj`, none for
/// what the engine does not use (`logit_scale`, `attn_mask`).
pub fn open_clip_names(name: &str, prefix: &str, width: usize) -> Vec<Mapped> {
    let Some(rest) = name.strip_prefix(prefix) else {
        return Vec::new();
    };
    let one = |requested: String, derive: Derive| {
        vec![Mapped {
            requested,
            stored: name.to_string(),
            derive,
        }]
    };
    match rest {
        "token_embedding.weight" => {
            return one(
                "text_model.embeddings.token_embedding.weight".into(),
                Derive::Plain,
            );
        }
        "positional_embedding" => {
            return one(
                "text_model.embeddings.position_embedding.weight".into(),
                Derive::Plain,
            );
        }
        "ln_final.weight" | "ln_final.bias" => {
            let param = &rest["ln_final.".len()..];
            return one(
                format!("text_model.final_layer_norm.{param}"),
                Derive::Plain,
            );
        }
        "text_projection" => return one("text_projection.weight".into(), Derive::Transpose),
        _ => {}
    }
    let Some(rest) = rest.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return Vec::new();
    };
    if layer.parse::<usize>().is_err() {
        return Vec::new();
    }
    let base = format!("text_model.encoder.layers.{layer}");
    if let Some(param) = rest.strip_prefix("attn.in_proj_") {
        let param = match param {
            "weight" => "weight",
            "bias" => "bias",
            _ => return Vec::new(),
        };
        return ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(i, proj)| Mapped {
                requested: format!("{base}.self_attn.{proj}.{param}"),
                stored: name.to_string(),
                derive: Derive::Rows {
                    start: i * width,
                    len: width,
                },
            })
            .collect();
    }
    let Some((module, param)) = rest.rsplit_once('.') else {
        return Vec::new();
    };
    if !matches!(param, "weight" | "bias") {
        return Vec::new();
    }
    let mapped = match module {
        "ln_1" => "layer_norm1",
        "ln_2" => "layer_norm2",
        "attn.out_proj" => "self_attn.out_proj",
        "mlp.c_fc" => "mlp.fc1",
        "mlp.c_proj" => "mlp.fc2",
        _ => return Vec::new(),
    };
    one(format!("{base}.{mapped}.{param}"), Derive::Plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "cond_stage_model.model.";

    #[test]
    fn fused_projection_splits_into_rows() {
        let got = open_clip_names(
            "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight",
            P,
            16,
        );
        let names: Vec<_> = got
            .iter()
            .map(|m| (m.requested.as_str(), m.derive.clone()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "text_model.encoder.layers.3.self_attn.q_proj.weight",
                    Derive::Rows { start: 0, len: 16 }
                ),
                (
                    "text_model.encoder.layers.3.self_attn.k_proj.weight",
                    Derive::Rows { start: 16, len: 16 }
                ),
                (
                    "text_model.encoder.layers.3.self_attn.v_proj.weight",
                    Derive::Rows { start: 32, len: 16 }
                ),
            ]
        );
    }

    #[test]
    fn single_names() {
        let cases = [
            (
                "transformer.resblocks.0.ln_1.weight",
                "text_model.encoder.layers.0.layer_norm1.weight",
                Derive::Plain,
            ),
            (
                "transformer.resblocks.22.mlp.c_fc.bias",
                "text_model.encoder.layers.22.mlp.fc1.bias",
                Derive::Plain,
            ),
            (
                "transformer.resblocks.1.mlp.c_proj.weight",
                "text_model.encoder.layers.1.mlp.fc2.weight",
                Derive::Plain,
            ),
            (
                "transformer.resblocks.1.attn.out_proj.bias",
                "text_model.encoder.layers.1.self_attn.out_proj.bias",
                Derive::Plain,
            ),
            (
                "ln_final.bias",
                "text_model.final_layer_norm.bias",
                Derive::Plain,
            ),
            (
                "token_embedding.weight",
                "text_model.embeddings.token_embedding.weight",
                Derive::Plain,
            ),
            (
                "positional_embedding",
                "text_model.embeddings.position_embedding.weight",
                Derive::Plain,
            ),
            (
                "text_projection",
                "text_projection.weight",
                Derive::Transpose,
            ),
        ];
        for (stored, requested, derive) in cases {
            let got = open_clip_names(&format!("{P}{stored}"), P, 8);
            assert_eq!(got.len(), 1, "{stored}");
            assert_eq!(
                (got[0].requested.as_str(), got[0].derive.clone()),
                (requested, derive)
            );
        }
        assert!(open_clip_names("cond_stage_model.model.logit_scale", P, 8).is_empty());
        assert!(open_clip_names("model.diffusion_model.out.0.weight", P, 8).is_empty());
    }

    #[test]
    fn clip_l() {
        let p = "cond_stage_model.transformer.";
        assert_eq!(
            clip_l_name(
                "cond_stage_model.transformer.text_model.final_layer_norm.bias",
                p
            )
            .as_deref(),
            Some("text_model.final_layer_norm.bias")
        );
        assert_eq!(
            clip_l_name(
                "cond_stage_model.transformer.text_model.embeddings.position_ids",
                p
            ),
            None
        );
    }
}
