//! The bar at the top: open, paste, run/cancel, save, reset, theme; and the progress row.

use super::command::{Command, Commands};
use super::progress;
use super::state::{Persisted, Session, Shown};

/// Draws the toolbar and, while a run or model load is in progress, the progress row.
pub fn ui(
    ui: &mut egui::Ui,
    persisted: &mut Persisted,
    session: &Session,
    commands: &mut Commands,
) {
    ui.add_space(2.0);
    ui.horizontal_wrapped(|ui| {
        let idle = !session.dialog_open;
        if ui
            .add_enabled(idle, egui::Button::new("Open…"))
            .on_hover_text("Open an image (Ctrl+O); you can also drop a file on the window")
            .clicked()
        {
            commands.push(Command::OpenDialog);
        }
        ui.menu_button("Recent", |ui| {
            if persisted.recent_files.is_empty() {
                ui.label("No recent files");
            }
            for path in &persisted.recent_files {
                if ui.button(path.display().to_string()).clicked() {
                    commands.push(Command::OpenPath(path.clone()));
                    ui.close();
                }
            }
        });
        if ui
            .button("Paste")
            .on_hover_text("Use the image on the clipboard (Ctrl+V)")
            .clicked()
        {
            commands.push(Command::RequestPaste);
        }
        ui.separator();
        if session.running() {
            if ui
                .button("Cancel")
                .on_hover_text("Stop after the current step (Esc); finished loops are kept")
                .clicked()
            {
                commands.push(Command::Cancel);
            }
        } else {
            let ready = session.input.is_some() && session.model.status.is_none();
            if ui
                .add_enabled(ready, egui::Button::new("Run"))
                .on_hover_text("Run every loop (Ctrl+Enter)")
                .on_disabled_hover_text("Open an image first")
                .clicked()
            {
                commands.push(Command::Run);
            }
        }
        let has_final = session.outcome.is_some();
        if ui
            .add_enabled(has_final && idle, egui::Button::new("Save…"))
            .on_hover_text("Save the final image with its settings in the PNG (Ctrl+S)")
            .clicked()
        {
            commands.push(Command::SaveDialog(Shown::Final));
        }
        if ui
            .add_enabled(
                !session.loops.is_empty() && idle,
                egui::Button::new("Save all loops…"),
            )
            .on_hover_text("Write every loop (and the final image) into a folder")
            .clicked()
        {
            commands.push(Command::SaveAllDialog);
        }
        ui.separator();
        if ui
            .button("Reset to defaults")
            .on_hover_text("Put every setting back to its default")
            .clicked()
        {
            commands.push(Command::ResetSettings);
        }
        ui.separator();
        egui::ComboBox::from_id_salt("theme")
            .selected_text(theme_label(persisted.theme))
            .show_ui(ui, |ui| {
                for theme in [
                    egui::ThemePreference::System,
                    egui::ThemePreference::Light,
                    egui::ThemePreference::Dark,
                ] {
                    ui.selectable_value(&mut persisted.theme, theme, theme_label(theme));
                }
            })
            .response
            .on_hover_text("Light or dark theme");
    });
    progress::ui(ui, session, commands);
    ui.add_space(2.0);
}

fn theme_label(theme: egui::ThemePreference) -> &'static str {
    match theme {
        egui::ThemePreference::System => "System theme",
        egui::ThemePreference::Light => "Light theme",
        egui::ThemePreference::Dark => "Dark theme",
    }
}
