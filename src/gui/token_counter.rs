//! A1111's token counter for the prompts (`12/75`), kept in the session and computed only
//! when a prompt or the step count changes.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use loopback_engine::conditioning::prompt::{EmbeddingIndex, ReadPrompt};
use loopback_engine::conditioning::tokenizer::ClipTokenizer;
use loopback_engine::load::lora;

/// The counters' tokenizer and the counts computed so far.
#[derive(Default)]
pub struct TokenCounter {
    tokenizer: OnceLock<Option<ClipTokenizer>>,
    cache: Mutex<HashMap<(String, usize), String>>,
}

impl TokenCounter {
    /// `count/length` for `prompt` over `steps` steps (the largest of its scheduled texts);
    /// `<lora:…>` tags are not counted.
    pub fn get(&self, prompt: &str, steps: usize) -> String {
        let key = (prompt.to_string(), steps);
        let Ok(mut cache) = self.cache.lock() else {
            return String::new();
        };
        if let Some(hit) = cache.get(&key) {
            return hit.clone();
        }
        let Some(tokenizer) = self.tokenizer.get_or_init(|| ClipTokenizer::bundled().ok()) else {
            return String::new();
        };
        let text = lora::split_prompt(prompt).map_or_else(|_| prompt.to_string(), |(t, _)| t);
        let (count, length) =
            ReadPrompt::new(tokenizer, &text, steps, &EmbeddingIndex::default()).token_counter();
        let shown = format!("{count}/{length}");
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert(key, shown.clone());
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_counts_as_a1111() {
        let counter = TokenCounter::default();
        assert_eq!(counter.get("", 20), "0/75");
        assert_eq!(counter.get("a cat", 20), "2/75");
        assert_eq!(counter.get("a cat BREAK a dog", 20), "77/150");
        assert_eq!(counter.get("(a cat:1.3) <lora:x:1>", 20), "2/75");
    }
}
