//! A1111's `parameters` infotext: writing it exactly as `create_infotext` does, and reading it
//! exactly as `parse_generation_parameters` does (A1111 v1.10), without A1111's defaults.
//!
//! The text is the prompt, an optional `Negative prompt: ...` line, and a last line of
//! `key: value` pairs joined by `, `. Values holding `,`, `\n` or `:` are written as JSON strings.
//! The reader finds the pairs with A1111's pattern
//! `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`, emulated here by hand, quirks and all
//! (see [`Infotext::parse`]).

/// Python's `repr(float)`, as values are written (defined with the settings, whose values it
/// writes).
pub use crate::settings::py_float;

/// The text of a `Negative prompt:` line's prefix.
const NEGATIVE_PREFIX: &str = "Negative prompt:";

/// An A1111 infotext: prompt, negative prompt and the ordered generation parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Infotext {
    /// The prompt; may span several lines.
    pub prompt: String,
    /// The negative prompt; empty when there is none. May span several lines.
    pub negative_prompt: String,
    /// The parameters in order, as plain (unquoted) text: `("Steps", "20")`,
    /// `("Size", "512x768")`. Values are Python's `str(v)`; see [`py_float`] for floats.
    pub params: Vec<(String, String)>,
}

impl Infotext {
    /// The infotext as A1111's `create_infotext` writes it.
    ///
    /// `prompt`, then `\nNegative prompt: {negative}` when the negative prompt is not empty,
    /// then `\n` and the parameters joined by `, `: each `key: value` with the value passed
    /// through [`quote`], or just `key` when the value equals the key. The whole text is then
    /// stripped of surrounding whitespace (Python's `str.strip`).
    pub fn to_text(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|(k, v)| param_text(k, v)).collect();
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push('\n');
            text.push_str(NEGATIVE_PREFIX);
            text.push(' ');
            text.push_str(&self.negative_prompt);
        }
        text.push('\n');
        text.push_str(&params.join(", "));
        py_strip(&text).to_owned()
    }

    /// Reads an infotext as A1111's `parse_generation_parameters` does.
    ///
    /// The stripped text is split on `\n`. The last line holds the parameters only if A1111's
    /// pattern finds at least 3 pairs in it; otherwise it is part of the prompt. Every other
    /// line is stripped; lines up to the first one starting with `Negative prompt:` form the
    /// prompt, the rest (with that prefix removed) the negative prompt, joined by `\n`.
    ///
    /// Quirks kept from A1111: a value that starts and ends with `"` is decoded as JSON (and
    /// kept as it is if that fails); a pair with an empty value is dropped; a key written
    /// without a value (`key == value` on writing) is not found; duplicate keys are all kept
    /// here, and [`Infotext::get`] returns the last, as A1111's dict would. `WxH` values stay
    /// whole (see [`Infotext::size`] and [`Infotext::fields`]).
    ///
    /// Known differences from Python, all in exotic input: `\w` is Rust's alphanumeric test
    /// (which also accepts a few combining marks Python rejects), and a JSON `\uXXXX` escape
    /// of a lone surrogate decodes to U+FFFD.
    pub fn parse(text: &str) -> Infotext {
        let mut lines: Vec<&str> = py_strip(text).split('\n').collect();
        let last = lines.pop().unwrap_or_default();
        let mut matches = find_params(last);
        if matches.len() < 3 {
            lines.push(last);
            matches.clear();
        }
        let (prompt, negative_prompt) = split_prompts(&lines);
        let params = matches
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, unquote(v)))
            .collect();
        Infotext {
            prompt,
            negative_prompt,
            params,
        }
    }

    /// The value of parameter `key` (the last one if it occurs more than once), as text.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `(width, height)` of a `WxH` parameter such as `Size: 512x768`, if `key` holds one
    /// (matched like A1111's `^(\d+)x(\d+)$`, with ASCII digits) and both fit a `u32`.
    pub fn size(&self, key: &str) -> Option<(u32, u32)> {
        let (w, h) = split_size(self.get(key)?)?;
        Some((w.parse().ok()?, h.parse().ok()?))
    }

    /// The dict A1111's `parse_generation_parameters` builds before filling in its defaults:
    /// `Prompt`, `Negative prompt`, then each parameter in order, a `WxH` value split into
    /// `{key}-1` and `{key}-2`, a repeated key keeping its first position and its last value.
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut res = Vec::with_capacity(self.params.len() + 4);
        dict_set(&mut res, "Prompt", &self.prompt);
        dict_set(&mut res, "Negative prompt", &self.negative_prompt);
        for (k, v) in &self.params {
            match split_size(v) {
                Some((w, h)) => {
                    dict_set(&mut res, &format!("{k}-1"), w);
                    dict_set(&mut res, &format!("{k}-2"), h);
                }
                None => dict_set(&mut res, k, v),
            }
        }
        res
    }
}

/// Reads an infotext; the same as [`Infotext::parse`].
pub fn parse(text: &str) -> Infotext {
    Infotext::parse(text)
}

/// A value as A1111's `quote` writes it: unchanged, unless it holds `,`, `\n` or `:`, in
/// which case it becomes a JSON string (`json.dumps(v, ensure_ascii=False)`).
pub fn quote(value: &str) -> String {
    if value.contains([',', '\n', ':']) {
        json_quote(value)
    } else {
        value.to_owned()
    }
}

/// One `key: value` entry of the parameter line, or just `key` when the value equals it.
fn param_text(key: &str, value: &str) -> String {
    if key == value {
        key.to_owned()
    } else {
        format!("{key}: {}", quote(value))
    }
}

/// `json.dumps(s, ensure_ascii=False)` of a string.
fn json_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as A1111's loop leaves it: JSON-decoded if it starts and ends with `"` and
/// decodes, otherwise unchanged.
fn unquote(value: String) -> String {
    if value.starts_with('"') && value.ends_with('"') {
        json_unquote(&value).unwrap_or(value)
    } else {
        value
    }
}

/// Python's `json.loads` of a text that must be a single JSON string (surrounding JSON
/// whitespace allowed after it); `None` where Python raises.
fn json_unquote(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.first() != Some(&'"') {
        return None;
    }
    let mut out = String::new();
    let mut i = 1;
    loop {
        match *chars.get(i)? {
            '"' => break,
            '\\' => i = json_escape(&chars, i + 1, &mut out)?,
            c if (c as u32) < 0x20 => return None,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let rest = chars.get(i + 1..).unwrap_or_default();
    rest.iter()
        .all(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
        .then_some(out)
}

/// Decodes the JSON escape whose letter is at `i` into `out`; returns the index after it.
fn json_escape(chars: &[char], i: usize, out: &mut String) -> Option<usize> {
    let simple = match *chars.get(i)? {
        '"' => '"',
        '\\' => '\\',
        '/' => '/',
        'b' => '\u{8}',
        'f' => '\u{c}',
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'u' => return json_unicode_escape(chars, i + 1, out),
        _ => return None,
    };
    out.push(simple);
    Some(i + 1)
}

/// Decodes the four hex digits at `i` of a `\u` escape (and a following low surrogate, as
/// Python pairs them); returns the index after what it used.
fn json_unicode_escape(chars: &[char], i: usize, out: &mut String) -> Option<usize> {
    let high = hex4(chars, i)?;
    let mut next = i + 4;
    let mut code = high;
    let followed_by_escape = chars.get(next) == Some(&'\\') && chars.get(next + 1) == Some(&'u');
    if (0xD800..0xDC00).contains(&high) && followed_by_escape {
        let low = hex4(chars, next + 2)?;
        if (0xDC00..0xE000).contains(&low) {
            code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
            next += 6;
        }
    }
    out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
    Some(next)
}

/// The value of exactly four hex digits at `i`.
fn hex4(chars: &[char], i: usize) -> Option<u32> {
    let digits = chars.get(i..i + 4)?;
    digits
        .iter()
        .try_fold(0u32, |acc, c| Some(acc * 16 + c.to_digit(16)?))
}

/// Prompt and negative prompt from the lines before the parameter line, as A1111 joins them.
fn split_prompts(lines: &[&str]) -> (String, String) {
    let mut prompt = String::new();
    let mut negative = String::new();
    let mut in_negative = false;
    for line in lines {
        let mut line = py_strip(line);
        if let Some(rest) = line.strip_prefix(NEGATIVE_PREFIX) {
            in_negative = true;
            line = py_strip(rest);
        }
        append_line(
            if in_negative {
                &mut negative
            } else {
                &mut prompt
            },
            line,
        );
    }
    (prompt, negative)
}

/// A1111's `s += ("" if s == "" else "\n") + line`.
fn append_line(text: &mut String, line: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(line);
}

/// Python's `str.strip()`: removes leading and trailing whitespace as `str.isspace` sees it.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `str.isspace` for one character (Unicode White_Space plus U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` in a str pattern.
fn py_word(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// A character of the key class `[\w \-/]`.
fn key_char(c: char) -> bool {
    py_word(c) || matches!(c, ' ' | '-' | '/')
}

/// One match of A1111's parameter pattern.
struct ParamMatch {
    /// The key group.
    key: String,
    /// The raw value group (still quoted if it was).
    value: String,
    /// Where the match ends (after the `,`, if any).
    end: usize,
}

/// `re.findall` of A1111's parameter pattern over `line`: the raw `(key, value)` groups.
fn find_params(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        match match_param_at(&chars, pos) {
            Ok(m) => {
                found.push((m.key, m.value));
                pos = m.end;
            }
            Err(next) => pos = next,
        }
    }
    found
}

/// The pattern anchored at `start`. On failure, returns the next start worth trying: every
/// start before it fails the same way, because `\s*` and the key class run to the same place.
fn match_param_at(chars: &[char], start: usize) -> Result<ParamMatch, usize> {
    let key_start = skip_spaces(chars, start);
    if !chars.get(key_start).is_some_and(|&c| py_word(c)) {
        return Err(key_start + 1);
    }
    let mut key_end = key_start + 1;
    while chars.get(key_end).is_some_and(|&c| key_char(c)) {
        key_end += 1;
    }
    // `[\w \-/]+` needs one character after the `\w`, and the key class never holds `:`,
    // so no shorter key can be followed by one.
    if key_end - key_start < 2 || chars.get(key_end) != Some(&':') {
        return Err(key_end);
    }
    let value_start = skip_spaces(chars, key_end + 1);
    let (value_end, end) =
        match_quoted(chars, value_start).unwrap_or_else(|| match_unquoted(chars, value_start));
    Ok(ParamMatch {
        key: chars[key_start..key_end].iter().collect(),
        value: chars[value_start..value_end].iter().collect(),
        end,
    })
}

/// `\s*` from `i`: the index of the first non-space character.
fn skip_spaces(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|&c| py_space(c)) {
        i += 1;
    }
    i
}

/// `"(?:\\.|[^\\"])+"(?:,|$)` at `i`: the end of the value group and of the match.
fn match_quoted(chars: &[char], i: usize) -> Option<(usize, usize)> {
    if chars.get(i) != Some(&'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match *chars.get(j)? {
            '"' => break,
            '\\' if chars.get(j + 1).is_some_and(|&c| c != '\n') => j += 2,
            '\\' => return None,
            _ => j += 1,
        }
    }
    if j == i + 1 {
        return None; // `+` needs at least one character between the quotes
    }
    let value_end = j + 1;
    match chars.get(value_end) {
        Some(',') => Some((value_end, value_end + 1)),
        None => Some((value_end, value_end)),
        Some('\n') if value_end + 1 == chars.len() => Some((value_end, value_end)),
        Some(_) => None,
    }
}

/// `[^,]*(?:,|$)` at `i`, which always matches: the end of the value group and of the match.
fn match_unquoted(chars: &[char], i: usize) -> (usize, usize) {
    match chars[i..].iter().position(|&c| c == ',') {
        Some(n) => (i + n, i + n + 1),
        None => (chars.len(), chars.len()),
    }
}

/// A1111's `^(\d+)x(\d+)$` (ASCII digits; `$` also matches before a final `\n`).
fn split_size(value: &str) -> Option<(&str, &str)> {
    let value = value.strip_suffix('\n').unwrap_or(value);
    let (w, h) = value.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then_some((w, h))
}

/// Python's `d[key] = value` on an insertion-ordered list of pairs.
fn dict_set(dict: &mut Vec<(String, String)>, key: &str, value: &str) {
    match dict.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_owned(),
        None => dict.push((key.to_owned(), value.to_owned())),
    }
}

#[cfg(test)]
mod tests;
