//! Byte-level byte-pair encoding: bytes mapped to printable characters, merged by rank.

use std::collections::HashMap;
use std::sync::Mutex;

/// Word cache entries kept before the cache is emptied (bounds memory on endless input).
const CACHE_LIMIT: usize = 65_536;

/// The printable character standing for each byte, in CLIP's vocabulary order: bytes that are
/// printable Latin-1 characters (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the
/// other 68 bytes, in increasing order, take the characters from U+0100 on.
pub(super) fn byte_chars() -> Vec<char> {
    let mut order: Vec<u8> = (0..=255u8).filter(|&b| stands_for_itself(b)).collect();
    order.extend((0..=255u8).filter(|&b| !stands_for_itself(b)));
    order.into_iter().map(char_of_byte).collect()
}

/// Whether byte `b` is its own stand-in (a printable, non-space Latin-1 character).
fn stands_for_itself(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff)
}

/// The stand-in character of byte `b`.
fn char_of_byte(b: u8) -> char {
    if stands_for_itself(b) {
        char::from(b)
    } else {
        let rank = (0..b).filter(|&x| !stands_for_itself(x)).count() as u32;
        char::from_u32(0x100 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// Merge tables over interned symbols. Symbol ids are vocabulary ids where the symbol is in
/// the vocabulary; symbols that are not (possible only with an inconsistent vocabulary) get
/// ids past the largest vocabulary id and encode as the unknown token, as in `transformers`.
#[derive(Debug)]
pub(super) struct Bpe {
    /// Symbol of each byte inside a word.
    byte_symbol: [u32; 256],
    /// Symbol of each byte ending a word (with `</w>`).
    byte_end_symbol: [u32; 256],
    /// `(left, right)` → `(rank, merged symbol)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Symbols at or above this id are not in the vocabulary.
    first_unknown: u32,
    /// The unknown token's id.
    unk: u32,
    /// Stand-in character → byte, for decoding.
    char_byte: HashMap<char, u8>,
    /// Encoded words by text.
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl Bpe {
    /// Builds the tables; `merges` in rank order, `unk` the id given to unknown symbols.
    pub(super) fn new(
        vocab: &HashMap<String, u32>,
        merges: &[Option<(String, String)>],
        unk: u32,
    ) -> Self {
        let first_unknown = vocab.values().max().map_or(0, |&m| m + 1);
        let mut interner = Interner {
            vocab,
            extra: HashMap::new(),
            next: first_unknown,
        };
        let mut byte_symbol = [0u32; 256];
        let mut byte_end_symbol = [0u32; 256];
        let mut char_byte = HashMap::new();
        for b in 0..=255u8 {
            let c = char_of_byte(b);
            byte_symbol[usize::from(b)] = interner.intern(&c.to_string());
            byte_end_symbol[usize::from(b)] = interner.intern(&format!("{c}</w>"));
            char_byte.insert(c, b);
        }
        let mut merge_map = HashMap::with_capacity(merges.len());
        let mut joined = String::new();
        for (rank, (left, right)) in (0u32..)
            .zip(merges)
            .filter_map(|(r, m)| Some((r, m.as_ref()?)))
        {
            let pair = (interner.intern(left), interner.intern(right));
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let merged = interner.intern(&joined);
            // A repeated pair keeps its last rank, as a Python dict built from the list does.
            merge_map.insert(pair, (rank, merged));
        }
        Self {
            byte_symbol,
            byte_end_symbol,
            merges: merge_map,
            first_unknown,
            unk,
            char_byte,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Appends the token ids of one pre-tokenized word (non-empty) to `out`.
    pub(super) fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        if let Some(ids) = self.cached(word) {
            out.extend_from_slice(&ids);
            return;
        }
        let ids: Vec<u32> = self
            .merge_all(self.initial_symbols(word))
            .into_iter()
            .map(|s| if s < self.first_unknown { s } else { self.unk })
            .collect();
        out.extend_from_slice(&ids);
        self.store(word, ids);
    }

    /// The cached ids of `word`, if any.
    fn cached(&self, word: &str) -> Option<Vec<u32>> {
        let cache = self.cache.lock().ok()?;
        cache.get(word).cloned()
    }

    /// Caches the ids of `word` (the cache is emptied when full).
    fn store(&self, word: &str, ids: Vec<u32>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(word.to_string(), ids);
        }
    }

    /// One symbol per UTF-8 byte of `word`, the last one marked as the end of the word.
    fn initial_symbols(&self, word: &str) -> Vec<u32> {
        let bytes = word.as_bytes();
        let mut symbols: Vec<u32> = bytes
            .iter()
            .map(|&b| self.byte_symbol[usize::from(b)])
            .collect();
        if let (Some(last), Some(&b)) = (symbols.last_mut(), bytes.last()) {
            *last = self.byte_end_symbol[usize::from(b)];
        }
        symbols
    }

    /// Repeatedly merges the adjacent pair of lowest rank (every occurrence, left to right)
    /// until no pair can be merged.
    fn merge_all(&self, mut symbols: Vec<u32>) -> Vec<u32> {
        while symbols.len() > 1 {
            let Some((pair, merged)) = self.best_pair(&symbols) else {
                break;
            };
            symbols = merge_pair(&symbols, pair, merged);
        }
        symbols
    }

    /// The mergeable adjacent pair of lowest rank, with its merged symbol.
    fn best_pair(&self, symbols: &[u32]) -> Option<((u32, u32), u32)> {
        symbols
            .windows(2)
            .filter_map(|w| {
                let pair = (w[0], w[1]);
                self.merges
                    .get(&pair)
                    .map(|&(rank, merged)| (rank, pair, merged))
            })
            .min_by_key(|&(rank, _, _)| rank)
            .map(|(_, pair, merged)| (pair, merged))
    }

    /// Appends the bytes a token string stands for; characters that stand for no byte are
    /// kept as their UTF-8 (so `</w>` survives for the caller to replace).
    pub(super) fn token_bytes(&self, token: &str, out: &mut Vec<u8>) {
        for c in token.chars() {
            match self.char_byte.get(&c) {
                Some(&b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }
}

/// `symbols` with every non-overlapping occurrence of `pair`, left to right, replaced by
/// `merged`.
fn merge_pair(symbols: &[u32], pair: (u32, u32), merged: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && (symbols[i], symbols[i + 1]) == pair {
            out.push(merged);
            i += 2;
        } else {
            out.push(symbols[i]);
            i += 1;
        }
    }
    out
}

/// Assigns ids to symbol strings: vocabulary ids first, new ids for the rest.
struct Interner<'a> {
    /// The vocabulary.
    vocab: &'a HashMap<String, u32>,
    /// Symbols not in the vocabulary, with their new ids.
    extra: HashMap<String, u32>,
    /// The next new id.
    next: u32,
}

impl Interner<'_> {
    /// The id of `symbol`, assigning a new one if needed.
    fn intern(&mut self, symbol: &str) -> u32 {
        if let Some(&id) = self.vocab.get(symbol).or_else(|| self.extra.get(symbol)) {
            return id;
        }
        let id = self.next;
        self.next += 1;
        self.extra.insert(symbol.to_string(), id);
        id
    }
}
