//! CLIP's pre-tokenisation: the words byte-pair encoding works on.
//!
//! Equivalent to finding all matches of CLIP's pattern, compiled case-insensitively by the
//! Python `regex` module:
//!
//! ```text
//! <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//! ```
//!
//! At each position the first alternative that matches wins (not the longest); characters no
//! alternative matches (whitespace) are skipped. Case-insensitive matching uses simple case
//! folding, under which `ſ` (U+017F) matches `s`. U+0345 (combining ypogegrammeni, which folds
//! to a letter) matches neither the letter class nor its complement and is skipped like
//! whitespace, as the `regex` module does.

use crate::conditioning::tokenizer::tables;

/// The two special-token spellings, matched case-insensitively.
const SPECIALS: [&str; 2] = ["<|startoftext|>", "<|endoftext|>"];
/// The contractions, after the apostrophe, in pattern order.
const CONTRACTIONS: [&str; 7] = ["s", "t", "re", "ve", "m", "ll", "d"];

/// The words of `text`, in order.
pub(super) fn pretokenize(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let len = match_len(rest);
        let step = if len == 0 { c.len_utf8() } else { len };
        if len > 0 {
            words.push(&rest[..len]);
        }
        rest = &rest[step..];
    }
    words
}

/// The byte length of the pattern's match at the start of `text` (0 when nothing matches).
fn match_len(text: &str) -> usize {
    let alternatives = [
        special_len,
        contraction_len,
        letters_len,
        number_len,
        others_len,
    ];
    alternatives
        .iter()
        .map(|alternative| alternative(text))
        .find(|&len| len > 0)
        .unwrap_or(0)
}

/// A special-token spelling at the start of `text`.
fn special_len(text: &str) -> usize {
    SPECIALS
        .iter()
        .find_map(|special| folded_prefix_len(text, special))
        .unwrap_or(0)
}

/// An apostrophe and a contraction at the start of `text`.
fn contraction_len(text: &str) -> usize {
    let Some(after) = text.strip_prefix('\'') else {
        return 0;
    };
    CONTRACTIONS
        .iter()
        .find_map(|tail| folded_prefix_len(after, tail))
        .map_or(0, |len| 1 + len)
}

/// A run of letters at the start of `text`.
fn letters_len(text: &str) -> usize {
    run_len(text, is_letter)
}

/// One number character at the start of `text`.
fn number_len(text: &str) -> usize {
    text.chars()
        .next()
        .filter(|&c| is_number(c))
        .map_or(0, char::len_utf8)
}

/// A run of characters that are neither whitespace, letters nor numbers.
fn others_len(text: &str) -> usize {
    run_len(text, is_other)
}

/// The byte length of the leading run of characters satisfying `class`.
fn run_len(text: &str, class: fn(char) -> bool) -> usize {
    text.char_indices()
        .find(|&(_, c)| !class(c))
        .map_or(text.len(), |(i, _)| i)
}

/// The byte length of the prefix of `text` equal to ASCII `pattern` under simple case folding.
fn folded_prefix_len(text: &str, pattern: &str) -> Option<usize> {
    let mut len = 0;
    let mut chars = text.chars();
    for p in pattern.chars() {
        let c = chars.next()?;
        if !folds_to(c, p) {
            return None;
        }
        len += c.len_utf8();
    }
    Some(len)
}

/// Whether `c` equals the ASCII character `p` under simple case folding.
fn folds_to(c: char, p: char) -> bool {
    c.eq_ignore_ascii_case(&p) || (p == 's' && c == '\u{17f}') || (p == 'k' && c == '\u{212a}')
}

/// `\p{L}`.
pub(super) fn is_letter(c: char) -> bool {
    in_ranges(tables::LETTERS, c)
}

/// `\p{N}`.
pub(super) fn is_number(c: char) -> bool {
    in_ranges(tables::NUMBERS, c)
}

/// `[^\s\p{L}\p{N}]` (case-insensitive, which leaves out U+0345).
fn is_other(c: char) -> bool {
    !c.is_whitespace() && !is_letter(c) && !is_number(c) && c != '\u{345}'
}

/// Whether `c` lies in one of the sorted, disjoint inclusive `ranges`.
fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let cp = u32::from(c);
    let i = ranges.partition_point(|&(_, hi)| hi < cp);
    ranges.get(i).is_some_and(|&(lo, _)| lo <= cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_the_pattern() {
        assert_eq!(
            pretokenize("don't stop!!! 1girl, 8k <|endoftext|>x"),
            [
                "don",
                "'t",
                "stop",
                "!!!",
                "1",
                "girl",
                ",",
                "8",
                "k",
                "<|endoftext|>",
                "x"
            ]
        );
        assert_eq!(pretokenize("''s 'sa 'll"), ["''", "s", "'s", "a", "'ll"]);
        assert_eq!(
            pretokenize("it'\u{17f} a\u{345}b"),
            ["it", "'\u{17f}", "a", "b"]
        );
        assert_eq!(pretokenize("!!<|endoftext|>"), ["!!<|", "endoftext", "|>"]);
        assert!(pretokenize(" \t ").is_empty());
    }

    #[test]
    fn classes() {
        assert!(is_letter('a') && is_letter('\u{65e5}') && is_letter('\u{e9}'));
        assert!(!is_letter('1') && !is_letter('\u{301}') && !is_letter('_'));
        assert!(is_number('7') && is_number('\u{bd}') && is_number('\u{2163}'));
        assert!(is_other('\u{301}') && is_other('\u{1f600}') && !is_other(' '));
    }
}
