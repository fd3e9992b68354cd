//! A1111's metadata in JPEG and WebP files: the `parameters` text in the EXIF `UserComment`
//! (as A1111 writes it with `piexif`), and this app's recipe in `ImageDescription`.
//!
//! A1111 writes `piexif.dump({"Exif": {UserComment: UserComment.dump(text, "unicode")}})`: a
//! big-endian TIFF whose first IFD holds only the pointer to the EXIF IFD, which holds only
//! the `UserComment`: `UNICODE\0` then the text in UTF-16 (big-endian). [`user_comment_exif`]
//! writes the same bytes (checked against `piexif` by the fixture script), plus, when a recipe
//! is given, an `ImageDescription` (UTF-8) in the first IFD. [`read_exif_texts`] reads
//! either byte order and the `UNICODE`, `ASCII` and undefined prefixes.

use super::keys::{PARAMETERS_KEY, RECIPE_KEY};

/// The EXIF IFD pointer tag (in IFD0).
const EXIF_IFD: u16 = 0x8769;
/// `ImageDescription` (in IFD0).
const IMAGE_DESCRIPTION: u16 = 0x010E;
/// `UserComment` (in the EXIF IFD).
const USER_COMMENT: u16 = 0x9286;
/// The TIFF types used: ASCII, LONG, UNDEFINED.
const ASCII: u16 = 2;
const LONG: u16 = 4;
const UNDEFINED: u16 = 7;

/// An IFD entry to write: tag, type, count and value bytes (a LONG pointer is patched in).
struct Entry {
    tag: u16,
    kind: u16,
    value: Vec<u8>,
}

/// The TIFF bytes (no `Exif\0\0` header) of an EXIF block holding `parameters` as A1111
/// writes it and, when given, `recipe` as `ImageDescription`.
pub fn user_comment_exif(parameters: &str, recipe: Option<&str>) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    for unit in parameters.encode_utf16() {
        comment.extend_from_slice(&unit.to_be_bytes());
    }
    let mut ifd0 = Vec::new();
    if let Some(recipe) = recipe {
        let mut text = recipe.as_bytes().to_vec();
        text.push(0);
        ifd0.push(Entry {
            tag: IMAGE_DESCRIPTION,
            kind: ASCII,
            value: text,
        });
    }
    ifd0.push(Entry {
        tag: EXIF_IFD,
        kind: LONG,
        value: vec![0; 4],
    });
    let exif = [Entry {
        tag: USER_COMMENT,
        kind: UNDEFINED,
        value: comment,
    }];
    // Layout: header (8), IFD0 and its values, then the EXIF IFD and its values. As piexif,
    // the EXIF IFD has no next-IFD pointer (only IFD0 has one).
    let ifd_size = |entries: &[Entry]| {
        2 + 12 * entries.len()
            + 4
            + entries
                .iter()
                .map(|e| if e.value.len() > 4 { e.value.len() } else { 0 })
                .sum::<usize>()
    };
    let ifd0_at = 8;
    let exif_at = ifd0_at + ifd_size(&ifd0);
    if let Some(pointer) = ifd0.iter_mut().find(|e| e.tag == EXIF_IFD) {
        pointer.value = (exif_at as u32).to_be_bytes().to_vec();
    }
    let mut out = b"MM\0\x2a\0\0\0\x08".to_vec();
    write_ifd(&mut out, &ifd0, ifd0_at, true);
    write_ifd(&mut out, &exif, exif_at, false);
    out
}

/// Appends an IFD at offset `at` (its values right after it), with a next-IFD pointer of 0
/// when `next` is set.
fn write_ifd(out: &mut Vec<u8>, entries: &[Entry], at: usize, next: bool) {
    let pointer = if next { 4 } else { 0 };
    let mut values_at = at + 2 + 12 * entries.len() + pointer;
    let mut values = Vec::new();
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_be_bytes());
        out.extend_from_slice(&e.kind.to_be_bytes());
        let count = match e.kind {
            LONG => e.value.len() / 4,
            _ => e.value.len(),
        };
        out.extend_from_slice(&(count as u32).to_be_bytes());
        if e.value.len() <= 4 {
            let mut inline = e.value.clone();
            inline.resize(4, 0);
            out.extend_from_slice(&inline);
        } else {
            out.extend_from_slice(&(values_at as u32).to_be_bytes());
            values_at += e.value.len();
            values.extend_from_slice(&e.value);
        }
    }
    out.extend_from_slice(&[0; 4][..pointer]);
    out.extend_from_slice(&values);
}

/// The EXIF block for an image's metadata `texts` (PNG-style `(key, text)` pairs):
/// `parameters` as A1111 writes it, the recipe beside it; `None` without a `parameters` text.
pub fn exif_for_texts(texts: &[(&str, &str)]) -> Option<Vec<u8>> {
    let find = |key: &str| texts.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    Some(user_comment_exif(find(PARAMETERS_KEY)?, find(RECIPE_KEY)))
}

/// What an EXIF block says: A1111's `parameters` (`UserComment`) and the recipe
/// (`ImageDescription`, when it is this app's JSON), as `(key, text)` pairs like PNG text
/// chunks. Accepts the bytes with or without the `Exif\0\0` header; anything malformed gives
/// what could be read.
pub fn read_exif_texts(exif: &[u8]) -> Vec<(String, String)> {
    let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let Some(reader) = Tiff::new(tiff) else {
        return Vec::new();
    };
    let mut texts = Vec::new();
    let Some(ifd0) = reader.u32_at(4) else {
        return texts;
    };
    let ifd0 = reader.entries(ifd0 as usize);
    if let Some(desc) = ifd0.iter().find(|e| e.tag == IMAGE_DESCRIPTION)
        && let Some(bytes) = reader.value(desc)
    {
        let text = String::from_utf8_lossy(bytes)
            .trim_end_matches('\0')
            .to_string();
        if text.starts_with('{') {
            texts.push((RECIPE_KEY.to_string(), text));
        }
    }
    let exif_ifd = ifd0
        .iter()
        .find(|e| e.tag == EXIF_IFD)
        .and_then(|e| reader.inline_u32(e));
    if let Some(at) = exif_ifd
        && let Some(comment) = reader
            .entries(at as usize)
            .iter()
            .find(|e| e.tag == USER_COMMENT)
            .and_then(|e| reader.value(e))
            .and_then(decode_user_comment)
    {
        texts.push((PARAMETERS_KEY.to_string(), comment));
    }
    texts
}

/// A `UserComment` value: an 8-byte character-code prefix, then the text.
fn decode_user_comment(bytes: &[u8]) -> Option<String> {
    let (prefix, body) = (bytes.get(..8)?, &bytes[8..]);
    let text = if prefix == b"UNICODE\0" {
        // UTF-16; piexif writes big-endian. Where the even bytes are mostly 0 the text is
        // big-endian ASCII-range text, where the odd ones are, little-endian.
        let pairs: Vec<[u8; 2]> = body.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        let zeros_first = pairs.iter().filter(|p| p[0] == 0).count();
        let zeros_second = pairs.iter().filter(|p| p[1] == 0).count();
        let units: Vec<u16> = pairs
            .iter()
            .map(|&p| {
                if zeros_second > zeros_first {
                    u16::from_le_bytes(p)
                } else {
                    u16::from_be_bytes(p)
                }
            })
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        // ASCII, or undefined (taken as UTF-8).
        String::from_utf8_lossy(body).into_owned()
    };
    let text = text.trim_end_matches('\0').to_string();
    (!text.is_empty()).then_some(text)
}

/// An IFD entry as read.
struct ReadEntry {
    tag: u16,
    kind: u16,
    count: u32,
    /// The value field's offset in the TIFF.
    field: usize,
}

/// A TIFF block and its byte order.
struct Tiff<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl<'a> Tiff<'a> {
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let big_endian = match bytes.get(..4)? {
            b"MM\0\x2a" => true,
            b"II\x2a\0" => false,
            _ => return None,
        };
        Some(Tiff { bytes, big_endian })
    }

    fn u16_at(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    /// The entries of the IFD at `at` (none if it is out of bounds).
    fn entries(&self, at: usize) -> Vec<ReadEntry> {
        let Some(count) = self.u16_at(at) else {
            return Vec::new();
        };
        (0..usize::from(count))
            .map_while(|i| {
                let e = at + 2 + 12 * i;
                Some(ReadEntry {
                    tag: self.u16_at(e)?,
                    kind: self.u16_at(e + 2)?,
                    count: self.u32_at(e + 4)?,
                    field: e + 8,
                })
            })
            .collect()
    }

    /// A LONG value held in the entry itself.
    fn inline_u32(&self, e: &ReadEntry) -> Option<u32> {
        (e.kind == LONG).then(|| self.u32_at(e.field)).flatten()
    }

    /// The bytes of a byte-sized value (ASCII, BYTE, UNDEFINED).
    fn value(&self, e: &ReadEntry) -> Option<&'a [u8]> {
        if !matches!(e.kind, 1 | ASCII | UNDEFINED) {
            return None;
        }
        let len = e.count as usize;
        let at = if len <= 4 {
            e.field
        } else {
            self.u32_at(e.field)? as usize
        };
        self.bytes.get(at..at.checked_add(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_texts_read_back() {
        let exif = user_comment_exif("a cat\nSteps: 20, Seed: 1", Some("{\"app\":1}"));
        let texts = read_exif_texts(&exif);
        assert_eq!(
            texts,
            [
                ("loopback-scaler".to_string(), "{\"app\":1}".to_string()),
                (
                    "parameters".to_string(),
                    "a cat\nSteps: 20, Seed: 1".to_string()
                )
            ]
        );
        let mut with_header = b"Exif\0\0".to_vec();
        with_header.extend_from_slice(&user_comment_exif("é ✓", None));
        assert_eq!(read_exif_texts(&with_header)[0].1, "é ✓");
    }

    #[test]
    fn malformed_blocks_give_nothing() {
        assert!(read_exif_texts(b"").is_empty());
        assert!(read_exif_texts(b"MM\0\x2a\0\0\xff\xff").is_empty());
        let mut exif = user_comment_exif("text", None);
        exif.truncate(30);
        assert!(read_exif_texts(&exif).is_empty());
    }
}
