//! The desktop app: a thin front end over the engine (eframe/egui).
//!
//! - [`App`] (`app.rs`) owns the state and lays out the views; `execute.rs` carries out the
//!   [`Command`]s the views emit (with `launch.rs`: the model load and the run with their
//!   checks, and `save.rs`: file names and saving), `events.rs` handles what background jobs
//!   report.
//! - [`state`] holds [`state::Persisted`] (settings, model, recent files, theme: saved by eframe)
//!   apart from [`state::Session`] (images, textures, progress: this run only); `model.rs`
//!   tells whether the loaded model is the one the settings ask for. Views import these, never
//!   the executor.
//! - [`jobs`]: every slow thing (reading and saving images, file dialogs, re-finishing, the
//!   model loader and the loop runner) runs on a thread of its own and reports over a channel
//!   that `App::logic` drains with `try_recv`; workers wake the UI with `request_repaint`.
//!   The loader and the runner are the engine's blocking functions, called on the job's
//!   thread; the job keeps their cancel flag.
//! - One view per file: `toolbar`, `progress`, `side_panel/*` (every setting control is
//!   generated from [`loopback_core::settings::FIELDS`]), `viewer`, `filmstrip`, `finishing`,
//!   `dialogs`, `toasts`.
//!
//! See `docs/gui.md` for the architecture and how it is tested.

mod app;
mod batch;
pub mod command;
mod dialogs;
mod events;
mod execute;
mod filmstrip;
mod finishing;
pub mod frame_stats;
pub mod jobs;
mod launch;
mod model;
mod options;
mod progress;
mod save;
mod side_panel;
pub mod state;
pub mod toasts;
mod token_counter;
mod toolbar;
mod viewer;

pub use app::App;
pub use command::Command;
pub use options::GuiOptions;

/// The app's name: window title and storage folder.
pub const APP_NAME: &str = "Loopback Scaler";

/// Opens the window and runs until it is closed.
pub fn run(options: GuiOptions) -> Result<(), eframe::Error> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(APP_NAME)
            .with_app_id("loopback-scaler")
            .with_inner_size([1280.0, 820.0])
            .with_min_inner_size([720.0, 480.0])
            .with_drag_and_drop(true),
        persist_window: !options.fresh,
        ..Default::default()
    };
    eframe::run_native(
        APP_NAME,
        native,
        Box::new(move |cc| Ok(Box::new(App::new(cc, options)))),
    )
}
