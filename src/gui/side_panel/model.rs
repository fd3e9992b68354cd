//! The Model section: preset, local folder or Browse…, the device, and the load status.

use crate::engine::hub::Preset;

use super::super::command::{Command, Commands};
use super::super::state::{Persisted, Session};

/// The device choices (what `--device` takes).
const DEVICES: [(&str, &str); 4] = [
    ("auto", "Auto (GPU when there is one)"),
    ("cpu", "CPU"),
    ("cuda", "CUDA GPU"),
    ("metal", "Apple GPU (Metal)"),
];

/// Draws the Model section.
pub fn ui(
    ui: &mut egui::Ui,
    persisted: &mut Persisted,
    session: &Session,
    commands: &mut Commands,
) {
    egui::ComboBox::from_label("Model")
        .selected_text(persisted.model.clone())
        .width(190.0)
        .show_ui(ui, |ui| {
            ui.weak("Presets (downloaded on first use)");
            for preset in Preset::ALL {
                ui.selectable_value(
                    &mut persisted.model,
                    preset.name().to_string(),
                    preset.name(),
                )
                .on_hover_text(preset.description());
            }
            ui.separator();
            ui.weak("Local folders (models/)");
            if session.local_models.is_empty() {
                ui.weak("none found");
            }
            for local in &session.local_models {
                ui.selectable_value(&mut persisted.model, local.name.clone(), &local.name)
                    .on_hover_text(local.path.display().to_string());
            }
        })
        .response
        .on_hover_text("A preset, a diffusers folder in models/, or any folder (Browse…)");
    ui.horizontal(|ui| {
        let label = ui.label("Path");
        ui.add(egui::TextEdit::singleline(&mut persisted.model).desired_width(170.0))
            .labelled_by(label.id)
            .on_hover_text("A preset name, a folder name in models/, or a diffusers folder");
        if ui
            .add_enabled(!session.dialog_open, egui::Button::new("Browse…"))
            .on_hover_text("Choose a diffusers folder")
            .clicked()
        {
            commands.push(Command::BrowseModel);
        }
        if ui
            .button("Rescan")
            .on_hover_text("Look for local models again")
            .clicked()
        {
            commands.push(Command::RefreshModels);
        }
    });
    let selected = DEVICES
        .iter()
        .find(|(key, _)| *key == persisted.device)
        .map_or(persisted.device.as_str(), |(_, label)| label)
        .to_string();
    egui::ComboBox::from_label("Device")
        .selected_text(selected)
        .show_ui(ui, |ui| {
            for (key, label) in DEVICES {
                ui.selectable_value(&mut persisted.device, key.to_string(), label);
            }
        });
    match (&session.model.loaded, &session.model.status) {
        (_, Some(status)) => {
            ui.horizontal_wrapped(|ui| {
                ui.spinner();
                ui.label(status);
            });
            if let Some(fraction) = session.model.download_fraction {
                ui.add(egui::ProgressBar::new(fraction).show_percentage());
            }
            if ui.button("Cancel download").clicked() {
                commands.push(Command::CancelModelLoad);
            }
        }
        (Some((model, spec, device)), None)
            if super::super::execute::same_model(persisted, spec, device) =>
        {
            ui.label(format!("{} loaded ({device})", model.name));
        }
        _ => {
            ui.horizontal(|ui| {
                ui.weak("Not loaded; Run loads it.");
                if ui.button("Load now").clicked() {
                    commands.push(Command::LoadModel);
                }
            });
        }
    }
}
