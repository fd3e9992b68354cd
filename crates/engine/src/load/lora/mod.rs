//! LoRA networks (kohya/A1111 `.safetensors`, and the diffusers/PEFT key style) merged into the
//! model's weights as they load.
//!
//! - [`file`]: reading a LoRA file into modules (down, up, alpha) per component;
//! - [`names`]: matching a LoRA's module names to the weight names a model loads;
//! - [`merge`]: a var-builder backend that adds `Σ weight · alpha/rank · up·down` to a weight
//!   when the model fetches it (so changing the LoRA set means reloading the model);
//! - [`prompt`]: A1111's `<lora:name:weight>` prompt tags;
//! - [`hash`]: A1111's LoRA hash for the `Lora hashes` infotext field;
//! - [`spec`]: a LoRA to merge (file and weight), from the CLI or a prompt tag.
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
pub mod spec;

use std::path::PathBuf;

pub use file::{Component, LoraFile, LoraModule};
pub use merge::LoraSet;
pub use prompt::{LoraTag, resolve_tag, split_prompt};
pub use spec::LoraSpec;

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
