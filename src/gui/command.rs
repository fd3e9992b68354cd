//! What the views ask the app to do. Views never change shared state behind the app's back
//! for anything beyond editing settings: they push a [`Command`], and
//! [`App::execute`](super::App::execute) carries it out in one place.

use std::path::PathBuf;
use std::sync::Arc;

use super::state::Shown;

/// One thing the user asked for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Show the Open… dialog (off the UI thread).
    OpenDialog,
    /// Read this image file (off the UI thread).
    OpenPath(PathBuf),
    /// Run these images (and folders' images) one after another.
    Batch(Vec<PathBuf>),
    /// Ask the system for the clipboard's contents (an image arrives as a paste event).
    RequestPaste,
    /// Use this pasted image as the input.
    PasteImage(Arc<egui::ColorImage>),
    /// Take over the settings the opened PNG carries.
    AcceptMetadata,
    /// Keep the current settings.
    DismissMetadata,
    /// Show the folder dialog for a local model.
    BrowseModel,
    /// Show the file (or folder) dialog for a model file: checkpoint, VAE, LoRA or ControlNet.
    BrowseFile(FileTarget),
    /// Remove the LoRA at this index from the picked ones.
    RemoveLora(usize),
    /// Get the model ready now (Run also does it when needed).
    LoadModel,
    /// Stop a download or load in progress.
    CancelModelLoad,
    /// Look for local models again.
    RefreshModels,
    /// Run the loops on the input image.
    Run,
    /// Run the loops on this image (a loop's output or the final image).
    RunFrom(Shown),
    /// Cancel the run (finished loops are kept).
    Cancel,
    /// Show the Save… dialog for this image.
    SaveDialog(Shown),
    /// Show the folder dialog for saving every loop.
    SaveAllDialog,
    /// Write these images; existing files are only replaced when `overwrite`.
    Save {
        /// What to save, and where.
        what: Vec<(Shown, PathBuf)>,
        /// Replace existing files.
        overwrite: bool,
    },
    /// Drop the question about replacing files.
    DismissOverwrite,
    /// Put every setting back to its default.
    ResetSettings,
    /// Use the first-loop seed of the last run again.
    ReuseLastSeed,
    /// Show this image in the viewer.
    Show(Shown),
    /// Re-apply the finishing chain to the last loop's output.
    Refinish,
}

/// The commands of one frame, executed after the views are drawn.
#[derive(Debug, Default)]
pub struct Commands(Vec<Command>);

impl Commands {
    /// Asks for `command`.
    pub fn push(&mut self, command: Command) {
        self.0.push(command);
    }

    /// Takes every command asked for so far.
    pub fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.0)
    }
}

/// What a picked model file (or folder) is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileTarget {
    /// A single-file checkpoint: the model.
    Checkpoint,
    /// A replacement VAE.
    Vae,
    /// A LoRA to add.
    Lora,
    /// A single-file ControlNet (`.safetensors` or `.pth`).
    ControlNet,
    /// A diffusers ControlNet folder.
    ControlNetFolder,
}

impl FileTarget {
    /// The file dialog's title.
    pub fn title(self) -> &'static str {
        match self {
            FileTarget::Checkpoint => "Choose a checkpoint (.safetensors)",
            FileTarget::Vae => "Choose a VAE (.safetensors)",
            FileTarget::Lora => "Choose a LoRA (.safetensors)",
            FileTarget::ControlNet => "Choose a ControlNet (.safetensors, .pth)",
            FileTarget::ControlNetFolder => "Choose a diffusers ControlNet folder",
        }
    }

    /// The file extensions the dialog offers; empty for a folder.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileTarget::Checkpoint | FileTarget::Vae | FileTarget::Lora => &["safetensors"],
            FileTarget::ControlNet => &loopback_engine::load::controlnet::CONTROLNET_EXTENSIONS,
            FileTarget::ControlNetFolder => &[],
        }
    }
}
