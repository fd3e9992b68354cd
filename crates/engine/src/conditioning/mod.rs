//! From prompt text to what the text encoders read:
//! - [`tokenizer`]: the CLIP byte-pair-encoding tokenizer of every Stable Diffusion text
//!   encoder, shipped with the app, with A1111's splitting of long prompts into 75-token chunks.
//!
//! The text encoders themselves, and the cache of what they computed, are part of the loaded
//! model (`crate::model::text`).

pub mod tokenizer;
