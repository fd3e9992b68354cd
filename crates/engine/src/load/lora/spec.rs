//! A LoRA to merge into a model: its file and its weight, from `--lora FILE[:WEIGHT]` or a
//! prompt tag.

use std::path::PathBuf;

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
