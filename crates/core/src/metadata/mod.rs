//! Image metadata: A1111's `parameters` infotext and this app's recipe.
//!
//! A saved result carries both: `parameters`, the A1111 infotext that A1111, ComfyUI-style
//! readers and image sites understand, and `loopback-scaler`, the full [`Recipe`] as JSON,
//! from which the app restores every setting exactly. PNG keeps them in text chunks
//! ([`png_text`]); JPEG and WebP in EXIF, as A1111 writes them ([`exif`]). Reading also takes
//! A1111's "stealth" alpha-channel text ([`stealth`]); [`read_texts_from_path`] reads any of
//! them. A ControlNet goes into the infotext as the sd-webui-controlnet extension writes it
//! (`ControlNet 0: "Module: …, Model: name [hash], Weight: …"`), and is read back from it.

mod controlnet;
pub mod exif;
pub mod infotext;
mod keys;
mod other_tools;
pub mod png_text;
mod read;
mod recipe;
pub mod stealth;
mod validate;

use std::path::Path;

pub use keys::{PARAMETERS_KEY, POST_KEY, RECIPE_KEY};
pub use read::{read_texts, read_texts_from_path};
pub use recipe::{
    ControlNetRecord, EmbeddingRecord, LoraRecord, ModelInfo, Recipe, VaeInfo, embeddings_named,
    settings_from_infotext, settings_from_texts,
};

use crate::settings::Finishing;

/// A JSON record of a `post` pass: the finishing applied and the colour reference, if any.
///
/// The keys are the finishing settings' and `match_colors` (the reference's file name or
/// `null`), in alphabetical order (`serde_json`'s map sorts them).
pub fn post_record(finishing: &Finishing, match_colors: Option<&Path>) -> String {
    // Plain data with string keys: serialising cannot fail.
    let mut value = serde_json::to_value(finishing).unwrap_or_default();
    if let Some(record) = value.as_object_mut() {
        let name = match_colors.and_then(|p| p.file_name());
        record.insert(
            "match_colors".to_owned(),
            serde_json::json!(name.map(|n| n.to_string_lossy())),
        );
    }
    value.to_string()
}
