//! Reading a LoRA `.safetensors` file: its modules (down and up matrices, alpha) grouped by the
//! network they change.
//!
//! Key styles accepted:
//! - kohya / A1111: `lora_unet_<module>`, `lora_te_<module>` (SD 1.x/2.x text encoder),
//!   `lora_te1_` / `lora_te2_` (SDXL's two text encoders), each with `.lora_down.weight`,
//!   `.lora_up.weight` and an optional `.alpha` (absent: alpha = rank). Module names are the
//!   model's module paths with `.` written `_`.
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight` (also
//!   `text_encoder.` and `text_encoder_2.`), alpha = rank.
//!
//! Linear layers have 2-D matrices; convolutions 4-D ones (1×1, or a 3×3 down matrix with a 1×1
//! up matrix: LoCon). LyCORIS's other kinds (LoHa, LoKr, DoRA) are refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::candle_msg;
use loopback_core::{Error, Result};

/// The network a LoRA module changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The denoising UNet.
    Unet,
    /// The (first) text encoder: CLIP-L for SD 1.x and SDXL, OpenCLIP-H for SD 2.x.
    TextEncoder,
    /// SDXL's second text encoder (OpenCLIP-G).
    TextEncoder2,
}

impl Component {
    /// The component in words, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Component::Unet => "UNet",
            Component::TextEncoder => "text encoder",
            Component::TextEncoder2 => "second text encoder",
        }
    }
}

/// One low-rank update: `ΔW = alpha/rank · up · down`.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// `(rank, in)` or `(rank, in, kh, kw)`, f32 on the CPU.
    pub down: Tensor,
    /// `(out, rank)` or `(out, rank, 1, 1)`, f32 on the CPU.
    pub up: Tensor,
    /// The trained alpha; `None`: alpha = rank (scale 1).
    pub alpha: Option<f32>,
}

impl LoraModule {
    /// The rank (rows of the down matrix).
    pub fn rank(&self) -> usize {
        self.down.dims().first().copied().unwrap_or(1)
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        let rank = self.rank().max(1) as f64;
        self.alpha.map_or(1.0, |a| f64::from(a) / rank)
    }

    /// The update `multiplier · alpha/rank · up·down` as an `(out, in·kh·kw)` f32 matrix on the
    /// CPU.
    pub fn delta(&self, multiplier: f64) -> candle_core::Result<Tensor> {
        let rank = self.rank();
        let out = self.up.dims()[0];
        let rest = self.down.elem_count() / rank.max(1);
        let up = self.up.reshape((out, rank))?;
        let down = self.down.reshape((rank, rest))?;
        up.matmul(&down)? * (multiplier * self.scale())
    }
}

/// A LoRA file's modules, by component and module name (the model's module path with `.`
/// written `_`, e.g. `down_blocks_0_attentions_0_proj_in`).
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// The file read.
    pub path: PathBuf,
    /// The modules.
    pub modules: BTreeMap<(Component, String), LoraModule>,
}

/// The parts of one module as they are found.
#[derive(Default)]
struct Parts {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f32>,
}

/// What a key says: component, module (flat), and which part.
enum Part {
    Down,
    Up,
    Alpha,
}

/// Splits a key into its component, flat module name and part; `None` for keys of no known
/// style.
fn classify(key: &str) -> Option<(Component, String, Part)> {
    const KOHYA: [(&str, Component); 4] = [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te2_", Component::TextEncoder2),
        ("lora_te_", Component::TextEncoder),
    ];
    const KOHYA_PARTS: [(&str, Part); 3] = [
        (".lora_down.weight", Part::Down),
        (".lora_up.weight", Part::Up),
        (".alpha", Part::Alpha),
    ];
    for (prefix, component) in KOHYA {
        if let Some(rest) = key.strip_prefix(prefix) {
            for (suffix, part) in KOHYA_PARTS {
                if let Some(module) = rest.strip_suffix(suffix) {
                    return Some((component, module.to_string(), part));
                }
            }
            return None;
        }
    }
    const PEFT: [(&str, Component); 3] = [
        ("unet.", Component::Unet),
        ("text_encoder_2.", Component::TextEncoder2),
        ("text_encoder.", Component::TextEncoder),
    ];
    const PEFT_PARTS: [(&str, Part); 2] =
        [(".lora_A.weight", Part::Down), (".lora_B.weight", Part::Up)];
    for (prefix, component) in PEFT {
        if let Some(rest) = key.strip_prefix(prefix) {
            for (suffix, part) in PEFT_PARTS {
                if let Some(module) = rest.strip_suffix(suffix) {
                    return Some((component, module.replace('.', "_"), part));
                }
            }
            return None;
        }
    }
    None
}

/// The LyCORIS variant a key belongs to, for a clear refusal.
fn lycoris_kind(key: &str) -> Option<&'static str> {
    if key.contains(".hada_") {
        Some("LoHa")
    } else if key.contains(".lokr_") {
        Some("LoKr")
    } else if key.ends_with(".dora_scale") {
        Some("DoRA")
    } else if key.ends_with(".diff") || key.ends_with(".diff_b") {
        Some("full-difference (diff)")
    } else {
        None
    }
}

impl LoraFile {
    /// Reads `path` (`.safetensors`, or a PyTorch pickle read without running anything).
    /// Errors name the file: not a safetensors file, keys of no LoRA style,
    /// unsupported LyCORIS variants, modules missing a matrix, or mismatched ranks.
    pub fn read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::input(path, "no such LoRA file"));
        }
        // A pickle (`.pt`, `.ckpt`) is checked and read without running anything.
        let readable = crate::load::checkpoint::as_safetensors(path, &["state_dict"])?;
        let tensors = candle_core::safetensors::load(&readable, &Device::Cpu).map_err(|e| {
            Error::input(
                path,
                format!("not a safetensors LoRA file: {}", candle_msg(&e)),
            )
        })?;
        let mut parts: BTreeMap<(Component, String), Parts> = BTreeMap::new();
        let mut unknown = Vec::new();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for key in names {
            if let Some(kind) = lycoris_kind(key) {
                return Err(Error::input(
                    path,
                    format!("LyCORIS {kind} networks are not supported (key {key})"),
                ));
            }
            let Some((component, module, part)) = classify(key) else {
                unknown.push(key.clone());
                continue;
            };
            let tensor = tensors[key]
                .to_dtype(DType::F32)
                .map_err(|e| Error::input(path, format!("{key}: {}", candle_msg(&e))))?;
            let entry = parts.entry((component, module)).or_default();
            match part {
                Part::Down => entry.down = Some(tensor),
                Part::Up => entry.up = Some(tensor),
                Part::Alpha => {
                    let alpha = tensor
                        .flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .ok()
                        .and_then(|v| (v.len() == 1).then(|| v[0]))
                        .ok_or_else(|| Error::input(path, format!("{key} is not a scalar")))?;
                    entry.alpha = Some(alpha);
                }
            }
        }
        if !unknown.is_empty() {
            return Err(Error::input(
                path,
                format!(
                    "not a kohya/A1111 or diffusers LoRA: {} key(s) of no known style, e.g. {}",
                    unknown.len(),
                    unknown
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if parts.is_empty() {
            return Err(Error::input(path, "no LoRA modules in this file"));
        }
        let mut modules = BTreeMap::new();
        for ((component, name), p) in parts {
            let (Some(down), Some(up)) = (p.down, p.up) else {
                return Err(Error::input(
                    path,
                    format!("LoRA module {name} lacks its down or up matrix"),
                ));
            };
            let ok = matches!(down.rank(), 2 | 4)
                && down.rank() == up.rank()
                && up.dims()[1] == down.dims()[0]
                && up.dims()[2..].iter().all(|&d| d == 1);
            if !ok {
                return Err(Error::input(
                    path,
                    format!(
                        "LoRA module {name}: down {:?} and up {:?} do not form a low-rank update",
                        down.dims(),
                        up.dims()
                    ),
                ));
            }
            modules.insert(
                (component, name),
                LoraModule {
                    down,
                    up,
                    alpha: p.alpha,
                },
            );
        }
        Ok(LoraFile {
            path: path.to_path_buf(),
            modules,
        })
    }

    /// The components this LoRA changes.
    pub fn components(&self) -> Vec<Component> {
        let mut out: Vec<Component> = self.modules.keys().map(|(c, _)| *c).collect();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_styles() {
        let (c, m, _) =
            classify("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha").unwrap();
        assert_eq!(
            (c, m.as_str()),
            (
                Component::TextEncoder,
                "text_model_encoder_layers_0_self_attn_q_proj"
            )
        );
        let (c, m, _) =
            classify("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight").unwrap();
        assert_eq!(
            (c, m.as_str()),
            (
                Component::TextEncoder2,
                "text_model_encoder_layers_0_mlp_fc1"
            )
        );
        let (c, m, _) = classify(
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight",
        )
        .unwrap();
        assert_eq!(
            (c, m.as_str()),
            (
                Component::Unet,
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
            )
        );
        assert!(classify("lora_unet_x.weight").is_none());
        assert!(classify("model.diffusion_model.x").is_none());
        assert_eq!(lycoris_kind("lora_unet_x.hada_w1_a"), Some("LoHa"));
    }
}
