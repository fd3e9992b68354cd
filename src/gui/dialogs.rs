//! Questions for the user (load a PNG's settings? replace existing files?) and the overlay
//! shown while a file is dragged over the window.

use egui::{Align2, Color32, Id, LayerId, Order, TextStyle};

use super::command::{Command, Commands};
use super::state::{Pending, Session};

/// Shows the oldest waiting question of each kind.
pub fn pending_ui(ctx: &egui::Context, session: &Session, commands: &mut Commands) {
    for pending in &session.pending {
        match pending {
            Pending::Metadata {
                settings,
                warnings,
                source,
            } => metadata_ui(ctx, settings, warnings, source, commands),
            Pending::Overwrite { what } => overwrite_ui(ctx, what, commands),
        }
    }
}

fn metadata_ui(
    ctx: &egui::Context,
    settings: &loopback_core::settings::Settings,
    warnings: &[String],
    source: &str,
    commands: &mut Commands,
) {
    egui::Window::new("Settings found in the image")
        .id(Id::unique("metadata_offer"))
        .anchor(Align2::CENTER_TOP, [0.0, 48.0])
        .collapsible(false)
        .resizable(false)
        .show(ctx, |ui| {
            ui.label(format!("{source} carries the settings it was made with."));
            let prompt = if settings.prompt.is_empty() {
                "(empty prompt)".to_string()
            } else {
                format!("Prompt: {}", shorten(&settings.prompt, 80))
            };
            ui.label(prompt);
            ui.label(format!(
                "{} steps, CFG {}, denoise {}, seed {}, {} loop(s)",
                settings.steps, settings.cfg, settings.denoise, settings.seed, settings.loops
            ));
            for warning in warnings {
                ui.colored_label(ui.visuals().warn_fg_color, warning);
            }
            ui.horizontal(|ui| {
                if ui.button("Load settings").clicked() {
                    commands.push(Command::AcceptMetadata);
                }
                if ui.button("Keep mine").clicked() {
                    commands.push(Command::DismissMetadata);
                }
            });
        });
}

fn overwrite_ui(
    ctx: &egui::Context,
    what: &[(super::state::Shown, std::path::PathBuf)],
    commands: &mut Commands,
) {
    let existing: Vec<_> = what.iter().filter(|(_, p)| p.exists()).collect();
    egui::Modal::new(Id::unique("overwrite_question")).show(ctx, |ui| {
        ui.heading("Replace existing files?");
        for (_, path) in existing.iter().take(6) {
            ui.label(path.display().to_string());
        }
        if existing.len() > 6 {
            ui.label(format!("… and {} more", existing.len() - 6));
        }
        ui.horizontal(|ui| {
            if ui.button("Replace").clicked() {
                commands.push(Command::DismissOverwrite);
                commands.push(Command::Save {
                    what: what.to_vec(),
                    overwrite: true,
                });
            }
            if ui.button("Don't replace").clicked() {
                commands.push(Command::DismissOverwrite);
            }
        });
    });
}

/// The first `max` characters of `text`, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Darkens the whole window and says what dropping will do, while files hover over it.
pub fn drop_overlay(ctx: &egui::Context) {
    let hovered = ctx.input(|i| {
        i.raw
            .hovered_files
            .iter()
            .map(|f| {
                f.path.as_deref().and_then(|p| p.file_name()).map_or_else(
                    || "the file".to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            })
            .collect::<Vec<_>>()
    });
    if hovered.is_empty() {
        return;
    }
    let painter = ctx.layer_painter(LayerId::new(
        Order::Foreground,
        Id::unique("file_drop_target"),
    ));
    let rect = ctx.content_rect();
    painter.rect_filled(rect, 0.0, Color32::from_black_alpha(192));
    painter.text(
        rect.center(),
        Align2::CENTER_CENTER,
        format!("Drop to open {}", hovered.join(", ")),
        TextStyle::Heading.resolve(&ctx.global_style()),
        Color32::WHITE,
    );
}
