//! Loopback Scaler's pure core: everything the app computes that needs no model.
//!
//! - [`settings`]: every setting, defined once (struct, defaults, ranges, help, and with the
//!   `clap` feature the command-line flags);
//! - [`plan`]: the loop schedule (sizes, denoise, seeds, steps);
//! - [`imageops`]: Pillow-exact filters and enhancements, the finishing chain, Lanczos resize,
//!   A1111 resize modes and colour correction;
//! - [`metadata`]: A1111 `parameters` text and the run recipe in PNG chunks;
//! - [`io`]: reading images with clear errors, atomic writes that never overwrite unasked;
//! - [`error`]: the one-line errors every crate of the app reports.
//!
//! It depends on neither candle nor egui: the engine (`loopback-engine`) and the app build on it.

pub mod error;
pub mod imageops;
pub mod io;
pub mod metadata;
pub mod plan;
pub mod settings;

pub use error::{Error, Result};

/// The app's name, as the files it writes and the requests it makes name it (all the
/// workspace's crates share one version, [`APP_VERSION`]).
pub const APP_NAME: &str = "loopback-scaler";
/// The app's version.
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");
pub use settings::Settings;
