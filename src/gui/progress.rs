//! The progress row: (in a batch, image i/n,) loop k/N, step s/S, elapsed and ETA; or the
//! model download/load.

use std::time::Duration;

use super::command::{Command, Commands};
use super::state::Session;

/// Formats a duration as `m:ss` (or `h:mm:ss`).
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Draws the progress of the run or the model load, if either is in progress.
pub fn ui(ui: &mut egui::Ui, session: &Session, commands: &mut Commands) {
    if let Some(status) = &session.model.status {
        ui.horizontal(|ui| {
            ui.spinner();
            let bar = egui::ProgressBar::new(session.model.download_fraction.unwrap_or(0.0))
                .text(status.as_str())
                .desired_width(ui.available_width() - 90.0);
            ui.add(bar);
            if ui.button("Cancel").clicked() {
                commands.push(Command::CancelModelLoad);
            }
        });
    }
    if let Some(p) = &session.progress {
        let text = if p.loops == 0 {
            "Starting…".to_string()
        } else {
            let eta = p
                .eta
                .map(|e| format!(", ETA {}", clock(e)))
                .unwrap_or_default();
            let size = p
                .spec
                .map(|s| format!(" at {}x{}", s.width, s.height))
                .unwrap_or_default();
            // In a batch: which image, of how many.
            let batch = session
                .batch
                .as_ref()
                .and_then(|b| {
                    let i = b.current?;
                    let name = b.items[i].input.file_name()?.to_string_lossy().into_owned();
                    Some(format!("Image {}/{} {name} · ", i + 1, b.items.len()))
                })
                .unwrap_or_default();
            format!(
                "{batch}Loop {}/{}{size} · step {}/{} · {} elapsed{eta}",
                p.loop_index,
                p.loops,
                p.step,
                p.steps,
                clock(p.elapsed)
            )
        };
        ui.add(egui::ProgressBar::new(p.fraction()).text(text));
    }
}
