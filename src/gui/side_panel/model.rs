//! The Model section: preset, local model, folder or checkpoint file; replacement VAE; LoRAs;
//! the device; and the load status.

use loopback_engine::load::hub::Preset;

use loopback_engine::load::library::{Entry, Kind, human_bytes};

use super::super::command::{Command, Commands, FileTarget};
use super::super::model::is_wanted;
use super::super::state::LoraChoice;
use super::super::state::{Persisted, Session};

/// The device choices (what `--device` takes).
const DEVICES: [(&str, &str); 4] = [
    ("auto", "Auto (GPU when there is one)"),
    ("cpu", "CPU"),
    ("cuda", "CUDA GPU"),
    ("metal", "Apple GPU (Metal)"),
];

/// The precision choices (what `--precision` takes).
const PRECISIONS: [(&str, &str); 4] = [
    (
        "auto",
        "Auto (f16 on a GPU; bf16 on a CPU with AMX, else f32)",
    ),
    ("f32", "f32"),
    ("f16", "f16 (half the memory)"),
    ("bf16", "bf16 (faster on CPUs with AMX)"),
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
            ui.weak("Your models (models/, Hugging Face cache)");
            let mut any = false;
            for entry in session
                .library
                .iter()
                .filter(|e| matches!(e.kind, Kind::Checkpoint | Kind::Diffusers))
            {
                any = true;
                // Folders directly in models/ go by name; files and cached models by path.
                let value = if entry.kind == Kind::Diffusers && !entry.in_hf_cache {
                    entry.name.clone()
                } else {
                    entry.path.display().to_string()
                };
                ui.selectable_value(&mut persisted.model, value, &entry.name)
                    .on_hover_text(describe(entry));
            }
            if !any {
                ui.weak("none found");
            }
        })
        .response
        .on_hover_text(
            "A preset, a model in models/, a diffusers folder or a .safetensors checkpoint",
        );
    ui.horizontal(|ui| {
        let label = ui.label("Path");
        ui.add(egui::TextEdit::singleline(&mut persisted.model).desired_width(170.0))
            .labelled_by(label.id)
            .on_hover_text("A preset name, a name in models/, a diffusers folder or a checkpoint");
        if ui
            .add_enabled(!session.dialog_open, egui::Button::new("Folder…"))
            .on_hover_text("Choose a diffusers folder")
            .clicked()
        {
            commands.push(Command::BrowseModel);
        }
        if ui
            .add_enabled(!session.dialog_open, egui::Button::new("File…"))
            .on_hover_text("Choose a single-file .safetensors checkpoint (SD 1.x, 2.x, SDXL)")
            .clicked()
        {
            commands.push(Command::BrowseFile(FileTarget::Checkpoint));
        }
        if ui
            .button("Rescan")
            .on_hover_text("Look for local models again")
            .clicked()
        {
            commands.push(Command::RefreshModels);
        }
    });
    vae_ui(ui, persisted, session, commands);
    lora_ui(ui, persisted, session, commands);
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
    let precision = PRECISIONS
        .iter()
        .find(|(key, _)| *key == persisted.precision)
        .map_or(persisted.precision.as_str(), |(_, label)| label)
        .to_string();
    egui::ComboBox::from_label("Precision")
        .selected_text(precision)
        .show_ui(ui, |ui| {
            for (key, label) in PRECISIONS {
                ui.selectable_value(&mut persisted.precision, key.to_string(), label);
            }
        })
        .response
        .on_hover_text(
            "Weights and compute: f16 halves the weights' memory; on the CPU, f16 runs the \
             GPU's generic code, slower than the CPU's own f32 kernels",
        );
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
            if is_wanted(persisted, &session.model.wanted, spec, device) =>
        {
            let mut text = format!("{} loaded ({device})", model.name);
            if let Some(hash) = &model.hash {
                text.push_str(&format!(", hash {hash}"));
            }
            if let Some(vae) = &model.vae {
                text.push_str(&format!(", VAE {}", vae.name));
            }
            if !model.loras.is_empty() {
                text.push_str(&format!(", {} LoRA(s)", model.loras.len()));
            }
            if let Some(controlnet) = &model.controlnet {
                text.push_str(&format!(", ControlNet {}", controlnet.name));
            }
            ui.label(text);
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

/// A library entry's family, size, hash and place, for hover texts.
pub(super) fn describe(entry: &Entry) -> String {
    let mut text = format!(
        "{}, {}",
        entry.family.as_deref().unwrap_or("family unknown"),
        human_bytes(entry.bytes)
    );
    if let Some(hash) = &entry.hash {
        text.push_str(&format!(", hash {hash}"));
    }
    text.push('\n');
    text.push_str(&entry.path.display().to_string());
    text
}

/// The replacement VAE: the model's own, one found in `models/VAE`, or a file.
fn vae_ui(
    ui: &mut egui::Ui,
    persisted: &mut Persisted,
    session: &Session,
    commands: &mut Commands,
) {
    ui.horizontal(|ui| {
        let shown = if persisted.vae.trim().is_empty() {
            "Model's own".to_string()
        } else {
            short_name(&persisted.vae)
        };
        egui::ComboBox::from_label("VAE")
            .selected_text(shown)
            .width(150.0)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut persisted.vae, String::new(), "Model's own");
                for entry in session.library.iter().filter(|e| e.kind == Kind::Vae) {
                    ui.selectable_value(
                        &mut persisted.vae,
                        entry.path.display().to_string(),
                        &entry.name,
                    )
                    .on_hover_text(describe(entry));
                }
            })
            .response
            .on_hover_text("A replacement VAE (recorded in the metadata with its hash)");
        if ui
            .add_enabled(!session.dialog_open, egui::Button::new("File…"))
            .on_hover_text("Choose a VAE .safetensors file")
            .clicked()
        {
            commands.push(Command::BrowseFile(FileTarget::Vae));
        }
    });
}

/// The picked LoRAs with their weights, and adding one (from `models/Lora` or a file).
/// Prompt tags `<lora:NAME:WEIGHT>` work too.
fn lora_ui(
    ui: &mut egui::Ui,
    persisted: &mut Persisted,
    session: &Session,
    commands: &mut Commands,
) {
    for (index, lora) in persisted.loras.iter_mut().enumerate() {
        ui.horizontal(|ui| {
            ui.label(short_name(&lora.path.display().to_string()))
                .on_hover_text(lora.path.display().to_string());
            ui.add(
                egui::DragValue::new(&mut lora.weight)
                    .speed(0.01)
                    .range(-2.0..=2.0),
            )
            .on_hover_text("LoRA weight (1 = as trained)");
            if ui.small_button("×").on_hover_text("Remove").clicked() {
                commands.push(Command::RemoveLora(index));
            }
        });
    }
    ui.horizontal(|ui| {
        let mut added: Option<std::path::PathBuf> = None;
        egui::ComboBox::from_id_salt("add-lora")
            .selected_text("Add LoRA")
            .width(150.0)
            .show_ui(ui, |ui| {
                let found: Vec<&Entry> = session
                    .library
                    .iter()
                    .filter(|e| e.kind == Kind::Lora)
                    .collect();
                if found.is_empty() {
                    ui.weak("none in models/Lora");
                }
                for entry in found {
                    if ui
                        .selectable_label(false, &entry.name)
                        .on_hover_text(describe(entry))
                        .clicked()
                    {
                        added = Some(entry.path.clone());
                    }
                }
            })
            .response
            .on_hover_text("LoRAs are merged into the model at load; <lora:NAME:WEIGHT> in the prompt works too");
        if let Some(path) = added {
            persisted.loras.push(LoraChoice { path, weight: 1.0 });
        }
        if ui
            .add_enabled(!session.dialog_open, egui::Button::new("File…"))
            .on_hover_text("Choose a LoRA .safetensors file")
            .clicked()
        {
            commands.push(Command::BrowseFile(FileTarget::Lora));
        }
    });
}

/// A file's stem (or the text itself when it has none), for compact labels.
pub(super) fn short_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}
