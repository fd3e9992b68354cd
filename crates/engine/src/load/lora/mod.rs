//! LoRA networks (kohya/A1111 `.safetensors`, and the diffusers/PEFT key style) merged into the
//! model's weights as they load.
//!
//! - [`file`]: reading a LoRA file into modules (down, up, alpha) per component;
//! - [`names`]: matching a LoRA's module names to the weight names a model loads;
//! - [`merge`]: a var-builder backend that adds `Σ weight · alpha/rank · up·down` to a weight
//!   when the model fetches it (so changing the LoRA set means reloading the model);
//! - [`prompt`]: A1111's `<lora:name:weight>` prompt tags;
//! - [`hash`]: A1111's LoRA hash for the `Lora hashes` infotext field.
//!
//! Policy for modules that match no weight of the model: an error naming the LoRA file and a
//! few of the modules. A partly applied LoRA gives a silently different image, and a LoRA for
//! another family (an SDXL LoRA on an SD 1.5 model) matches almost nothing, so strictness is the
//! useful default.

pub mod file;
pub mod hash;
pub mod merge;
pub mod names;
pub mod prompt;

use std::path::PathBuf;

pub use file::{Component, LoraFile, LoraModule};
pub use merge::LoraSet;
pub use prompt::{LoraTag, resolve_tag, split_prompt};

/// A LoRA to merge into a model: its file and its weight (A1111's multiplier).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// The multiplier: 1 applies the LoRA as trained, 0 not at all, negative values invert it.
    pub weight: f64,
}

impl LoraSpec {
    /// The LoRA's name as A1111 shows it: the file name without its extension.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Parses the CLI form `FILE[:WEIGHT]` (the weight defaults to 1).
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        if let Some((file, weight)) = text.rsplit_once(':')
            && let Ok(weight) = weight.trim().parse::<f64>()
        {
            if !weight.is_finite() {
                return Err(format!("{text}: the LoRA weight must be a finite number"));
            }
            return Ok(LoraSpec {
                path: PathBuf::from(file),
                weight,
            });
        }
        Ok(LoraSpec {
            path: PathBuf::from(text),
            weight: 1.0,
        })
    }
}

/// The LoRAs a run needs: those of the prompt's `<lora:NAME:WEIGHT>` tags, found by name
/// under `model_dirs` ([`resolve_tag`]), then `extra` (e.g. the CLI's `--lora`).
pub fn specs_for_prompt(
    prompt: &str,
    extra: &[LoraSpec],
    model_dirs: &[PathBuf],
) -> loopback_core::Result<Vec<LoraSpec>> {
    let (_, tags) = split_prompt(prompt)?;
    let mut specs = Vec::with_capacity(tags.len() + extra.len());
    for tag in tags {
        specs.push(LoraSpec {
            path: resolve_tag(&tag.name, model_dirs)?,
            weight: tag.weight,
        });
    }
    specs.extend_from_slice(extra);
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_form_with_and_without_weight() {
        let a = LoraSpec::parse_cli("models/Lora/style.safetensors:0.6").unwrap();
        assert_eq!(a.path, PathBuf::from("models/Lora/style.safetensors"));
        assert_eq!(a.weight, 0.6);
        assert_eq!(a.name(), "style");
        let b = LoraSpec::parse_cli("C:/x/y.safetensors").unwrap();
        assert_eq!(b.path, PathBuf::from("C:/x/y.safetensors"));
        assert_eq!(b.weight, 1.0);
        assert_eq!(
            LoraSpec::parse_cli("a.safetensors:-1").unwrap().weight,
            -1.0
        );
        assert!(LoraSpec::parse_cli("a.safetensors:inf").is_err());
    }
}
