//! `loopback-scaler gui` (and no command at all): opens the desktop app.

use std::path::PathBuf;

use loopback_core::Settings;
use loopback_scaler::gui::{self, GuiOptions};

/// Flags of the `gui` command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GuiArgs {
    /// Model: a preset (sd15, sd21, sd-turbo, sdxl, sdxl-turbo), a diffusers folder, a
    /// single-file checkpoint (.safetensors or .ckpt), or a name in models/; default: the one
    /// used last.
    #[arg(long)]
    pub model: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N or metal; default: the one used last.
    #[arg(long)]
    pub device: Option<String>,
    /// An image to open at start.
    #[arg(long, value_name = "IMAGE")]
    pub input: Option<PathBuf>,
    /// Run as soon as the image is open.
    #[arg(long, requires = "input")]
    pub run: bool,
    /// A settings file (JSON, as printed by `loopback-scaler settings`) to start from.
    #[arg(long = "settings", value_name = "FILE.json")]
    pub settings_file: Option<PathBuf>,
    /// Start from the defaults; neither read nor write the saved state.
    #[arg(long)]
    pub fresh: bool,
    /// After the run finishes, save a screenshot of the window to this PNG and quit
    /// (used by tools/screenshot.sh).
    #[arg(long, value_name = "FILE.png", requires = "run")]
    pub screenshot: Option<PathBuf>,
}

/// Opens the window and waits until it is closed.
pub fn run(args: &GuiArgs) -> anyhow::Result<()> {
    let settings = match &args.settings_file {
        Some(path) => Some(Settings::from_json_file(path)?),
        None => None,
    };
    release_own_console();
    gui::run(GuiOptions {
        settings,
        model: args.model.clone(),
        device: args.device.clone(),
        input: args.input.clone(),
        run: args.run,
        fresh: args.fresh,
        screenshot: args.screenshot.clone(),
    })
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}

/// On Windows the binary is a console program (so the command line prints), and Windows gives
/// one started from Explorer a console window of its own. When this process is the only one
/// on its console, that window is ours alone: let it go, leaving only the app's window. Started
/// from a terminal (which shares its console), nothing changes.
#[cfg(windows)]
fn release_own_console() {
    use windows_sys::Win32::System::Console::{FreeConsole, GetConsoleProcessList};
    let mut ids = [0u32; 2];
    // SAFETY: the buffer and its length agree; both calls only act on this process's console.
    unsafe {
        if GetConsoleProcessList(ids.as_mut_ptr(), ids.len() as u32) == 1 {
            FreeConsole();
        }
    }
}

#[cfg(not(windows))]
fn release_own_console() {}
