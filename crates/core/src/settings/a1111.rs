//! How setting values are written in A1111's `parameters` infotext and read back: Python's
//! `str()` of floats and bools, and choice labels ([`InfotextValue`]); and the description of
//! a struct's fields in the infotext ([`InfotextField`]), which the settings table generates
//! for the finishing settings.
//!
//! This module knows nothing of the infotext's text format (that is
//! `metadata::infotext`, which builds on it).

use super::choices::{Choice, FilterLevel};

/// What kind of value a setting is in the infotext. Settings read from an infotext are taken
/// kind by kind in this order (numbers, then choices, then toggles), so the warnings about
/// values that cannot be used come in that order too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A number (`7.0`, `30`).
    Number,
    /// One of a list of named options, written as its label (`Low`).
    Choice,
    /// On or off, written `True` or `False`.
    Toggle,
}

/// A setting value as it is written in A1111's infotext, and read back.
pub trait InfotextValue: Sized {
    /// What kind of value it is.
    const KIND: ValueKind;
    /// The value as A1111 writes it (Python's `str(v)`).
    fn to_infotext(&self) -> String;
    /// The value of `text`; `None` when it is not one.
    fn from_infotext(text: &str) -> Option<Self>;
}

impl InfotextValue for f64 {
    const KIND: ValueKind = ValueKind::Number;

    /// [`py_float`].
    fn to_infotext(&self) -> String {
        py_float(*self)
    }

    /// Any float Rust reads, around surrounding whitespace.
    fn from_infotext(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }
}

impl InfotextValue for bool {
    const KIND: ValueKind = ValueKind::Toggle;

    /// [`py_bool`].
    fn to_infotext(&self) -> String {
        py_bool(*self).to_owned()
    }

    /// `True` or `False` (also in lower case), around surrounding whitespace.
    fn from_infotext(text: &str) -> Option<Self> {
        match text.trim() {
            "True" | "true" => Some(true),
            "False" | "false" => Some(false),
            _ => None,
        }
    }
}

impl InfotextValue for FilterLevel {
    const KIND: ValueKind = ValueKind::Choice;

    /// The label (`None`, `Low`, `Medium`, `High`).
    fn to_infotext(&self) -> String {
        self.label().to_owned()
    }

    /// A label or a command-line key, in any case ([`Choice::parse`]).
    fn from_infotext(text: &str) -> Option<Self> {
        Self::parse(text)
    }
}

/// One field of a struct `T` in the infotext: its key, where it goes, and how its value is
/// written and read.
pub struct InfotextField<T> {
    /// The infotext key, e.g. `Add Detail`.
    pub key: &'static str,
    /// Its place among `T`'s keys in the infotext (0 first).
    pub position: usize,
    /// What kind of value it is.
    pub kind: ValueKind,
    /// The field's value as written in the infotext.
    pub write: fn(&T) -> String,
    /// Sets the field from its text; `false` (leaving it unchanged) when the text is not a
    /// value of the field.
    pub read: fn(&mut T, &str) -> bool,
}

impl<T> Clone for InfotextField<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for InfotextField<T> {}

impl<T> std::fmt::Debug for InfotextField<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfotextField")
            .field("key", &self.key)
            .field("position", &self.position)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// `fields` sorted by [`InfotextField::position`]. Fails (at compile time, in a constant)
/// unless the positions are `0, 1, …, N − 1`, each once.
pub const fn in_position_order<T, const N: usize>(
    mut fields: [InfotextField<T>; N],
) -> [InfotextField<T>; N] {
    let mut i = 0;
    while i < N {
        let mut j = i;
        while j < N && fields[j].position != i {
            j += 1;
        }
        assert!(
            j < N,
            "infotext positions must be 0, 1, 2, … without gaps or repeats"
        );
        let found = fields[j];
        fields[j] = fields[i];
        fields[i] = found;
        i += 1;
    }
    fields
}

/// A Python `bool`'s `str`: `True` or `False`.
pub fn py_bool(v: bool) -> &'static str {
    if v { "True" } else { "False" }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn values_round_trip_through_their_text() {
        assert_eq!(1.25.to_infotext(), "1.25");
        assert_eq!(f64::from_infotext(" 0.5 "), Some(0.5));
        assert_eq!(f64::from_infotext("x"), None);
        assert_eq!(true.to_infotext(), "True");
        assert_eq!(bool::from_infotext("false"), Some(false));
        assert_eq!(bool::from_infotext("yes"), None);
        assert_eq!(FilterLevel::Medium.to_infotext(), "Medium");
        assert_eq!(FilterLevel::from_infotext("high"), Some(FilterLevel::High));
        assert_eq!(FilterLevel::from_infotext("Max"), None);
    }

    #[test]
    fn fields_are_sorted_by_position() {
        let field = |key, position| InfotextField::<f64> {
            key,
            position,
            kind: ValueKind::Number,
            write: |v| py_float(*v),
            read: |v, text| f64::from_infotext(text).map(|x| *v = x).is_some(),
        };
        let sorted = in_position_order([field("c", 2), field("a", 0), field("b", 1)]);
        let keys: Vec<&str> = sorted.iter().map(|f| f.key).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        // A repeated or missing position is refused (in a constant: at compile time).
        let repeated =
            std::panic::catch_unwind(|| in_position_order([field("a", 0), field("b", 0)]));
        assert!(repeated.is_err());
        let gap = std::panic::catch_unwind(|| in_position_order([field("a", 0), field("b", 2)]));
        assert!(gap.is_err());
    }
}
