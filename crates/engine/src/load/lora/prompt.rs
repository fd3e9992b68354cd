//! A1111's LoRA prompt tags: `<lora:NAME>` and `<lora:NAME:WEIGHT>`.
//!
//! As in A1111 (`modules/extra_networks.py`), a tag is removed from the text given to the
//! tokenizer (nothing else changes around it) and stays in the prompt written to the
//! metadata; the LoRA is looked up by name as `NAME.safetensors` in the LoRA folders.

use std::path::{Path, PathBuf};

use loopback_core::{Error, Result};

/// A `<lora:…>` tag of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    /// The name as written (the file name without `.safetensors`).
    pub name: String,
    /// The multiplier (1 when not given).
    pub weight: f64,
}

/// The prompt without its `<lora:…>` tags (the text the tokenizer gets), and the tags in
/// order. A tag with a weight that is not a number, or with more than a name and a weight
/// (A1111's separate text-encoder / UNet weights), is an error naming it.
pub fn split_prompt(prompt: &str) -> Result<(String, Vec<LoraTag>)> {
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        let tag = &rest[start..start + len + 1];
        let body = &tag["<lora:".len()..tag.len() - 1];
        let bad = |why: &str| Error::setting("prompt", tag, why);
        let mut args = body.split(':');
        let name = args.next().unwrap_or("").trim();
        if name.is_empty() {
            return Err(bad("a LoRA tag needs a name: <lora:NAME:WEIGHT>"));
        }
        let weight = match args.next() {
            None => 1.0,
            Some(w) => w
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite())
                .ok_or_else(|| bad("the LoRA weight is not a number"))?,
        };
        if args.next().is_some() {
            return Err(bad(
                "separate text-encoder and UNet weights are not supported; use <lora:NAME:WEIGHT>",
            ));
        }
        tags.push(LoraTag {
            name: name.to_string(),
            weight,
        });
        text.push_str(&rest[..start]);
        rest = &rest[start + len + 1..];
    }
    text.push_str(rest);
    Ok((text, tags))
}

/// The folders searched for LoRAs by name under each models folder, as A1111 arranges them.
pub const LORA_SUBDIRS: [&str; 3] = ["Lora", "LoRA", "lora"];

/// Finds `NAME.safetensors` for `name`: in `Lora/` under each of `model_dirs` (and its
/// sub-folders), then in each of `model_dirs` itself.
pub fn resolve_tag(name: &str, model_dirs: &[PathBuf]) -> Result<PathBuf> {
    let file = format!("{name}.safetensors");
    for dir in model_dirs {
        for sub in LORA_SUBDIRS {
            if let Some(found) = find_in(&dir.join(sub), &file, 3) {
                return Ok(found);
            }
        }
    }
    for dir in model_dirs {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let searched: Vec<String> = model_dirs
        .iter()
        .map(|d| d.join("Lora").display().to_string())
        .collect();
    Err(Error::input(
        file,
        format!(
            "LoRA not found (searched {} and their parents)",
            searched.join(", ")
        ),
    ))
}

/// `dir/file`, or the first match in sub-folders down to `depth` levels (in name order).
fn find_in(dir: &Path, file: &str, depth: usize) -> Option<PathBuf> {
    let direct = dir.join(file);
    if direct.is_file() {
        return Some(direct);
    }
    if depth == 0 {
        return None;
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    subs.iter().find_map(|sub| find_in(sub, file, depth - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_removed_from_the_text() {
        let (text, tags) = split_prompt("a cat <lora:style_a:0.6>, <lora:detail> sitting").unwrap();
        assert_eq!(text, "a cat ,  sitting");
        assert_eq!(
            tags,
            vec![
                LoraTag {
                    name: "style_a".into(),
                    weight: 0.6
                },
                LoraTag {
                    name: "detail".into(),
                    weight: 1.0
                },
            ]
        );
        let (text, tags) = split_prompt("no tags <notlora:x> here").unwrap();
        assert_eq!(text, "no tags <notlora:x> here");
        assert!(tags.is_empty());
        assert!(split_prompt("<lora:x:abc>").is_err());
        assert!(split_prompt("<lora::1>").is_err());
        assert!(split_prompt("<lora:x:1:0.5>").is_err());
    }

    #[test]
    fn names_resolve_in_lora_folders_first() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().to_path_buf();
        std::fs::create_dir_all(models.join("Lora/styles")).unwrap();
        std::fs::write(models.join("Lora/styles/a.safetensors"), b"x").unwrap();
        std::fs::write(models.join("b.safetensors"), b"x").unwrap();
        std::fs::write(models.join("a.safetensors"), b"x").unwrap();
        let dirs = [models.clone()];
        assert_eq!(
            resolve_tag("a", &dirs).unwrap(),
            models.join("Lora/styles/a.safetensors")
        );
        assert_eq!(
            resolve_tag("b", &dirs).unwrap(),
            models.join("b.safetensors")
        );
        let err = resolve_tag("c", &dirs).unwrap_err().to_string();
        assert!(
            err.contains("c.safetensors") && err.contains("not found"),
            "{err}"
        );
    }
}
