//! The strip at the bottom: the original, each loop as it finishes, the final image (and a
//! batch's results). Click to view; right-click to save one or to start a new run from it.

use egui::{TextureHandle, Vec2};

use super::command::{Command, Commands};
use super::state::{Session, Shown, ViewState};

/// Height of a thumbnail.
const THUMB: f32 = 72.0;

/// Draws the filmstrip.
pub fn ui(ui: &mut egui::Ui, session: &Session, view: &ViewState, commands: &mut Commands) {
    let mut entries: Vec<Shown> = Vec::new();
    if session.input.is_some() {
        entries.push(Shown::Original);
    }
    entries.extend((1..=session.loops.len()).map(Shown::Loop));
    if session.running() && session.preview.is_some() {
        entries.push(Shown::Preview);
    }
    if session.outcome.is_some() {
        entries.push(Shown::Final);
    }
    ui.add_space(4.0);
    egui::ScrollArea::horizontal()
        .id_salt("filmstrip")
        .stick_to_right(true)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.set_min_height(THUMB + 8.0);
                if entries.is_empty() {
                    ui.weak("The original and every loop will appear here.");
                }
                for shown in entries {
                    if let Some(texture) = session.texture(shown) {
                        entry_ui(ui, shown, texture, view.shown == shown, session, commands);
                    }
                }
                if !session.batch_results.is_empty() {
                    ui.separator();
                    ui.weak("Batch");
                }
                for (name, path, texture) in &session.batch_results {
                    let image = egui::Image::new((texture.id(), thumb_size(texture)));
                    if ui
                        .add(egui::Button::image_and_text(image, name.as_str()))
                        .on_hover_text(format!("Saved as {}; click to open it", path.display()))
                        .clicked()
                    {
                        commands.push(Command::OpenPath(path.clone()));
                    }
                }
            });
        });
}

/// A thumbnail's size: `THUMB` high, at most 1.6 × as wide, the texture's aspect kept.
fn thumb_size(texture: &TextureHandle) -> Vec2 {
    let size = texture.size_vec2();
    let thumb = size * (THUMB / size.y.max(1.0)).min(THUMB * 1.6 / size.x.max(1.0));
    Vec2::new(thumb.x.max(1.0), thumb.y.max(1.0))
}

/// One thumbnail with its menu.
fn entry_ui(
    ui: &mut egui::Ui,
    shown: Shown,
    texture: &TextureHandle,
    selected: bool,
    session: &Session,
    commands: &mut Commands,
) {
    let image = egui::Image::new((texture.id(), thumb_size(texture)));
    let response = ui
        .add(egui::Button::image_and_text(image, shown.label()).selected(selected))
        .on_hover_text("Click to view; right-click to save or run from here");
    if response.clicked() {
        commands.push(Command::Show(shown));
    }
    let savable = shown != Shown::Preview;
    let runnable = matches!(shown, Shown::Loop(_) | Shown::Final) && !session.running();
    response.context_menu(|ui| {
        if ui
            .add_enabled(savable, egui::Button::new("Save…"))
            .clicked()
        {
            commands.push(Command::SaveDialog(shown));
            ui.close();
        }
        if ui
            .add_enabled(runnable, egui::Button::new("Run from here"))
            .on_hover_text("Start a new run with this image as the input")
            .clicked()
        {
            commands.push(Command::RunFrom(shown));
            ui.close();
        }
    });
}
