//! Carrying out [`Command`]s: the one place that starts jobs and changes the session. The
//! steps that need more than a line live next to what they are about: `launch.rs` (model
//! load and run, with their checks), `save.rs` (file names and saving).

use std::sync::Arc;

use super::app::App;
use super::command::Command;
use super::jobs::{Picked, scan_library};
use super::state::{Pending, Shown};
use loopback_core::settings::Settings;

/// Image files the Open… dialog offers.
const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

impl App {
    /// Carries out `command` (without waiting for anything: slow work goes to a job).
    pub fn execute(&mut self, ctx: &egui::Context, command: Command) {
        match command {
            Command::OpenDialog => self.open_dialog(),
            Command::OpenPath(path) => {
                self.session.loading_image = true;
                self.jobs.open(path);
            }
            Command::Batch(paths) => self.queue_batch(paths),
            Command::RequestPaste => ctx.send_viewport_cmd(egui::ViewportCommand::RequestPaste),
            Command::PasteImage(image) => {
                self.session.loading_image = true;
                self.jobs.paste(image);
            }
            Command::AcceptMetadata => self.accept_metadata(),
            Command::DismissMetadata => {
                self.session
                    .pending
                    .retain(|p| !matches!(p, Pending::Metadata { .. }));
            }
            Command::BrowseModel => {
                let dialog = rfd::AsyncFileDialog::new()
                    .set_title("Choose a diffusers model folder")
                    .pick_folder();
                self.session.dialog_open = true;
                self.jobs.dialog(dialog, Picked::Model);
            }
            Command::BrowseFile(target) => {
                let dialog = rfd::AsyncFileDialog::new().set_title(target.title());
                let wrap = move |path| Picked::File(target, path);
                self.session.dialog_open = true;
                match target.extensions() {
                    [] => self.jobs.dialog(dialog.pick_folder(), wrap),
                    extensions => self.jobs.dialog(
                        dialog.add_filter("model files", extensions).pick_file(),
                        wrap,
                    ),
                }
            }
            Command::RemoveLora(index) => {
                if index < self.persisted.loras.len() {
                    self.persisted.loras.remove(index);
                }
            }
            Command::LoadModel => self.load_model(None),
            Command::CancelModelLoad => {
                self.jobs.cancel_load();
                self.load_id = None;
                self.session.model.status = None;
                self.session.model.download_fraction = None;
                self.session.model.run_when_loaded = None;
                self.toasts.info("Model loading cancelled");
            }
            Command::RefreshModels => {
                self.session.library = scan_library();
                // A LoRA named in the prompt may be found now (or no longer).
                self.session.model.wanted.forget();
            }
            Command::Run => self.start_run(Shown::Original),
            Command::RunFrom(shown) => self.start_run(shown),
            Command::Cancel => {
                if self.session.running() {
                    self.jobs.cancel_run();
                } else if self.jobs.loading() {
                    self.execute(ctx, Command::CancelModelLoad);
                }
            }
            Command::SaveDialog(shown) => self.save_dialog(shown),
            Command::SaveAllDialog => {
                if self.session.loops.is_empty() {
                    self.toasts
                        .error("Nothing to save yet: run the loops first", None);
                    return;
                }
                let dialog = rfd::AsyncFileDialog::new()
                    .set_title("Save every loop into a folder")
                    .pick_folder();
                self.session.dialog_open = true;
                self.jobs.dialog(dialog, Picked::SaveAll);
            }
            Command::Save { what, overwrite } => self.save(what, overwrite),
            Command::DismissOverwrite => {
                self.session
                    .pending
                    .retain(|p| !matches!(p, Pending::Overwrite { .. }));
            }
            Command::ResetSettings => {
                self.persisted.settings = Settings::default();
                self.toasts.info("Settings reset to their defaults");
            }
            Command::ReuseLastSeed => match self.persisted.last_seed {
                Some(seed) => self.persisted.settings.seed = i64::from(seed),
                None => self.toasts.info("No run yet: there is no last seed"),
            },
            Command::Show(shown) => {
                if self.session.texture(shown).is_some() {
                    self.view.shown = shown;
                }
            }
            Command::Refinish => {
                self.finish_requested = None;
                self.refinish_if_needed();
            }
        }
    }

    /// Shows the Open… dialog on a worker thread.
    fn open_dialog(&mut self) {
        if self.session.dialog_open {
            return;
        }
        let mut dialog = rfd::AsyncFileDialog::new()
            .set_title("Open an image")
            .add_filter("Images", &IMAGE_EXTENSIONS);
        if let Some(dir) = self.persisted.recent_files.first().and_then(|p| p.parent()) {
            dialog = dialog.set_directory(dir);
        }
        self.session.dialog_open = true;
        self.jobs.dialog(dialog.pick_file(), Picked::Open);
    }

    /// Takes over the settings of the opened PNG.
    fn accept_metadata(&mut self) {
        let Some(index) = self
            .session
            .pending
            .iter()
            .position(|p| matches!(p, Pending::Metadata { .. }))
        else {
            return;
        };
        if let Pending::Metadata {
            settings, warnings, ..
        } = self.session.pending.remove(index)
        {
            self.persisted.settings = *settings;
            self.toasts.info("Settings loaded from the image");
            for warning in warnings {
                self.toasts.warning(warning);
            }
        }
    }

    /// Starts re-applying the finishing chain when the finishing settings changed.
    pub(super) fn refinish_if_needed(&mut self) {
        let Some(outcome) = &self.session.outcome else {
            return;
        };
        let wanted = self.persisted.settings.finishing();
        if wanted == outcome.applied && self.finish_requested.is_none() {
            return;
        }
        if self.finish_requested == Some(wanted) {
            return;
        }
        self.finish_generation += 1;
        self.finish_requested = Some(wanted);
        self.jobs.refinish(
            self.finish_generation,
            Arc::clone(&outcome.unfinished),
            wanted,
        );
    }
}
