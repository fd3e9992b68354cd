//! Text clean-up before tokenization: `whitespace_clean(ftfy.fix_text(text)).lower()`.
//!
//! Of `ftfy.fix_text` (ftfy 6, default settings) this reproduces, in ftfy's order and repeated
//! until nothing changes:
//! - `unescape_html`: HTML entities (`&amp;`, `&eacute;`, `&EACUTE;`, `&#233;`, `&#xE9;`) for
//!   Latin-1, punctuation and common symbols, and numeric references as Python's
//!   `html.unescape` decodes them; as in ftfy, only before the first line holding a `<`;
//! - `fix_c1_controls`: U+0080..U+009F read as Windows-1252;
//! - `fix_latin_ligatures` (`ﬁ` → `fi`) and `fix_character_width` (full-width `Ａ` → `A`,
//!   half-width katakana to full width, U+3000 to a space);
//! - `uncurl_quotes` (`’` → `'`, `“` → `"`);
//! - `remove_terminal_escapes` (ANSI colour codes) and `remove_control_chars`;
//! - NFC normalisation, approximated by canonical composition of adjacent characters
//!   ([`compose`]: exact unless combining marks come in non-canonical order or follow an
//!   already composed character they do not compose with).
//!
//! Not reproduced: `fix_encoding` (mojibake repair, e.g. `Ã©` → `é`), and `fix_line_breaks`
//! and `fix_surrogates`, which cannot change the result (line breaks become spaces anyway;
//! Rust strings hold no surrogates).

use crate::conditioning::tokenizer::tables;

/// Cleans one piece of prompt text: ftfy fixes, runs of whitespace to one space, ends
/// trimmed, lower-cased.
pub(super) fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let collapsed: Vec<&str> = fixed.split_whitespace().collect();
    collapsed.join(" ").to_lowercase()
}

/// The reproduced part of `ftfy.fix_text`: line by line (each keeping its `\n`), HTML decoding
/// switched off for good from the first line holding a `<`.
fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for line in text.split_inclusive('\n') {
        if line.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(line, unescape));
    }
    out
}

/// Applies the fixes to one segment until it stops changing.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let mut next = if unescape {
            unescape_html(&text)
        } else {
            text.clone()
        };
        next = next.chars().map(fix_char).collect::<String>();
        next = remove_terminal_escapes(&next);
        next.retain(|c| !is_removed_control(c));
        next = compose(&next);
        if next == text {
            return next;
        }
        text = next;
    }
}

/// The per-character fixes, in ftfy's order: C1 controls, ligatures, width, curly quotes.
fn fix_char(c: char) -> String {
    let fixed = lookup(tables::CP1252_C1, c)
        .or_else(|| lookup(tables::LIGATURES, c))
        .or_else(|| lookup(tables::WIDTH_MAP, c));
    match fixed {
        Some(s) => s.chars().map(uncurl).collect(),
        None => uncurl(c).to_string(),
    }
}

/// The replacement of `c` in a table sorted by code point.
fn lookup(table: &'static [(u32, &'static str)], c: char) -> Option<&'static str> {
    let cp = u32::from(c);
    table
        .binary_search_by_key(&cp, |&(k, _)| k)
        .ok()
        .map(|i| table[i].1)
}

/// Straightens curly quotes.
fn uncurl(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

/// Control characters ftfy removes (tab, line feed, form feed and carriage return stay).
fn is_removed_control(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}'
    )
}

/// Removes ANSI terminal escapes: ESC `[`, digits and semicolons, one ASCII letter.
fn remove_terminal_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\u{1b}[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let params = after
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        if after[params..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            rest = &after[params + 1..];
        } else {
            out.push('\u{1b}');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Approximates NFC normalisation by canonical composition: each character is composed with
/// the (possibly already composed) character before it where Unicode defines a composite
/// (`e` + U+0301 → `é`, Hangul jamo → syllables). Exact for accents that are precomposed, or
/// decomposed in canonical order; nothing is decomposed or reordered first.
fn compose(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        match out.last_mut() {
            Some(last) => match compose_pair(*last, c) {
                Some(composed) => *last = composed,
                None => out.push(c),
            },
            None => out.push(c),
        }
    }
    out.into_iter().collect()
}

/// The canonical composite of `first` followed by `second`, if any.
fn compose_pair(first: char, second: char) -> Option<char> {
    const S_BASE: u32 = 0xac00;
    const L_BASE: u32 = 0x1100;
    const V_BASE: u32 = 0x1161;
    const T_BASE: u32 = 0x11a7;
    const L_COUNT: u32 = 19;
    const V_COUNT: u32 = 21;
    const T_COUNT: u32 = 28;
    let (a, b) = (u32::from(first), u32::from(second));
    let (l, v, t, s) = (
        a.wrapping_sub(L_BASE),
        b.wrapping_sub(V_BASE),
        b.wrapping_sub(T_BASE),
        a.wrapping_sub(S_BASE),
    );
    if l < L_COUNT && v < V_COUNT {
        return char::from_u32(S_BASE + (l * V_COUNT + v) * T_COUNT);
    }
    if s < L_COUNT * V_COUNT * T_COUNT && s % T_COUNT == 0 && (1..T_COUNT).contains(&t) {
        return char::from_u32(a + t);
    }
    let table = tables::COMPOSITIONS;
    let i = table
        .binary_search_by_key(&(a, b), |&(x, y, _)| (x, y))
        .ok()?;
    char::from_u32(table[i].2)
}

/// Decodes the HTML entities `&name;` and `&#number;` ftfy decodes (see the module docs).
fn unescape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let candidate = &rest[at..];
        match entity_len(candidate) {
            Some(len) => {
                let entity = &candidate[..len];
                out.push_str(&decode_entity(entity).unwrap_or_else(|| entity.to_string()));
                rest = &candidate[len..];
            }
            None => {
                out.push('&');
                rest = &candidate[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The length of an entity (`&#?[0-9A-Za-z]{1,24};`) at the start of `text`, if there is one.
fn entity_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let start = if bytes.get(1) == Some(&b'#') { 2 } else { 1 };
    let name = bytes[start..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let ok = (1..=24).contains(&name) && bytes.get(start + name) == Some(&b';');
    ok.then_some(start + name + 1)
}

/// The text an entity stands for, if ftfy decodes it.
fn decode_entity(entity: &str) -> Option<String> {
    if let Ok(i) = tables::HTML_ENTITIES.binary_search_by_key(&entity, |&(name, _)| name) {
        return Some(tables::HTML_ENTITIES[i].1.to_string());
    }
    let body = entity.strip_prefix("&#")?.strip_suffix(';')?;
    let decoded = decode_char_reference(body)?;
    // ftfy keeps the reference when the decoded text holds a semicolon.
    (!decoded.contains(';')).then_some(decoded)
}

/// A numeric character reference (`233` or `xE9`) as Python's `html.unescape` decodes it.
fn decode_char_reference(body: &str) -> Option<String> {
    let (digits, radix) = match body.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16),
        None => (body, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Saturate: anything past U+10FFFF decodes to U+FFFD.
    let value = u32::from_str_radix(digits, radix).unwrap_or(u32::MAX);
    Some(char_reference_text(value))
}

/// What `html.unescape` makes of code point `value`.
fn char_reference_text(value: u32) -> String {
    match value {
        0 => "\u{fffd}".to_string(),
        0x0d => "\r".to_string(),
        0x80..=0x9f => char::from_u32(value)
            .and_then(|c| lookup(tables::CP1252_C1, c))
            .unwrap_or("\u{fffd}")
            .to_string(),
        0xd800..=0xdfff | 0x11_0000.. => "\u{fffd}".to_string(),
        _ if is_invalid_code_point(value) => String::new(),
        _ => char::from_u32(value).map_or_else(|| "\u{fffd}".to_string(), String::from),
    }
}

/// Code points `html.unescape` drops: C0 controls but whitespace, DEL, and non-characters.
fn is_invalid_code_point(value: u32) -> bool {
    matches!(value, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef)
        || value & 0xfffe == 0xfffe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities() {
        assert_eq!(unescape_html("a &amp; b &lt;c&gt;"), "a & b <c>");
        assert_eq!(unescape_html("&EACUTE;t&eacute;"), "\u{c9}t\u{e9}");
        assert_eq!(unescape_html("&#233;&#xe9;&#XE9;"), "\u{e9}\u{e9}\u{e9}");
        assert_eq!(
            unescape_html("&#150;&#0;&#1;&#59;"),
            "\u{2013}\u{fffd}&#59;"
        );
        assert_eq!(unescape_html("&bogus; & &; &amp"), "&bogus; & &; &amp");
        assert_eq!(unescape_html("&#99999999999999;"), "\u{fffd}");
    }

    #[test]
    fn fixes_repeat_until_stable() {
        assert_eq!(fix_text("&amp;amp;lt;"), "<");
        assert_eq!(fix_text("<b> &amp;"), "<b> &amp;");
        assert_eq!(fix_text("&amp;\n<b> &amp;\n&amp;"), "&\n<b> &amp;\n&amp;");
    }

    #[test]
    fn characters() {
        assert_eq!(
            fix_text("\u{fb01}\u{ff21}\u{3000}\u{2019}\u{201c}"),
            "fiA '\""
        );
        assert_eq!(fix_text("a\u{1b}[31mb\u{1b}[0m\u{1b}[;!\u{7f}"), "ab[;!");
    }

    #[test]
    fn composes_canonical_pairs() {
        assert_eq!(compose("e\u{301}a\u{308}"), "\u{e9}\u{e4}");
        assert_eq!(compose("e\u{323}\u{302}"), "\u{1ec7}");
        assert_eq!(compose("\u{1100}\u{1161}\u{11a8}"), "\u{ac01}");
        assert_eq!(compose("\u{e9}\u{301}x"), "\u{e9}\u{301}x");
    }

    #[test]
    fn clean_collapses_and_lowercases() {
        assert_eq!(clean("  A\tB\n\n C\u{a0}D  "), "a b c d");
    }
}
