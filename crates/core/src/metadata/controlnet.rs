//! ControlNet in A1111's infotext, as the sd-webui-controlnet extension writes and reads it.
//!
//! The extension writes each enabled unit as one pair `ControlNet N: "Module: …, Model: …, …"`
//! (N from 0), the unit's fields `Key: value` joined by `, ` and the whole value quoted by
//! A1111. [`unit_text`] writes this app's one unit as the extension (v1.1.45x) does: its 11
//! fields, always, floats as Python writes them. Reading ([`read_controlnet`]) takes unit 0
//! (or the first unit present; further ones are reported and ignored), in this form or in the
//! older ones: numeric resize and control modes (files written through the API), hidden
//! sliders left out, and the separate keys `ControlNet Module`, `ControlNet Model`, …
//! (`ControlNet-N Module`, … for several units) of the first versions.

use serde::{Deserialize, Serialize};

use super::infotext::Infotext;
use crate::settings::{
    Choice, Control, ControlMode, ControlPreprocess, ResizeMode, Settings, py_bool, py_float,
};

/// The ControlNet model a run used, as the extension names it (`name [hash]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlNetRecord {
    /// Its name: the file stem, or the folder name of a diffusers folder.
    pub name: String,
    /// The extension's model hash (8 hex digits, A1111's legacy hash of the weights file),
    /// if known.
    pub hash: Option<String>,
}

/// The extension's `Processor Res` where the preprocessor does not set it (its default).
const PROCESSOR_RES: u32 = 512;

/// The extension's value of a hidden preprocessor slider (`Threshold A` or `B`).
const HIDDEN_SLIDER: f64 = 0.5;

/// The infotext key of this app's unit.
pub(super) const UNIT_KEY: &str = "ControlNet 0";

/// The extension's unit text for the ControlNet of `s`, named by `record`, e.g.
/// `Module: tile_resample, Model: control_v11f1e_sd15_tile [a371b31b], Weight: 0.8, Resize
/// Mode: Crop and Resize, Processor Res: 512, Threshold A: 1.0, Threshold B: 0.5, Guidance
/// Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced`.
///
/// As the extension: `Threshold A` is tile_resample's down-sampling rate and the other
/// sliders, unused, hold their defaults. `,` and `:` are left out of the model's name and
/// hash (the extension writes no unit whose values hold them).
pub(super) fn unit_text(s: &Settings, record: &ControlNetRecord) -> String {
    let threshold_a = match s.control_preprocess {
        ControlPreprocess::TileResample => s.control_resample_rate,
        ControlPreprocess::None => HIDDEN_SLIDER,
    };
    let fields = [
        ("Module", s.control_preprocess.label().to_owned()),
        ("Model", model_text(record)),
        ("Weight", py_float(s.control_weight)),
        ("Resize Mode", resize_mode_text(s.resize_mode).to_owned()),
        ("Processor Res", PROCESSOR_RES.to_string()),
        ("Threshold A", py_float(threshold_a)),
        ("Threshold B", py_float(HIDDEN_SLIDER)),
        ("Guidance Start", py_float(s.control_start)),
        ("Guidance End", py_float(s.control_end)),
        ("Pixel Perfect", py_bool(false).to_owned()),
        ("Control Mode", s.control_mode.label().to_owned()),
    ];
    let pairs: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    pairs.join(", ")
}

/// `name [hash]`, or `name` without a hash, without `,` and `:`.
fn model_text(record: &ControlNetRecord) -> String {
    let clean = |s: &str| -> String { s.chars().filter(|c| !matches!(c, ',' | ':')).collect() };
    match &record.hash {
        Some(hash) => format!("{} [{}]", clean(&record.name), clean(hash)),
        None => clean(&record.name),
    }
}

/// The extension's name of a resize mode.
fn resize_mode_text(mode: ResizeMode) -> &'static str {
    match mode {
        ResizeMode::JustResize => "Just Resize",
        ResizeMode::CropAndResize => "Crop and Resize",
        ResizeMode::ResizeAndFill => "Resize and Fill",
    }
}

/// The `Key: value` fields of a unit text, in order, keys and values trimmed.
///
/// Fields are split at `, `; a piece without `: ` continues the value before it (so a model
/// name holding `, ` stays whole). `None` when the text does not start with a field.
pub(super) fn parse_unit(text: &str) -> Option<Vec<(String, String)>> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for piece in text.split(", ") {
        match (piece.split_once(": "), fields.last_mut()) {
            (Some((key, value)), _) => fields.push((key.trim().into(), value.trim().into())),
            (None, Some((_, value))) => {
                value.push_str(", ");
                value.push_str(piece.trim_end());
            }
            (None, None) if piece.trim().is_empty() => {}
            (None, None) => return None,
        }
    }
    Some(fields)
}

/// One ControlNet unit found in an infotext.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unit {
    /// How warnings name it: `ControlNet 0`, or for the old separate keys `ControlNet` or
    /// `ControlNet-1`.
    label: String,
    /// Its number (0 for the old unnumbered keys).
    index: u32,
    /// Its fields, `("Weight", "0.6")`; `None` when its text could not be split into fields.
    fields: Option<Vec<(String, String)>>,
}

impl Unit {
    /// The value of `field` (the last one if repeated).
    fn get(&self, field: &str) -> Option<&str> {
        let fields = self.fields.as_ref()?;
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a parameter key puts its value: a whole unit (`ControlNet 0`) or one field of an old
/// unit (`ControlNet Module`, `ControlNet-1 Weight`).
#[derive(Debug, PartialEq, Eq)]
enum UnitKey<'a> {
    /// `ControlNet N`: the value is the unit text.
    Whole(u32),
    /// `ControlNet FIELD` (`index` 0, `numbered` false) or `ControlNet-N FIELD`.
    Field {
        /// The unit's number.
        index: u32,
        /// Whether the key names the number (`ControlNet-N`).
        numbered: bool,
        /// The field, e.g. `Guidance Start`.
        field: &'a str,
    },
}

/// What a parameter key says of a ControlNet unit; `None` for other keys.
fn unit_key(key: &str) -> Option<UnitKey<'_>> {
    let rest = key.strip_prefix("ControlNet")?;
    if let Some(rest) = rest.strip_prefix(' ') {
        return Some(match number(rest) {
            Some(index) => UnitKey::Whole(index),
            None => UnitKey::Field {
                index: 0,
                numbered: false,
                field: rest,
            },
        });
    }
    let (index, field) = rest.strip_prefix('-')?.split_once(' ')?;
    Some(UnitKey::Field {
        index: number(index)?,
        numbered: true,
        field,
    })
}

/// A unit number: ASCII digits only.
fn number(text: &str) -> Option<u32> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())
        .flatten()
}

/// Every ControlNet unit of `info`, in the order they first appear.
fn units(info: &Infotext) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    for (key, value) in &info.params {
        let Some(found) = unit_key(key) else {
            continue;
        };
        let (label, index) = match found {
            UnitKey::Whole(index) => (key.clone(), index),
            UnitKey::Field {
                index, numbered, ..
            } => (old_label(index, numbered), index),
        };
        let position = match units.iter().position(|u| u.label == label) {
            Some(position) => position,
            None => {
                units.push(Unit {
                    label,
                    index,
                    fields: Some(Vec::new()),
                });
                units.len() - 1
            }
        };
        let unit = &mut units[position];
        match found {
            UnitKey::Whole(_) => unit.fields = parse_unit(value),
            UnitKey::Field { field, .. } => {
                if let Some(fields) = &mut unit.fields {
                    fields.push((field.to_owned(), value.clone()));
                }
            }
        }
    }
    units
}

/// How warnings name an old unit: `ControlNet` or `ControlNet-N`.
fn old_label(index: u32, numbered: bool) -> String {
    if numbered {
        format!("ControlNet-{index}")
    } else {
        "ControlNet".to_owned()
    }
}

/// Reads the ControlNet of `info` into `s`: unit 0 if there is one, else the first unit.
///
/// From the unit: `Model` (without its ` [hash]`) becomes `controlnet`; `Weight`,
/// `Guidance Start` and `Guidance End` the control weight, start and end; `Control Mode` (a
/// label, or 0, 1, 2 as the API writes it) the control mode; `Module` the preprocessor
/// (`none` or `tile_resample`, whose `Threshold A` is the resample rate). Other fields (resize
/// mode, processor resolution, pixel perfect, …) are not settings of this app's ControlNet.
/// Every value that cannot be used, any other module, and every further unit is reported in
/// `warnings`; the setting keeps its value.
pub(super) fn read_controlnet(info: &Infotext, s: &mut Settings, warnings: &mut Vec<String>) {
    let units = units(info);
    let Some(chosen) = units
        .iter()
        .position(|u| u.index == 0)
        .or((!units.is_empty()).then_some(0))
    else {
        return;
    };
    for (i, unit) in units.iter().enumerate() {
        if i != chosen {
            warnings.push(format!(
                "ignored {}: only one ControlNet unit is used",
                unit.label
            ));
        }
    }
    read_unit(&units[chosen], s, warnings);
}

/// Reads one unit into `s` (see [`read_controlnet`]).
fn read_unit(unit: &Unit, s: &mut Settings, warnings: &mut Vec<String>) {
    match unit_model(unit) {
        Ok(name) => s.controlnet = name.to_owned(),
        Err(warning) => {
            warnings.push(warning);
            return;
        }
    }
    let mut warn = |field: &str, value: &str, why: &str| {
        warnings.push(format!("ignored {} {field}: {value:?}{why}", unit.label));
    };
    let mut take = |field: &str, apply: &mut dyn FnMut(&str) -> bool| {
        if let Some(value) = unit.get(field)
            && !apply(value)
        {
            warn(field, value, "");
        }
    };
    take("Weight", &mut |v| {
        float_into(v, "control_weight", &mut s.control_weight)
    });
    take("Guidance Start", &mut |v| {
        float_into(v, "control_start", &mut s.control_start)
    });
    take("Guidance End", &mut |v| {
        float_into(v, "control_end", &mut s.control_end)
    });
    take("Control Mode", &mut |v| match control_mode(v) {
        Some(mode) => {
            s.control_mode = mode;
            true
        }
        None => false,
    });
    read_module(unit, s, &mut warn);
}

/// The unit's model name, or the warning that says why the unit is ignored.
fn unit_model(unit: &Unit) -> Result<&str, String> {
    let label = &unit.label;
    if unit.fields.is_none() {
        return Err(format!("ignored {label}: not a ControlNet unit"));
    }
    let model = unit
        .get("Model")
        .ok_or_else(|| format!("ignored {label}: no model"))?;
    model_name(model).ok_or_else(|| format!("ignored {label} Model: {model:?} (no model)"))
}

/// Reads the unit's `Module` (and for tile_resample its `Threshold A`) into `s`; `warn` gets
/// the field, its value and why it was ignored.
fn read_module(unit: &Unit, s: &mut Settings, warn: &mut dyn FnMut(&str, &str, &str)) {
    let Some(module) = unit.get("Module") else {
        return;
    };
    match ControlPreprocess::parse(module) {
        Some(preprocess) => s.control_preprocess = preprocess,
        None => {
            warn("Module", module, " (only none and tile_resample)");
            s.control_preprocess = ControlPreprocess::None;
            return;
        }
    }
    if s.control_preprocess == ControlPreprocess::TileResample
        && let Some(rate) = unit.get("Threshold A")
        && !float_into(rate, "control_resample_rate", &mut s.control_resample_rate)
    {
        warn("Threshold A", rate, "");
    }
}

/// The model's name without the extension's ` [hash]` (8 or more hex digits in brackets);
/// `None` for no model (`None`, as the extension writes it, or empty).
fn model_name(model: &str) -> Option<&str> {
    let model = model.trim();
    let name = model
        .strip_suffix(']')
        .and_then(|rest| rest.rsplit_once(" ["))
        .filter(|(_, hash)| hash.len() >= 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or(model, |(name, _)| name.trim_end());
    (!name.is_empty() && name != "None").then_some(name)
}

/// A control mode: its label (or key), or the number the API writes (0, 1, 2).
fn control_mode(text: &str) -> Option<ControlMode> {
    match text.trim() {
        "0" => Some(ControlMode::Balanced),
        "1" => Some(ControlMode::Prompt),
        "2" => Some(ControlMode::ControlNet),
        other => ControlMode::parse(other),
    }
}

/// Sets `target` to the number in `text` if it lies in the range of the setting `key`;
/// `false` (leaving `target` as it is) otherwise.
fn float_into(text: &str, key: &str, target: &mut f64) -> bool {
    let Ok(value) = text.trim().parse::<f64>() else {
        return false;
    };
    let in_range = match Settings::field(key).map(|f| f.control) {
        Some(Control::Float { min, max, .. }) => (min..=max).contains(&value),
        _ => value.is_finite(),
    };
    if in_range {
        *target = value;
    }
    in_range
}

#[cfg(test)]
mod tests;
