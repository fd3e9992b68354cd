//! A1111's splitting of a prompt into 75-token chunks (`tokenize_line` of
//! `modules/sd_hijack_clip.py`), with emphasis weights, `BREAK` and textual-inversion
//! embeddings.
//!
//! The prompt arrives as pieces: the token ids of each emphasis piece with its weight, or a
//! `BREAK`. Token by token: a comma records its position in the current chunk; when the current
//! chunk is full (75 tokens) and the token is not a comma, and the chunk's last comma is among
//! its last [`COMMA_BACKTRACK`] tokens, the tokens after that comma move to the next chunk; a
//! full chunk is closed before the token is added. Where an embedding's name (its token ids)
//! starts, the embedding's vectors take its place: as many placeholder tokens, moved whole to
//! the next chunk when they do not fit. A `BREAK` closes the current chunk, even an empty one.
//! At the end the current chunk is closed if it holds tokens or no chunk exists (an empty
//! prompt gives one empty chunk).

/// Tokens of a prompt per chunk (a text encoder sees 77: start, 75, end).
pub const CHUNK_TOKENS: usize = 75;
/// Tokens a CLIP text encoder takes.
pub const CONTEXT_TOKENS: usize = CHUNK_TOKENS + 2;
/// How far back from a chunk's end a comma may be for the chunk to end there instead
/// (A1111's `comma_padding_backtrack` default).
pub const COMMA_BACKTRACK: usize = 20;
/// The token id A1111 puts where an embedding's vectors go (replaced before the encoder runs).
pub const PLACEHOLDER: u32 = 0;

/// A piece of a prompt, tokenized.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Token ids and their weight.
    Tokens(Vec<u32>, f32),
    /// `BREAK`: start a new chunk.
    Break,
}

/// An embedding found at a position of a piece's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Which embedding (the finder's index).
    pub index: usize,
    /// How many ids its name takes.
    pub name_tokens: usize,
    /// How many vectors it has (tokens it takes in the chunk).
    pub vectors: usize,
}

/// One chunk before its start and end tokens: at most 75 tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawChunk {
    /// Token ids ([`PLACEHOLDER`] where an embedding goes).
    pub tokens: Vec<u32>,
    /// The weight of each token.
    pub multipliers: Vec<f32>,
    /// Embeddings: their first token's index in `tokens` and the finder's index.
    pub fixes: Vec<(usize, usize)>,
}

/// The chunks of a prompt and A1111's token count (75 for every chunk but the last, plus the
/// last one's tokens: what A1111's counter shows).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunked {
    /// The chunks, in order.
    pub chunks: Vec<RawChunk>,
    /// The token count.
    pub token_count: usize,
}

/// Splits `pieces` into chunks; `comma` is the id of `,</w>`, `find` the embedding (if any)
/// whose name starts at a position of a piece's ids.
pub fn chunk_pieces(
    pieces: &[Piece],
    comma: Option<u32>,
    find: &dyn Fn(&[u32], usize) -> Option<Found>,
) -> Chunked {
    let mut b = Builder::default();
    for piece in pieces {
        let (ids, weight) = match piece {
            Piece::Break => {
                b.close(false);
                continue;
            }
            Piece::Tokens(ids, weight) => (ids, *weight),
        };
        let mut position = 0;
        while position < ids.len() {
            let token = ids[position];
            if Some(token) == comma {
                b.last_comma = Some(b.chunk.tokens.len());
            } else if let Some(at) = b
                .last_comma
                .filter(|&at| backtracks(b.chunk.tokens.len(), at))
            {
                let moved = RawChunk {
                    tokens: b.chunk.tokens.split_off(at + 1),
                    multipliers: b.chunk.multipliers.split_off(at + 1),
                    fixes: Vec::new(),
                };
                // An embedding cut by the move stays with its chunk, as in A1111 (its
                // placeholders move, the record of where it starts does not).
                b.close(false);
                b.chunk = moved;
            }
            if b.chunk.tokens.len() == CHUNK_TOKENS {
                b.close(false);
            }
            match find(ids, position) {
                None => {
                    b.chunk.tokens.push(token);
                    b.chunk.multipliers.push(weight);
                    position += 1;
                }
                Some(found) => {
                    if b.chunk.tokens.len() + found.vectors > CHUNK_TOKENS {
                        b.close(false);
                    }
                    b.chunk.fixes.push((b.chunk.tokens.len(), found.index));
                    b.chunk
                        .tokens
                        .extend(std::iter::repeat_n(PLACEHOLDER, found.vectors));
                    b.chunk
                        .multipliers
                        .extend(std::iter::repeat_n(weight, found.vectors));
                    position += found.name_tokens.max(1);
                }
            }
        }
    }
    if !b.chunk.tokens.is_empty() || b.chunks.is_empty() {
        b.close(true);
    }
    Chunked {
        chunks: b.chunks,
        token_count: b.token_count,
    }
}

/// The chunks being built.
#[derive(Default)]
struct Builder {
    chunks: Vec<RawChunk>,
    chunk: RawChunk,
    token_count: usize,
    last_comma: Option<usize>,
}

impl Builder {
    /// Closes the current chunk (A1111's `next_chunk`).
    fn close(&mut self, is_last: bool) {
        self.token_count += if is_last {
            self.chunk.tokens.len()
        } else {
            CHUNK_TOKENS
        };
        self.last_comma = None;
        self.chunks.push(std::mem::take(&mut self.chunk));
    }
}

/// Whether a full chunk of `len` tokens with its last comma at `comma` ends after that comma.
fn backtracks(len: usize, comma: usize) -> bool {
    COMMA_BACKTRACK != 0 && len == CHUNK_TOKENS && len - comma <= COMMA_BACKTRACK
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMA: u32 = 267;

    fn no_embeddings(_: &[u32], _: usize) -> Option<Found> {
        None
    }

    fn chunked(pieces: &[Piece]) -> Chunked {
        chunk_pieces(pieces, Some(COMMA), &no_embeddings)
    }

    fn lengths(ids: &[u32]) -> Vec<usize> {
        chunked(&[Piece::Tokens(ids.to_vec(), 1.0)])
            .chunks
            .iter()
            .map(|c| c.tokens.len())
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
        let ids = vec![COMMA; 80];
        let c = chunk_pieces(&[Piece::Tokens(ids, 1.0)], None, &no_embeddings);
        let lengths: Vec<usize> = c.chunks.iter().map(|c| c.tokens.len()).collect();
        assert_eq!(lengths, [75, 5]);
    }

    #[test]
    fn weights_follow_their_tokens_and_break_starts_a_chunk() {
        let c = chunked(&[
            Piece::Tokens(vec![5, 6], 1.1),
            Piece::Break,
            Piece::Tokens(vec![7], 1.0),
        ]);
        assert_eq!(c.chunks.len(), 2);
        assert_eq!(c.chunks[0].multipliers, [1.1, 1.1]);
        assert_eq!(c.chunks[1].tokens, [7]);
        assert_eq!(c.token_count, 76);
        // BREAK first: an empty chunk.
        let c = chunked(&[Piece::Break, Piece::Tokens(vec![7], 1.0)]);
        assert_eq!(c.chunks[0].tokens, Vec::<u32>::new());
        assert_eq!(c.chunks.len(), 2);
        assert_eq!(chunked(&[Piece::Tokens(vec![], 1.0)]).token_count, 0);
    }

    #[test]
    fn embeddings_take_their_vectors_place_and_move_whole() {
        // The name is the two ids 8, 9; the embedding has 3 vectors.
        let find = |ids: &[u32], at: usize| {
            ids[at..].starts_with(&[8, 9]).then_some(Found {
                index: 4,
                name_tokens: 2,
                vectors: 3,
            })
        };
        let c = chunk_pieces(&[Piece::Tokens(vec![1, 8, 9, 2], 1.2)], None, &find);
        assert_eq!(c.chunks[0].tokens, [1, 0, 0, 0, 2]);
        assert_eq!(c.chunks[0].multipliers, [1.2; 5]);
        assert_eq!(c.chunks[0].fixes, [(1, 4)]);
        let mut ids = vec![1; 73];
        ids.extend([8, 9]);
        let c = chunk_pieces(&[Piece::Tokens(ids, 1.0)], None, &find);
        assert_eq!(c.chunks[0].tokens.len(), 73);
        assert_eq!(c.chunks[1].fixes, [(0, 4)]);
    }
}
