//! Image metadata: A1111's `parameters` infotext and this app's recipe, in PNG text chunks.
//!
//! A saved result carries two text chunks: `parameters`, the A1111 infotext that A1111,
//! ComfyUI-style readers and image sites understand, and `loopback-scaler`, the full
//! [`Recipe`] as JSON, from which the app restores every setting exactly.

pub mod infotext;
pub mod png_text;
mod recipe;

use std::path::Path;

pub use recipe::{
    LoraRecord, ModelInfo, Recipe, VaeInfo, settings_from_infotext, settings_from_texts,
};

use crate::imageops::finish::Finishing;

/// The PNG text key of A1111's infotext.
pub const PARAMETERS_KEY: &str = "parameters";
/// The PNG text key of the app's recipe (JSON).
pub const RECIPE_KEY: &str = "loopback-scaler";
/// The PNG text key recording a `post` re-finish (JSON).
pub const POST_KEY: &str = "loopback-scaler-post";

/// A JSON record of a `post` pass: the finishing applied and the colour reference, if any.
pub fn post_record(finishing: &Finishing, match_colors: Option<&Path>) -> String {
    let value = serde_json::json!({
        "sharpness": finishing.sharpness,
        "brightness": finishing.brightness,
        "color": finishing.color,
        "contrast": finishing.contrast,
        "detail": finishing.detail,
        "smooth": finishing.smooth,
        "blur": finishing.blur,
        "contour": finishing.contour,
        "match_colors": match_colors.and_then(|p| p.file_name()).map(|n| n.to_string_lossy()),
    });
    value.to_string()
}
