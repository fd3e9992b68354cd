//! Controls generated from the settings definitions ([`FIELDS`]): a slider for each number
//! (its range, step and default from the definition), a combo box for each choice, a text box
//! for each text, a checkbox for each toggle; the help text is the tooltip. Right-click a
//! control to put it back to its default.
//!
//! The settings are edited through their serde form (one JSON object keyed like [`FIELDS`]),
//! so a new setting in the table gets its control without any code here.

use egui::{DragValue, Slider, TextEdit};
use serde_json::{Map, Value};

use loopback_core::settings::{Control, FIELDS, FieldDef, Group, Settings};

/// Draws the controls of every setting of `group` except those in `skip`; returns whether a
/// setting changed.
pub fn group_ui(ui: &mut egui::Ui, settings: &mut Settings, group: Group, skip: &[&str]) -> bool {
    let keys: Vec<&str> = FIELDS
        .iter()
        .filter(|f| f.group == group && !skip.contains(&f.key))
        .map(|f| f.key)
        .collect();
    keys_ui(ui, settings, &keys)
}

/// Draws the controls of the settings named by `keys`, in that order.
pub fn keys_ui(ui: &mut egui::Ui, settings: &mut Settings, keys: &[&str]) -> bool {
    let Ok(Value::Object(mut map)) = serde_json::to_value(&*settings) else {
        return false;
    };
    let mut changed = false;
    for key in keys {
        let Some(def) = Settings::field(key) else {
            continue;
        };
        if let Some(value) = map.get_mut(def.key) {
            changed |= field_ui(ui, def, value);
        }
    }
    if changed && let Ok(updated) = serde_json::from_value::<Settings>(Value::Object(map)) {
        *settings = updated;
    }
    changed
}

/// The default value of the setting `key`, in serde form.
fn default_value(key: &str) -> Option<Value> {
    match serde_json::to_value(Settings::default()) {
        Ok(Value::Object(mut map)) => map.remove(key),
        _ => None,
    }
}

/// Decimals to show for a slider step.
fn decimals(step: f64) -> usize {
    let mut decimals = 0;
    let mut scaled = step;
    while decimals < 4 && (scaled - scaled.round()).abs() > 1e-9 {
        scaled *= 10.0;
        decimals += 1;
    }
    decimals
}

/// One setting's control; returns whether the value changed.
pub fn field_ui(ui: &mut egui::Ui, def: &FieldDef, value: &mut Value) -> bool {
    let help = def.help.trim();
    let response = match def.control {
        Control::Int { min, max, step } => {
            let mut v = value.as_i64().unwrap_or(min).clamp(min, max);
            let response = if max - min > 100_000 {
                ui.horizontal(|ui| {
                    let label = ui.label(def.label);
                    ui.add(DragValue::new(&mut v).range(min..=max))
                        .labelled_by(label.id)
                })
                .inner
            } else {
                ui.add(
                    Slider::new(&mut v, min..=max)
                        .step_by(step as f64)
                        .text(def.label),
                )
            };
            if response.changed() {
                *value = Value::from(v);
            }
            response
        }
        Control::Float { min, max, step } => {
            let mut v = value.as_f64().unwrap_or(min).clamp(min, max);
            let response = ui.add(
                Slider::new(&mut v, min..=max)
                    .step_by(step)
                    .fixed_decimals(decimals(step))
                    .text(def.label),
            );
            if response.changed() {
                *value = Value::from(v);
            }
            response
        }
        Control::Choice { options } => {
            let options = options();
            let current = value.as_str().unwrap_or_default().to_string();
            let selected = options
                .iter()
                .find(|(key, _)| *key == current)
                .map_or(current.as_str(), |(_, label)| label)
                .to_string();
            let mut picked = None;
            let inner = egui::ComboBox::from_label(def.label)
                .selected_text(selected)
                .show_ui(ui, |ui| {
                    for (key, label) in &options {
                        if ui.selectable_label(*key == current, *label).clicked() {
                            picked = Some(*key);
                        }
                    }
                });
            let mut response = inner.response;
            if let Some(key) = picked
                && key != current
            {
                *value = Value::from(key);
                response.mark_changed();
            }
            response
        }
        Control::Text { multiline } => {
            let mut text = value.as_str().unwrap_or_default().to_string();
            let label = ui.label(def.label);
            let edit = if multiline {
                TextEdit::multiline(&mut text).desired_rows(2)
            } else {
                TextEdit::singleline(&mut text)
            };
            let response = ui
                .add(edit.desired_width(f32::INFINITY).hint_text(def.label))
                .labelled_by(label.id);
            if response.changed() {
                *value = Value::from(text);
            }
            response
        }
        Control::Toggle => {
            let mut on = value.as_bool().unwrap_or(false);
            let response = ui.checkbox(&mut on, def.label);
            if response.changed() {
                *value = Value::from(on);
            }
            response
        }
        Control::Size { min, max, multiple } => size_ui(ui, def, value, min, max, multiple),
    };
    let mut changed = response.changed();
    response.on_hover_text(help).context_menu(|ui| {
        if ui.button("Reset to default").clicked() {
            if let Some(default) = default_value(def.key) {
                *value = default;
                changed = true;
            }
            ui.close();
        }
    });
    changed
}

/// An optional width × height: "automatic" or two numbers, each a multiple of `multiple`.
fn size_ui(
    ui: &mut egui::Ui,
    def: &FieldDef,
    value: &mut Value,
    min: u32,
    max: u32,
    multiple: u32,
) -> egui::Response {
    let side = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_u64)
            .map_or(512, |v| v as u32)
    };
    let mut automatic = value.is_null();
    let (mut width, mut height) = (side("width"), side("height"));
    ui.horizontal_wrapped(|ui| {
        let mut response = ui.checkbox(&mut automatic, format!("{}: automatic", def.label));
        if !automatic {
            let w = ui.add(
                DragValue::new(&mut width)
                    .range(min..=max)
                    .speed(multiple as f64)
                    .prefix("w "),
            );
            ui.label("×");
            let h = ui.add(
                DragValue::new(&mut height)
                    .range(min..=max)
                    .speed(multiple as f64)
                    .prefix("h "),
            );
            if w.changed() || h.changed() {
                response.mark_changed();
            }
        }
        if response.changed() {
            let round = |v: u32| (v / multiple * multiple).clamp(min, max);
            *value = if automatic {
                Value::Null
            } else {
                let mut map = Map::new();
                map.insert("width".into(), Value::from(round(width)));
                map.insert("height".into(), Value::from(round(height)));
                Value::Object(map)
            };
        }
        response
    })
    .inner
}
