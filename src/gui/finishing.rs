//! The finishing panel: the filter levels and enhancement factors of the finishing chain.
//! Moving a control re-applies the chain to the last loop's output at once, on a worker
//! thread, never re-running a loop.

use super::side_panel::fields;
use super::state::Session;
use loopback_core::settings::{Group, Settings};

/// Draws the finishing panel.
pub fn ui(ui: &mut egui::Ui, settings: &mut Settings, session: &Session) {
    ui.add_space(4.0);
    ui.heading("Finishing");
    ui.weak("Applied to the last loop's output. Changes show at once; no loop runs again.");
    ui.add_space(4.0);
    egui::ScrollArea::vertical()
        .id_salt("finishing_scroll")
        .show(ui, |ui| {
            fields::group_ui(ui, settings, Group::Finish, &[]);
            ui.add_space(6.0);
            if ui
                .button("Neutral finish")
                .on_hover_text("No filters, every factor 1.0")
                .clicked()
            {
                settings.set_finishing(&Default::default());
            }
            match &session.outcome {
                Some(outcome) if outcome.applied != settings.finishing() => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("Applying…");
                    });
                }
                Some(_) => {}
                None => {
                    ui.weak("Run the loops to see the finish.");
                }
            }
        });
}
