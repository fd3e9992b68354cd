//! The desktop app: a thin front end over the engine (eframe/egui).
//!
//! - [`App`] (`app.rs`) owns the state and lays out the views; `execute.rs` carries out the
//!   [`Command`]s the views emit, `events.rs` handles what background jobs report.
//! - [`state`] holds [`state::Persisted`] (settings, model, recent files, theme: saved by eframe)
//!   apart from [`state::Session`] (images, textures, progress: this run only).
//! - [`jobs`]: every slow thing (reading and saving images, file dialogs, re-finishing, the
//!   model loader and the loop runner) runs on a worker thread and reports over a channel
//!   that `App::logic` drains with `try_recv`; workers wake the UI with `request_repaint`.
//! - One view per file: `toolbar`, `progress`, `side_panel/*` (every setting control is
//!   generated from [`loopback_core::settings::FIELDS`]), `viewer`, `filmstrip`, `finishing`,
//!   `dialogs`, `toasts`.
//!
//! See `docs/gui.md` for the architecture and how it is tested.

mod app;
pub mod command;
mod dialogs;
mod events;
mod execute;
mod filmstrip;
mod finishing;
pub mod frame_stats;
pub mod jobs;
mod progress;
mod side_panel;
pub mod state;
pub mod toasts;
mod toolbar;
mod viewer;

use std::path::PathBuf;

pub use app::App;
pub use command::Command;

/// The app's name: window title and storage folder.
pub const APP_NAME: &str = "Loopback Scaler";

/// How the app starts (from the `gui` subcommand's flags).
#[derive(Debug, Clone, Default)]
pub struct GuiOptions {
    /// Use this model instead of the remembered one.
    pub model: Option<String>,
    /// Use this device instead of the remembered one.
    pub device: Option<String>,
    /// Start with these settings instead of the remembered ones.
    pub settings: Option<loopback_core::Settings>,
    /// Open this image at start.
    pub input: Option<PathBuf>,
    /// Run as soon as the input image is open.
    pub run: bool,
    /// Ignore (and do not write) the saved state.
    pub fresh: bool,
    /// After the run finishes, save a screenshot of the window here and close.
    pub screenshot: Option<PathBuf>,
}

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
