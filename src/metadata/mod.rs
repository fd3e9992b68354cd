//! Image metadata: A1111's `parameters` infotext and this app's recipe, in PNG text chunks.

pub mod infotext;
pub mod png_text;
