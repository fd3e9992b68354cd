//! Emphasis: which parts of a prompt weigh how much, read as A1111's `parse_prompt_attention`
//! reads them.
//!
//! The prompt is cut into tokens, left to right, each the first of these that matches:
//! an escape (`\(`, `\)`, `\[`, `\]`, `\\`, or a lone `\`, which stands for nothing), `(`, `[`,
//! a closing weight `:w)` (spaces allowed around `w`, which is digits and dots with an optional
//! sign), `)`, `]`, a run of other text, or `:`. Text gets weight 1. A closing bracket
//! multiplies the weight of everything since its opening bracket: `)` by 1.1, `]` by 1/1.1,
//! `:w)` by `w`; a closing bracket with nothing open is text, and brackets left open multiply
//! up to the end (round ones first, then square ones, each in order of opening). `BREAK` as a
//! word in text (spaces around it dropped) becomes [`BREAK`] with weight −1. Runs of equal
//! weight are merged at the end. The weights are computed in `f64`, multiplied in A1111's order,
//! so they are bit-identical to Python's.
//!
//! One deliberate difference: a weight that is not a number (`(x:1.2.3)`) stops A1111's parser
//! with an error; here its token is text, so a prompt never fails.

/// The text A1111 gives a `BREAK` (with weight [`BREAK_WEIGHT`]).
pub const BREAK: &str = "BREAK";
/// The weight of a [`BREAK`].
pub const BREAK_WEIGHT: f64 = -1.0;

/// Multiplier of `( )`.
const ROUND: f64 = 1.1;
/// Multiplier of `[ ]`.
const SQUARE: f64 = 1.0 / 1.1;

/// A piece of prompt text and its weight (a [`BREAK`] has weight −1).
pub type Weighted = (String, f64);

/// One token of the emphasis syntax.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    /// Text standing for itself (an escape's character, or nothing for a lone `\`).
    Escaped(&'a str),
    Open(char),
    /// `:w)`, with the weight's text.
    Weight(&'a str, &'a str),
    Close(char),
    /// Plain text or a `:`.
    Text(&'a str),
}

/// The prompt's pieces and their weights, as `parse_prompt_attention` returns them.
pub fn parse_attention(prompt: &str) -> Vec<Weighted> {
    let mut res: Vec<Weighted> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Weighted>, from: usize, by: f64| {
        for piece in &mut res[from..] {
            piece.1 *= by;
        }
    };
    let mut rest = prompt;
    while let Some((token, after)) = next_token(rest) {
        rest = after;
        match token {
            Token::Escaped(text) => res.push((text.to_string(), 1.0)),
            Token::Open('(') => round.push(res.len()),
            Token::Open(_) => square.push(res.len()),
            Token::Weight(text, weight) => match (weight.parse::<f64>(), round.last()) {
                (Ok(w), Some(_)) if is_python_float(weight) => {
                    let from = round.pop().unwrap_or(0);
                    multiply(&mut res, from, w);
                }
                _ => push_text(&mut res, text),
            },
            Token::Close(')') if !round.is_empty() => {
                let from = round.pop().unwrap_or(0);
                multiply(&mut res, from, ROUND);
            }
            Token::Close(']') if !square.is_empty() => {
                let from = square.pop().unwrap_or(0);
                multiply(&mut res, from, SQUARE);
            }
            Token::Close(_) | Token::Text(_) => {
                let text = match token {
                    Token::Text(t) => t,
                    Token::Close(')') => ")",
                    _ => "]",
                };
                push_text(&mut res, text);
            }
        }
    }
    for from in round {
        multiply(&mut res, from, ROUND);
    }
    for from in square {
        multiply(&mut res, from, SQUARE);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<Weighted> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    merged
}

/// Appends text, split at each `BREAK` word.
fn push_text(res: &mut Vec<Weighted>, text: &str) {
    for (i, part) in split_break(text).into_iter().enumerate() {
        if i > 0 {
            res.push((BREAK.to_string(), BREAK_WEIGHT));
        }
        res.push((part.to_string(), 1.0));
    }
}

/// The next token of `s` and the rest, or `None` at the end.
fn next_token(s: &str) -> Option<(Token<'_>, &str)> {
    let c = s.chars().next()?;
    let len = c.len_utf8();
    Some(match c {
        '\\' => {
            // `\(` `\)` `\[` `\]` `\\` stand for their second character; any other backslash
            // is a token of its own that stands for nothing.
            match s[1..].chars().next() {
                Some(e @ ('(' | ')' | '[' | ']' | '\\')) => (
                    Token::Escaped(&s[1..1 + e.len_utf8()]),
                    &s[1 + e.len_utf8()..],
                ),
                _ => (Token::Escaped(""), &s[1..]),
            }
        }
        '(' | '[' => (Token::Open(c), &s[1..]),
        ')' | ']' => (Token::Close(c), &s[1..]),
        ':' => match closing_weight(s) {
            Some((end, weight)) => (Token::Weight(&s[..end], weight), &s[end..]),
            None => (Token::Text(&s[..1]), &s[1..]),
        },
        _ => {
            let end = s
                .char_indices()
                .find(|&(_, c)| matches!(c, '\\' | '(' | ')' | '[' | ']' | ':'))
                .map_or(s.len(), |(i, _)| i);
            let end = end.max(len);
            (Token::Text(&s[..end]), &s[end..])
        }
    })
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`: the match's length and the weight's text.
fn closing_weight(s: &str) -> Option<(usize, &str)> {
    let after_colon = &s[1..];
    let start = 1 + skip_spaces(after_colon);
    let body = &s[start..];
    let sign = usize::from(body.starts_with(['+', '-']));
    let digits = body[sign..]
        .find(|c: char| !(c == '.' || c.is_ascii_digit()))
        .unwrap_or(body.len() - sign);
    if digits == 0 {
        return None;
    }
    let weight_end = start + sign + digits;
    let close = weight_end + skip_spaces(&s[weight_end..]);
    s[close..]
        .starts_with(')')
        .then_some((close + 1, &s[start..weight_end]))
}

/// Bytes of leading whitespace (Python's `\s`).
fn skip_spaces(s: &str) -> usize {
    s.find(|c: char| !is_space(c)).unwrap_or(s.len())
}

/// Python's `\s` in a `str` pattern: Unicode whitespace and the four separators 0x1C–0x1F.
pub(super) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Whether text Rust parses as a float is one Python's `float()` takes too (digits and dots
/// only here, so: at most one dot and at least one digit; Rust alone would take `inf`).
fn is_python_float(s: &str) -> bool {
    let body = s.trim_start_matches(['+', '-']);
    body.matches('.').count() <= 1 && body.chars().any(|c| c.is_ascii_digit())
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`: the parts of `text` around each `BREAK` word, the
/// spaces around it dropped.
pub(super) fn split_break(text: &str) -> Vec<&str> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut parts = Vec::new();
    let mut part_start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(BREAK) {
        let at = search + found;
        let end = at + BREAK.len();
        let before_ok = text[..at].chars().next_back().is_none_or(|c| !is_word(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !is_word(c));
        if before_ok && after_ok {
            let lead = text[part_start..at]
                .char_indices()
                .rev()
                .take_while(|&(_, c)| is_space(c))
                .last()
                .map_or(at, |(i, _)| part_start + i);
            parts.push(&text[part_start..lead]);
            part_start = end + skip_spaces(&text[end..]);
            search = part_start.max(end);
        } else {
            search = at + 1;
        }
    }
    parts.push(&text[part_start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<(&'static str, f64)> {
        parse_attention(s)
            .into_iter()
            .map(|(t, w)| (&*t.leak(), w))
            .collect()
    }

    #[test]
    fn brackets_weights_and_escapes() {
        assert_eq!(parse("normal text"), [("normal text", 1.0)]);
        assert_eq!(
            parse("an (important) word"),
            [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
        );
        assert_eq!(parse("(unbalanced"), [("unbalanced", 1.1)]);
        assert_eq!(parse("\\(literal\\]"), [("(literal]", 1.0)]);
        assert_eq!(parse("(x: 1.5 )"), [("x", 1.5)]);
        assert_eq!(parse("[x]"), [("x", 1.0 / 1.1)]);
        assert_eq!(parse(""), [("", 1.0)]);
        assert_eq!(parse("a\\b"), [("ab", 1.0)]);
    }

    #[test]
    fn a_malformed_weight_is_text() {
        assert_eq!(parse("(x:1.2.3)"), [("x:1.2.3)", 1.1)]);
        assert_eq!(parse("(x:.)"), [("x:.)", 1.1)]);
    }

    #[test]
    fn break_splits_text_into_chunks() {
        assert_eq!(
            parse("a BREAK b"),
            [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
        );
        assert_eq!(parse("aBREAK b"), [("aBREAK b", 1.0)]);
        assert_eq!(split_break("BREAK"), ["", ""]);
        assert_eq!(split_break("x  BREAK\tBREAK y"), ["x", "", "y"]);
    }
}
