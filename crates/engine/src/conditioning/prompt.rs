//! How the app reads a prompt, as A1111 does, before any text encoder runs: its schedule
//! (prompt editing, alternation), each scheduled text's emphasis pieces, and their 75-token
//! chunks with the textual-inversion embeddings found in them. Shared by the sampler's
//! conditioning, the `prompt` command and the app's token counter.

use std::collections::HashMap;

use crate::conditioning::syntax::{Weighted, parse_attention, schedule};
use crate::conditioning::tokenizer::{CHUNK_TOKENS, Chunked, ClipTokenizer, Found};

/// One text of a prompt's schedule, read.
#[derive(Debug, Clone)]
pub struct ScheduledText {
    /// The last step (of the run's scheduled steps) this text is in force for.
    pub end_at_step: usize,
    /// The text.
    pub text: String,
    /// Its emphasis pieces.
    pub attention: Vec<Weighted>,
    /// Its chunks.
    pub chunked: Chunked,
}

/// A prompt read for a run of `steps` scheduled steps.
#[derive(Debug, Clone)]
pub struct ReadPrompt {
    /// Its texts in schedule order (one when nothing is edited or alternated).
    pub texts: Vec<ScheduledText>,
}

impl ReadPrompt {
    /// Reads `prompt` (without `<lora:…>` tags) for `steps` steps.
    pub fn new(
        tokenizer: &ClipTokenizer,
        prompt: &str,
        steps: usize,
        embeddings: &EmbeddingIndex,
    ) -> Self {
        let texts = schedule(prompt, steps.max(1))
            .into_iter()
            .map(|(end_at_step, text)| {
                let attention = parse_attention(&text);
                let chunked =
                    tokenizer.chunk_prompt(&attention, &|ids, at| embeddings.find(ids, at));
                ScheduledText {
                    end_at_step,
                    text,
                    attention,
                    chunked,
                }
            })
            .collect();
        ReadPrompt { texts }
    }

    /// A1111's token counter: the largest token count of the schedule's texts and the
    /// length it fills (a multiple of 75, at least 75), shown as `count/length`.
    pub fn token_counter(&self) -> (usize, usize) {
        let count = self
            .texts
            .iter()
            .map(|t| t.chunked.token_count)
            .max()
            .unwrap_or(0);
        (count, count.max(1).div_ceil(CHUNK_TOKENS) * CHUNK_TOKENS)
    }

    /// The names of the embeddings the prompt uses (each once, in order of first use).
    pub fn embeddings_used<'a>(&self, index: &'a EmbeddingIndex) -> Vec<&'a str> {
        let mut names: Vec<&str> = Vec::new();
        for text in &self.texts {
            for chunk in &text.chunked.chunks {
                for &(_, i) in &chunk.fixes {
                    let name = index.name(i);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        names
    }
}

/// The embeddings a prompt can call, by the token ids of their names (A1111's
/// `EmbeddingDatabase` lookup: at a position, the longest name that starts there).
#[derive(Debug, Clone, Default)]
pub struct EmbeddingIndex {
    /// Name and vector count of each embedding.
    entries: Vec<(String, usize)>,
    /// First id of a name → (the name's ids, entry), longest names first.
    by_first_id: HashMap<u32, Vec<(Vec<u32>, usize)>>,
}

impl EmbeddingIndex {
    /// Indexes `embeddings` (name, vector count); names are tokenized as prompt text is.
    pub fn new<'a>(
        tokenizer: &ClipTokenizer,
        embeddings: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Self {
        let mut index = EmbeddingIndex::default();
        for (name, vectors) in embeddings {
            let ids = tokenizer.encode(name);
            let Some(&first) = ids.first() else { continue };
            let entry = index.entries.len();
            index.entries.push((name.to_string(), vectors));
            let list = index.by_first_id.entry(first).or_default();
            list.push((ids, entry));
            list.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
        }
        index
    }

    /// The embedding whose name starts at `ids[at]`, if any.
    pub fn find(&self, ids: &[u32], at: usize) -> Option<Found> {
        let candidates = self.by_first_id.get(ids.get(at)?)?;
        candidates
            .iter()
            .find(|(name, _)| ids[at..].starts_with(name))
            .map(|(name, entry)| Found {
                index: *entry,
                name_tokens: name.len(),
                vectors: self.entries[*entry].1,
            })
    }

    /// The name of entry `i` (as [`Found::index`] gives it).
    pub fn name(&self, i: usize) -> &str {
        &self.entries[i].0
    }
}
