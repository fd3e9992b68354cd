//! PyTorch pickles (`.ckpt`, `.pt`, `.pth`, `.bin`): refused by name, never opened, since
//! unpickling can run code.

use std::path::Path;

use loopback_core::{Error, Result};

/// File extensions of PyTorch pickles, which are never opened.
pub const PICKLE_EXTENSIONS: [&str; 4] = ["ckpt", "pt", "pth", "bin"];

/// Refuses `path` when it is named like a PyTorch pickle (`.ckpt`, `.pt`, `.pth`, `.bin`),
/// without reading it.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(Error::input(
            path,
            format!(
                "is a PyTorch pickle (.{ext}): pickle files can run code when loaded, so they \
                 are never opened; convert it to .safetensors"
            ),
        ));
    }
    Ok(())
}
