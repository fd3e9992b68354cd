//! The ControlNet section: which ControlNet guides the loops (none, one found in
//! `models/ControlNet`, or a file or folder), then its weight, start and end, mode and
//! preprocessor from the settings definitions (the down-sampling rate only for the tile
//! preprocessor), and a warning when its family is not the model's.
//!
//! Picking one only edits the `controlnet` setting: the ControlNet is part of the model's
//! load key (`super::super::model::load_key`), so the next Run (or Load now) loads the model
//! again with it, on the loader's thread.

use loopback_core::settings::{ControlPreprocess, Group};
use loopback_engine::load::controlnet::Family;
use loopback_engine::load::hub::Preset;
use loopback_engine::load::library::{Entry, Kind};
use loopback_engine::model::arch::Arch;

use super::super::command::{Command, Commands, FileTarget};
use super::super::model::key_is_of_model;
use super::super::state::{Persisted, Session};
use super::fields;
use super::model::{describe, short_name};

/// Draws the ControlNet section.
pub fn ui(
    ui: &mut egui::Ui,
    persisted: &mut Persisted,
    session: &Session,
    commands: &mut Commands,
) {
    picker_ui(ui, persisted, session, commands);
    let chosen = persisted.settings.controlnet.trim().to_string();
    if chosen.is_empty() {
        ui.weak("No ControlNet: the loops are guided by the prompt only.");
    } else if let Some(hint) = family_hint(persisted, session, &chosen) {
        ui.colored_label(ui.visuals().warn_fg_color, hint);
    }
    let settings = &mut persisted.settings;
    let skip: &[&str] = if settings.control_preprocess == ControlPreprocess::TileResample {
        &["controlnet"]
    } else {
        &["controlnet", "control_resample_rate"]
    };
    ui.add_enabled_ui(!chosen.is_empty(), |ui| {
        fields::group_ui(ui, settings, Group::ControlNet, skip);
    });
}

/// The ControlNet picker ("None", then the library's ControlNets) and the File… and
/// Folder… buttons.
fn picker_ui(
    ui: &mut egui::Ui,
    persisted: &mut Persisted,
    session: &Session,
    commands: &mut Commands,
) {
    let controlnet = &mut persisted.settings.controlnet;
    let shown = match library_entry(session, controlnet) {
        _ if controlnet.trim().is_empty() => "None".to_string(),
        Some(entry) => entry.name.clone(),
        None => short_name(controlnet.trim()),
    };
    egui::ComboBox::from_label("ControlNet model")
        .selected_text(shown)
        .width(150.0)
        .show_ui(ui, |ui| {
            ui.selectable_value(controlnet, String::new(), "None");
            let mut any = false;
            for entry in session
                .library
                .iter()
                .filter(|e| e.kind == Kind::ControlNet)
            {
                any = true;
                ui.selectable_value(controlnet, entry.path.display().to_string(), &entry.name)
                    .on_hover_text(describe(entry));
            }
            if !any {
                ui.weak("none in models/ControlNet");
            }
        })
        .response
        .on_hover_text(
            "A ControlNet guides every loop with the loop's own input (e.g. ControlNet Tile); \
             it is loaded with the model, so another one loads the model again",
        );
    ui.horizontal(|ui| {
        for (label, target, hover) in [
            (
                "File…",
                FileTarget::ControlNet,
                "Choose a ControlNet file (.safetensors, .pth)",
            ),
            (
                "Folder…",
                FileTarget::ControlNetFolder,
                "Choose a diffusers ControlNet folder",
            ),
        ] {
            if ui
                .add_enabled(!session.dialog_open, egui::Button::new(label))
                .on_hover_text(hover)
                .clicked()
            {
                commands.push(Command::BrowseFile(target));
            }
        }
    });
}

/// The library's ControlNet that `spec` names (by path or by name).
fn library_entry<'a>(session: &'a Session, spec: &str) -> Option<&'a Entry> {
    let spec = spec.trim();
    session.library.iter().find(|e| {
        e.kind == Kind::ControlNet && (e.path.display().to_string() == spec || e.name == spec)
    })
}

/// A warning when the chosen ControlNet is for another family than the model: the loaded
/// model's when it is the chosen one, else what the preset or the library tells of the
/// chosen model. Nothing when either family is unknown (a ControlNet picked from a file
/// is not read here: the load checks it).
fn family_hint(persisted: &Persisted, session: &Session, chosen: &str) -> Option<String> {
    let entry = library_entry(session, chosen)?;
    let controlnet = entry.family.as_deref()?;
    let model = model_family(persisted, session)?;
    (model != controlnet).then(|| {
        format!(
            "{} is a ControlNet for {controlnet}, but the model is {model}: loading will \
             refuse it",
            entry.name
        )
    })
}

/// The family of the model the settings name, as far as it can be told without reading a
/// file.
fn model_family(persisted: &Persisted, session: &Session) -> Option<String> {
    if let Some((model, key, _)) = &session.model.loaded
        && key_is_of_model(persisted, key)
    {
        return Some(Family::of_unet(&model.model.files.unet).label());
    }
    let spec = persisted.model.trim();
    if let Some(preset) = Preset::parse(spec) {
        let family = match preset.arch() {
            Arch::Sd15 => "SD 1.x",
            Arch::Sd21 => "SD 2.x",
            Arch::Sdxl => "SDXL",
        };
        return Some(family.to_string());
    }
    session
        .library
        .iter()
        .find(|e| {
            matches!(e.kind, Kind::Checkpoint | Kind::Diffusers)
                && (e.path.display().to_string() == spec || e.name == spec)
        })
        .and_then(|e| e.family.clone())
}
