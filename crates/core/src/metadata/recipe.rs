//! The recipe of a run, and its mapping to and from A1111's infotext.
//!
//! The infotext holds A1111's keys in A1111's order, with the ControlNet unit where the
//! sd-webui-controlnet extension puts it (`ControlNet 0`, after `Clip skip` and before `Lora
//! hashes`), then the loopback script's keys and this app's. Reading an
//! infotext takes back every setting these keys carry; the recipe (JSON) carries all of them.

use serde::{Deserialize, Serialize};

use super::controlnet::{UNIT_KEY, read_controlnet, unit_text};
use super::infotext::Infotext;
use super::keys::{PARAMETERS_KEY, RECIPE_KEY};
use crate::plan::{LoopSpec, Plan};
use crate::settings::{
    Choice, Curve, FINISHING_INFOTEXT, Finishing, ResizeMode, Sampler, ScheduleType, Settings,
    Size, TargetMode, ValueKind, py_bool, py_float,
};
use crate::{Error, Result};

pub use super::controlnet::ControlNetRecord;

/// The model a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The model's name (preset, folder or file name).
    pub name: String,
    /// A1111's short hash: the first 10 hex digits of the checkpoint's SHA-256, if known.
    pub hash: Option<String>,
    /// The replacement VAE, if one was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<VaeInfo>,
    /// The precision the UNet computed in (`f32`, `bf16` or `f16`; `--precision`), where
    /// known. Recorded in the recipe only: A1111's infotext has no key for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

/// A replacement VAE a run used (A1111's `VAE hash` and `VAE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaeInfo {
    /// The VAE's name (file stem or folder name).
    pub name: String,
    /// A1111's short hash of its weights file, if known.
    pub hash: Option<String>,
}

/// A LoRA merged into the model for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraRecord {
    /// Its name (the file name without `.safetensors`, as in a `<lora:NAME:…>` tag).
    pub name: String,
    /// Its multiplier.
    pub weight: f64,
    /// A1111's short LoRA hash (12 hex digits of the SHA-256 of the tensor data), if known.
    pub hash: Option<String>,
}

/// A textual-inversion embedding a run's prompts used (A1111's `TI hashes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingRecord {
    /// Its name (the file name without extension, as written in the prompt).
    pub name: String,
    /// A1111's short hash (12 hex digits of the file's SHA-256).
    pub hash: String,
}

/// Everything needed to reproduce a run: settings, the resolved seed, the model and the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// The app and version that wrote it, e.g. `loopback-scaler 0.1.0`.
    pub app: String,
    /// Every setting, as set (the seed setting may be −1).
    pub settings: Settings,
    /// The seed of the first loop, resolved.
    pub seed: u32,
    /// The model, when one ran.
    pub model: Option<ModelInfo>,
    /// The size the first loop started from.
    pub start: Size,
    /// The final size.
    #[serde(rename = "final")]
    pub final_size: Size,
    /// Every loop's size, denoise, seed and steps.
    pub loops: Vec<LoopSpec>,
    /// The LoRAs merged into the model, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRecord>,
    /// The textual-inversion embeddings the prompts used, in order of first use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<EmbeddingRecord>,
    /// The ControlNet that guided the loops, when one did (set by the engine, which knows
    /// its file and hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlnet: Option<ControlNetRecord>,
}

impl Recipe {
    /// The recipe of a run of `settings` along `plan`.
    pub fn new(settings: &Settings, plan: &Plan, model: Option<ModelInfo>) -> Self {
        Recipe {
            app: format!("{} {}", crate::APP_NAME, crate::APP_VERSION),
            settings: settings.clone(),
            seed: plan.loops.first().map_or(0, |l| l.seed),
            model,
            start: plan.start,
            final_size: plan.final_size,
            loops: plan.loops.clone(),
            loras: Vec::new(),
            embeddings: Vec::new(),
            controlnet: None,
        }
    }

    /// The A1111 infotext: A1111's keys in A1111's order, then the script's and this app's.
    pub fn to_infotext(&self) -> Infotext {
        let s = &self.settings;
        let mut params: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| params.push((k.to_string(), v));
        push("Steps", s.steps.to_string());
        // A1111 ≥ 1.9: the sampler, then its schedule unless that is the model's own.
        let sampler = match s.sampler {
            Sampler::DpmPp2mKarras => Sampler::DpmPp2m,
            other => other,
        };
        push("Sampler", sampler.label().into());
        match (s.schedule, s.sampler.schedule(s.schedule)) {
            (ScheduleType::Automatic, ScheduleType::Uniform) => {}
            (_, resolved) => push("Schedule type", resolved.label().into()),
        }
        push("CFG scale", py_float(s.cfg));
        push("Seed", self.seed.to_string());
        push("Size", self.final_size.to_string());
        if let Some(model) = &self.model {
            if let Some(hash) = &model.hash {
                push("Model hash", hash.clone());
            }
            push("Model", model.name.clone());
            if let Some(vae) = &model.vae {
                if let Some(hash) = &vae.hash {
                    push("VAE hash", hash.clone());
                }
                push("VAE", vae.name.clone());
            }
        }
        push("Denoising strength", py_float(s.denoise));
        // A1111 writes these only when they differ from its defaults.
        if s.clip_skip > 1 {
            push("Clip skip", s.clip_skip.to_string());
        }
        if let Some(unit) = self.controlnet_unit() {
            push(UNIT_KEY, unit);
        }
        if let Some(hashes) = self.lora_hashes() {
            push("Lora hashes", hashes);
        }
        if let Some(hashes) = self.ti_hashes() {
            push("TI hashes", hashes);
        }
        if s.pad_conds {
            push("Pad conds", py_bool(true).into());
        }
        push(
            "Denoising strength change factor",
            py_float(s.denoise_change),
        );
        push("Dimension increment factor", py_float(s.adaptive_factor));
        for (key, value) in s.finishing().infotext_pairs() {
            push(key, value);
        }
        push("Loopback loops", s.loops.to_string());
        push("Loopback curve", s.curve.label().into());
        match s.target_mode {
            TargetMode::MaxSize => push(
                "Loopback max size",
                format!("{}x{}", s.max_width, s.max_height),
            ),
            TargetMode::Scale => push("Loopback scale", py_float(s.scale)),
        }
        push("Loopback start size", self.start.to_string());
        push("Resize mode", s.resize_mode.label().into());
        push("Color correction", py_bool(s.color_correction).into());
        push(
            "Version",
            format!("{} v{}", crate::APP_NAME, crate::APP_VERSION),
        );
        Infotext {
            prompt: s.prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            params,
        }
    }

    /// The sd-webui-controlnet extension's `ControlNet 0` value, e.g. `Module: tile_resample,
    /// Model: control_v11f1e_sd15_tile [a371b31b], Weight: 0.8, …`; `None` without a
    /// ControlNet (no record, or the setting empty).
    pub fn controlnet_unit(&self) -> Option<String> {
        let record = self.controlnet.as_ref()?;
        (!self.settings.controlnet.is_empty()).then(|| unit_text(&self.settings, record))
    }

    /// A1111's `Lora hashes` value, `name: hash, name2: hash2` (names without `:` and `,`,
    /// as A1111 writes them); `None` when no LoRA has a hash.
    pub fn lora_hashes(&self) -> Option<String> {
        let parts: Vec<String> = self
            .loras
            .iter()
            .filter_map(|l| {
                let name: String = l.name.chars().filter(|c| !matches!(c, ':' | ',')).collect();
                l.hash.as_ref().map(|h| format!("{name}: {h}"))
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// A1111's `TI hashes` value, `name: hash, name2: hash2` (names without `:` and `,`, as
    /// A1111 writes them); `None` when no embedding was used.
    pub fn ti_hashes(&self) -> Option<String> {
        let parts: Vec<String> = self
            .embeddings
            .iter()
            .map(|e| {
                let name: String = e.name.chars().filter(|c| !matches!(c, ':' | ',')).collect();
                format!("{name}: {}", e.hash)
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// The recipe as PNG texts: `parameters` (A1111 infotext) and `loopback-scaler` (JSON).
    pub fn png_texts(&self) -> Vec<(String, String)> {
        vec![
            (PARAMETERS_KEY.to_string(), self.to_infotext().to_text()),
            (RECIPE_KEY.to_string(), self.to_json()),
        ]
    }

    /// The recipe as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a recipe written by [`Recipe::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        let recipe: Recipe = serde_json::from_str(text)
            .map_err(|e| Error::Metadata(format!("not a valid {RECIPE_KEY} recipe: {e}")))?;
        recipe.settings.validate()?;
        Ok(recipe)
    }
}

/// Settings from an image's texts: the app's recipe when present (exact), else A1111's
/// `parameters`, else what ComfyUI, InvokeAI or NovelAI wrote (the first warning then says
/// which tool and what was taken). Returns `None` when none is there; the strings are
/// warnings about values that could not be taken over.
pub fn settings_from_texts(texts: &[(String, String)]) -> Option<(Settings, Vec<String>)> {
    let find = |key: &str| {
        texts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(recipe) = find(RECIPE_KEY).and_then(|json| Recipe::from_json(json).ok()) {
        let mut settings = recipe.settings;
        settings.seed = i64::from(recipe.seed);
        return Some((settings, Vec::new()));
    }
    find(PARAMETERS_KEY)
        .map(|text| settings_from_infotext(&Infotext::parse(text)))
        .or_else(|| super::other_tools::settings_from_other_tools(texts))
}

/// The textual-inversion embeddings an image's texts say its prompts used: the recipe's, else
/// the names in A1111's `TI hashes` (`name: hash, name2: hash2`).
pub fn embeddings_named(texts: &[(String, String)]) -> Vec<String> {
    let find = |key: &str| {
        texts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(recipe) = find(RECIPE_KEY).and_then(|json| Recipe::from_json(json).ok()) {
        return recipe.embeddings.into_iter().map(|e| e.name).collect();
    }
    let Some(info) = find(PARAMETERS_KEY).map(Infotext::parse) else {
        return Vec::new();
    };
    info.get("TI hashes")
        .map(|v| {
            v.split(',')
                .filter_map(|pair| pair.split_once(':'))
                .map(|(name, _)| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Settings from an A1111 infotext: prompt, negative prompt, sampler, steps, CFG, seed and
/// denoise, the ControlNet unit (`ControlNet 0` as the sd-webui-controlnet extension writes
/// it, or its older separate keys), plus the loopback keys this app and the original script
/// write. Everything else keeps its default; values
/// that cannot be used are reported as warnings.
pub fn settings_from_infotext(info: &Infotext) -> (Settings, Vec<String>) {
    let mut s = Settings {
        prompt: info.prompt.clone(),
        negative_prompt: info.negative_prompt.clone(),
        ..Settings::default()
    };
    let mut finishing = s.finishing();
    let mut warnings = Vec::new();
    let mut take = |key: &str, apply: &mut dyn FnMut(&str) -> bool| {
        if let Some(value) = info.get(key)
            && !apply(value)
        {
            warnings.push(format!("ignored {key}: {value:?}"));
        }
    };
    take("Steps", &mut |v| parse_into(v, &mut s.steps));
    take("CFG scale", &mut |v| parse_into(v, &mut s.cfg));
    take("Seed", &mut |v| parse_into(v, &mut s.seed));
    take("Denoising strength", &mut |v| parse_into(v, &mut s.denoise));
    take("Clip skip", &mut |v| {
        let mut skip = 0u32;
        let ok = parse_into(v, &mut skip) && (1..=12).contains(&skip);
        if ok {
            s.clip_skip = skip;
        }
        ok
    });
    take("Pad conds", &mut |v| bool_into(v, &mut s.pad_conds));
    take("Denoising strength change factor", &mut |v| {
        parse_into(v, &mut s.denoise_change)
    });
    take("Dimension increment factor", &mut |v| {
        parse_into(v, &mut s.adaptive_factor)
    });
    // Each kind of finishing value right after A1111's keys of that kind and before the
    // loopback script's (the order the warnings come in).
    take_finishing(&mut take, &mut finishing, ValueKind::Number);
    take("Loopback loops", &mut |v| parse_into(v, &mut s.loops));
    take_finishing(&mut take, &mut finishing, ValueKind::Choice);
    take("Loopback curve", &mut |v| {
        choice_into::<Curve>(v, &mut s.curve)
    });
    take("Resize mode", &mut |v| {
        choice_into::<ResizeMode>(v, &mut s.resize_mode)
    });
    take_finishing(&mut take, &mut finishing, ValueKind::Toggle);
    take("Color correction", &mut |v| {
        bool_into(v, &mut s.color_correction)
    });
    take("Loopback max size", &mut |v| match v.parse::<Size>() {
        Ok(size) => {
            (s.target_mode, s.max_width, s.max_height) =
                (TargetMode::MaxSize, size.width, size.height);
            true
        }
        Err(_) => false,
    });
    take("Loopback scale", &mut |v| {
        s.target_mode = TargetMode::Scale;
        parse_into(v, &mut s.scale)
    });
    // `Sampler: DPM++ 2M, Schedule type: Karras` (A1111 ≥ 1.9) or `Sampler: DPM++ 2M Karras`.
    let mut named_schedule = None;
    take("Sampler", &mut |v| match Sampler::parse_a1111(v) {
        Some((sampler, schedule)) => {
            s.sampler = sampler;
            named_schedule = schedule;
            true
        }
        None => false,
    });
    take("Schedule type", &mut |v| match ScheduleType::parse(v) {
        Some(schedule) => {
            named_schedule = Some(schedule);
            true
        }
        None => false,
    });
    match (s.sampler, named_schedule) {
        // The old combined name, which recipes of earlier versions hold.
        (Sampler::DpmPp2m, Some(ScheduleType::Karras)) => s.sampler = Sampler::DpmPp2mKarras,
        (_, Some(schedule)) => s.schedule = schedule,
        (_, None) => {}
    }
    s.set_finishing(&finishing);
    read_controlnet(info, &mut s, &mut warnings);
    let s = super::validate::keep_valid(s, &mut warnings);
    (s, warnings)
}

/// Reads the finishing settings of `kind` ([`FINISHING_INFOTEXT`], in the infotext's order)
/// into `finishing` through `take`.
fn take_finishing(
    take: &mut impl FnMut(&str, &mut dyn FnMut(&str) -> bool),
    finishing: &mut Finishing,
    kind: ValueKind,
) {
    for field in FINISHING_INFOTEXT.iter().filter(|f| f.kind == kind) {
        take(field.key, &mut |v| (field.read)(finishing, v));
    }
}

fn parse_into<T: std::str::FromStr>(text: &str, target: &mut T) -> bool {
    match text.trim().parse() {
        Ok(v) => {
            *target = v;
            true
        }
        Err(_) => false,
    }
}

fn choice_into<T: Choice>(text: &str, target: &mut T) -> bool {
    match T::parse(text) {
        Some(v) => {
            *target = v;
            true
        }
        None => false,
    }
}

fn bool_into(text: &str, target: &mut bool) -> bool {
    match text.trim() {
        "True" | "true" => *target = true,
        "False" | "false" => *target = false,
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests;
