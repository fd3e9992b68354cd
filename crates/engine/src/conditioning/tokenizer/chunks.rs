//! A1111's splitting of long prompts into 75-token chunks.
//!
//! The rule of A1111's `tokenize_line` (`modules/sd_hijack_clip.py`), token by token: a comma
//! records its position in the current chunk; when the current chunk is full (75 tokens) and
//! the next token is not a comma, and the last comma of the chunk is among its last
//! [`COMMA_BACKTRACK`] tokens, the tokens after that comma move to the next chunk; a full chunk
//! is closed before the next token is added. An empty prompt gives one (empty) chunk.

use std::ops::Range;

/// Tokens of a prompt per chunk (a text encoder sees 77: start, 75, end).
pub const CHUNK_TOKENS: usize = 75;
/// Tokens a CLIP text encoder takes.
pub const CONTEXT_TOKENS: usize = CHUNK_TOKENS + 2;
/// How far back from a chunk's end a comma may be for the chunk to end there instead
/// (A1111's `comma_padding_backtrack` default).
pub const COMMA_BACKTRACK: usize = 20;

/// The chunks of a prompt's token ids, as ranges of `ids` (each at most [`CHUNK_TOKENS`] long,
/// together covering `ids` in order); `comma` is the id of `,</w>`. Returning ranges lets a
/// caller split per-token data (such as emphasis weights) the same way.
pub fn chunk_ranges(ids: &[u32], comma: Option<u32>) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    // Position of the last comma in the current chunk, relative to `start`.
    let mut last_comma: Option<usize> = None;
    for (i, &id) in ids.iter().enumerate() {
        let len = i - start;
        if Some(id) == comma {
            last_comma = Some(len);
        } else if let Some(at) = last_comma.filter(|&at| backtracks(len, at)) {
            chunks.push(start..start + at + 1);
            start += at + 1;
            last_comma = None;
        }
        if i - start == CHUNK_TOKENS {
            chunks.push(start..i);
            start = i;
            last_comma = None;
        }
    }
    if start < ids.len() || chunks.is_empty() {
        chunks.push(start..ids.len());
    }
    chunks
}

/// Whether a full chunk of `len` tokens with its last comma at `comma` ends after that comma.
fn backtracks(len: usize, comma: usize) -> bool {
    COMMA_BACKTRACK != 0 && len == CHUNK_TOKENS && len - comma <= COMMA_BACKTRACK
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMA: u32 = 267;

    fn lengths(ids: &[u32]) -> Vec<usize> {
        chunk_ranges(ids, Some(COMMA))
            .iter()
            .map(|r| r.len())
            .collect()
    }

    #[test]
    fn short_and_empty_prompts_give_one_chunk() {
        assert_eq!(lengths(&[]), [0]);
        assert_eq!(lengths(&[1; 75]), [75]);
        assert_eq!(lengths(&[1; 76]), [75, 1]);
        assert_eq!(lengths(&[1; 150]), [75, 75]);
        assert_eq!(lengths(&[1; 151]), [75, 75, 1]);
    }

    #[test]
    fn boundary_moves_back_to_a_near_comma() {
        let mut ids = vec![1; 200];
        ids[60] = COMMA;
        assert_eq!(lengths(&ids), [61, 75, 64]);
        ids[60] = 1;
        ids[50] = COMMA; // 25 tokens from the end: too far
        assert_eq!(lengths(&ids), [75, 75, 50]);
        ids[50] = 1;
        ids[75] = COMMA; // the token after a full chunk is a comma: no backtrack
        assert_eq!(lengths(&ids), [75, 75, 50]);
    }

    #[test]
    fn no_comma_token_means_plain_splits() {
        let ids = [COMMA; 80];
        assert_eq!(chunk_ranges(&ids, None), vec![0..75, 75..80]);
    }
}
