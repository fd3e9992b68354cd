//! Loopback Scaler: enlarge an image and add detail by running Stable Diffusion img2img on it
//! again and again, each loop a little bigger than the last, then finish it with Pillow-exact
//! filters and enhancements.
//!
//! The library is layered:
//! - a pure core: [`settings`] (every setting, defined once), [`plan`] (the loop schedule),
//!   [`imageops`] (Pillow-exact filters, enhancements, resizing, colour correction),
//!   [`metadata`] (A1111 `parameters` text and the recipe in PNG chunks) and [`io`] (reading and
//!   atomically writing images, with clear errors);
//! - the front ends on top: the `loopback-scaler` command line and the desktop app ([`gui`]).

pub mod engine;
pub mod error;
pub mod gui;
pub mod imageops;
pub mod io;
pub mod metadata;
pub mod plan;
pub mod settings;

pub use error::{Error, Result};
pub use settings::Settings;
