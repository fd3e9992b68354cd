//! A1111's `parameters` infotext: writing it exactly as `create_infotext` does, and reading it
//! exactly as `parse_generation_parameters` does (A1111 v1.10), without A1111's defaults.
//!
//! The text is the prompt, an optional `Negative prompt: ...` line, and a last line of
//! `key: value` pairs joined by `, `. Values holding `,`, `\n` or `:` are written as JSON strings.
//! The reader finds the pairs with A1111's pattern
//! `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`, emulated here by hand, quirks and all
//! (see [`Infotext::parse`]).

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

/// Python's `repr(float)`: the shortest text that reads back as `v`, with `.0` on whole
/// numbers and exponent form below 1e-4 or from 1e16 (`7.0`, `0.35`, `1e-05`, `1e+16`,
/// `inf`, `nan`).
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    let sci = format!("{:e}", v.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if v.is_sign_negative() { "-" } else { "" };
    format!("{sign}{}", py_float_body(&digits, exponent))
}

/// Python's layout of the significant `digits` of a float whose leading digit has the
/// decimal `exponent`.
fn py_float_body(digits: &str, exponent: i32) -> String {
    let point = exponent + 1; // position of the decimal point after the first digit
    if !(-4 < point && point <= 16) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{first}{fraction}e{exp_sign}{:02}", exponent.unsigned_abs());
    }
    if point <= 0 {
        return format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize));
    }
    let point = point as usize;
    if digits.len() <= point {
        format!("{digits}{}.0", "0".repeat(point - digits.len()))
    } else {
        format!("{}.{}", &digits[..point], &digits[point..])
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
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BASIC: &str = "masterpiece, best quality, 1girl\n\
        Negative prompt: lowres, bad anatomy\n\
        Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234567890, \
        Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, \
        Denoising strength: 0.35, Version: v1.10.1";

    #[test]
    fn parses_a_typical_infotext() {
        let info = Infotext::parse(BASIC);
        assert_eq!(info.prompt, "masterpiece, best quality, 1girl");
        assert_eq!(info.negative_prompt, "lowres, bad anatomy");
        assert_eq!(info.params.len(), 10);
        assert_eq!(info.get("Sampler"), Some("DPM++ 2M"));
        assert_eq!(info.get("Model hash"), Some("6ce0161689"));
        assert_eq!(info.get("Version"), Some("v1.10.1"));
        assert_eq!(info.get("Size"), Some("512x768"));
        assert_eq!(info.size("Size"), Some((512, 768)));
        assert_eq!(info.size("Seed"), None);
        assert_eq!(info.get("Missing"), None);
        assert_eq!(info.to_text(), BASIC);
    }

    #[test]
    fn fields_split_sizes_like_a1111() {
        let info = Infotext::parse("p\nSteps: 20, Size: 512x768, Seed: 1");
        let fields = info.fields();
        assert_eq!(
            fields,
            pairs(&[
                ("Prompt", "p"),
                ("Negative prompt", ""),
                ("Steps", "20"),
                ("Size-1", "512"),
                ("Size-2", "768"),
                ("Seed", "1"),
            ])
        );
    }

    #[test]
    fn multi_line_prompts_and_negative_prompts() {
        let text = "a castle,\nsunset\n\nwide shot\nNegative prompt: blurry,\nwatermark\n\
                    Steps: 20, Seed: 1, CFG scale: 7";
        let info = Infotext::parse(text);
        assert_eq!(info.prompt, "a castle,\nsunset\n\nwide shot");
        assert_eq!(info.negative_prompt, "blurry,\nwatermark");
        assert_eq!(info.to_text(), text);
    }

    #[test]
    fn emphasis_and_lora_tags_stay_in_the_prompt() {
        let prompt = "(masterpiece:1.2), 1girl, <lora:add_detail:0.8>, [a:b:0.5]";
        let text = format!("{prompt}\nSteps: 30, Sampler: Euler a, CFG scale: 5.5");
        let info = Infotext::parse(&text);
        assert_eq!(info.prompt, prompt);
        assert_eq!(info.negative_prompt, "");
        assert_eq!(info.get("CFG scale"), Some("5.5"));
    }

    #[test]
    fn quoted_values_with_commas_and_colons() {
        let info = Infotext {
            prompt: "p".into(),
            negative_prompt: String::new(),
            params: pairs(&[
                ("Steps", "20"),
                ("Lora hashes", "name: abc123, other: def456"),
                ("Hires prompt", "line one\nline \"two\""),
                ("Seed", "1"),
            ]),
        };
        let text = info.to_text();
        assert_eq!(
            text,
            "p\nSteps: 20, Lora hashes: \"name: abc123, other: def456\", \
             Hires prompt: \"line one\\nline \\\"two\\\"\", Seed: 1"
        );
        assert_eq!(Infotext::parse(&text), info);
    }

    #[test]
    fn escaped_quotes_inside_quoted_values() {
        let info = Infotext::parse(
            r#"x
Steps: 20, Wildcard: "say \"hi\", friend", Seed: 3"#,
        );
        assert_eq!(info.get("Wildcard"), Some("say \"hi\", friend"));
        assert_eq!(info.get("Seed"), Some("3"));
    }

    #[test]
    fn a_short_last_line_belongs_to_the_prompt() {
        let info = Infotext::parse("a tree\nSteps: 20, Seed: 5");
        assert_eq!(info.prompt, "a tree\nSteps: 20, Seed: 5");
        assert!(info.params.is_empty());
        let colons = Infotext::parse("a photo, style: realism, lighting: soft");
        assert_eq!(colons.prompt, "a photo, style: realism, lighting: soft");
        assert!(colons.params.is_empty());
    }

    #[test]
    fn unicode_prompts_and_keys() {
        let text = "桜の木の下の少女, 🌸, café\nNegative prompt: 低品質\n\
                    Steps: 20, Größe: 5, 模型: 动漫, User: José";
        let info = Infotext::parse(text);
        assert_eq!(info.prompt, "桜の木の下の少女, 🌸, café");
        assert_eq!(info.negative_prompt, "低品質");
        assert_eq!(info.get("Größe"), Some("5"));
        assert_eq!(info.get("模型"), Some("动漫"));
        assert_eq!(info.to_text(), text);
    }

    #[test]
    fn empty_negative_prompt_is_left_out() {
        let info = Infotext {
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            params: pairs(&[("Steps", "20"), ("Seed", "1"), ("CFG scale", "7")]),
        };
        assert_eq!(info.to_text(), "a cat\nSteps: 20, Seed: 1, CFG scale: 7");
        assert_eq!(Infotext::parse(&info.to_text()), info);
    }

    #[test]
    fn writer_quirks() {
        let info = Infotext {
            prompt: "  p ".into(),
            negative_prompt: String::new(),
            params: pairs(&[
                ("Hires fix", "Hires fix"),
                ("Model", "C:\\m\\x"),
                ("Ctl", "\u{1}:"),
            ]),
        };
        assert_eq!(
            info.to_text(),
            "p \nHires fix, Model: \"C:\\\\m\\\\x\", Ctl: \"\\u0001:\""
        );
        let empty = Infotext {
            prompt: "only".into(),
            ..Infotext::default()
        };
        assert_eq!(empty.to_text(), "only");
    }

    #[test]
    fn reader_quirks() {
        // Empty values are dropped; raw quotes that are not JSON stay as they are.
        let info = Infotext::parse("x\nSteps: 20, Empty: , Bad: \"\\q\", Seed: 1");
        assert_eq!(
            info.params,
            pairs(&[("Steps", "20"), ("Bad", "\"\\q\""), ("Seed", "1")])
        );
        // Keys with spaces, dashes and slashes; values keep inner and trailing spaces.
        let info = Infotext::parse("x\nHires upscale/ratio: 1.5, ratio-hr: 0.3, A b: c d , z");
        assert_eq!(
            info.params,
            pairs(&[
                ("Hires upscale/ratio", "1.5"),
                ("ratio-hr", "0.3"),
                ("A b", "c d ")
            ])
        );
        // Duplicate keys: `get` gives the last, `fields` keeps the first position.
        let info = Infotext::parse("x\nSteps: 20, Seed: 1, Steps: 30");
        assert_eq!(info.get("Steps"), Some("30"));
        assert_eq!(info.fields()[2], ("Steps".into(), "30".into()));
        // CRLF endings and surrounding whitespace.
        let info =
            Infotext::parse("\r\n a \r\nNegative prompt:b\r\nSteps: 1, Seed: 2, CFG scale: 3\r\n");
        assert_eq!(
            (info.prompt.as_str(), info.negative_prompt.as_str()),
            ("a", "b")
        );
        assert_eq!(info.get("CFG scale"), Some("3"));
    }

    #[test]
    fn empty_text() {
        assert_eq!(Infotext::parse(""), Infotext::default());
        assert_eq!(Infotext::parse(" \n\t"), Infotext::default());
    }

    #[test]
    fn python_float_repr() {
        let cases = [
            (7.0, "7.0"),
            (0.35, "0.35"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e16, "1.5e+16"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.30000000000000004"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (v, want) in cases {
            assert_eq!(py_float(v), want, "{v:e}");
        }
    }

    #[test]
    fn size_rejects_non_sizes() {
        let info = Infotext::parse("x\nAa: 512x, Bb: x5, Cc: 1x2x3, Dd: 99999999999x1, Ee: 3x4");
        for key in ["Aa", "Bb", "Cc", "Dd"] {
            assert_eq!(info.size(key), None, "{key}");
        }
        assert_eq!(info.size("Ee"), Some((3, 4)));
    }
}
