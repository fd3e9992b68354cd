//! How the app starts: the `gui` subcommand's flags, as [`GuiOptions`].

use std::path::PathBuf;

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
