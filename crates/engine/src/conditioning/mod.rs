//! From prompt text to what the text encoders read:
//! - [`tokenizer`]: the CLIP byte-pair-encoding tokenizer of every Stable Diffusion text
//!   encoder, shipped with the app, with A1111's splitting of long prompts into 75-token chunks;
//! - [`syntax`]: A1111's prompt language (emphasis, `BREAK`, prompt editing, alternation);
//! - [`prompt`]: a prompt read for a run: its schedule, emphasis pieces, chunks and embeddings;
//! - [`encode`]: a read prompt through the model's text encoders (emphasis, clip skip).
//!
//! The text encoders themselves, and the cache of what they computed, are part of the loaded
//! model (`crate::model::text`).

pub mod encode;
pub mod prompt;
pub mod syntax;
pub mod tokenizer;
