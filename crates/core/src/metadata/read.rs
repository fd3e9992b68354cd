//! The metadata texts of an image file, whatever its format: PNG text chunks (else the
//! "stealth" alpha-channel text), JPEG and WebP EXIF (`UserComment`, and this app's recipe).

use std::io::Cursor;
use std::path::Path;

use image::{ImageDecoder, ImageReader};

use super::keys::{PARAMETERS_KEY, RECIPE_KEY};
use super::{exif, png_text, stealth};
use crate::{Error, Result};

/// The `(key, text)` pairs an image file carries, as PNG text chunks would give them
/// (`parameters`, `loopback-scaler`, …). A file without metadata gives an empty list; a file
/// that cannot be read is an error naming it.
pub fn read_texts_from_path(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::input(path, e.to_string()))?;
    read_texts(&bytes).map_err(|reason| Error::input(path, reason))
}

/// [`read_texts_from_path`] on a file's bytes.
pub fn read_texts(bytes: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let mut texts = png_text::read_png_texts(bytes).map_err(|e| e.to_string())?;
        let has = |key: &str| texts.iter().any(|(k, _)| k == key);
        if !has(PARAMETERS_KEY) && !has(RECIPE_KEY) {
            let image = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
            if let Some(text) = stealth::read_stealth(&image) {
                texts.push((PARAMETERS_KEY.to_string(), text));
            }
        }
        return Ok(texts);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let exif = decoder.exif_metadata().map_err(|e| e.to_string())?;
    Ok(exif.map(|e| exif::read_exif_texts(&e)).unwrap_or_default())
}
