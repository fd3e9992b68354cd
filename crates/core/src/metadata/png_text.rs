//! PNG text chunks, written as Pillow's `PngInfo.add_text` writes them and read as Pillow
//! reads them.
//!
//! Writing: a text whose value is latin-1 encodable goes in a `tEXt` chunk, any other in an
//! uncompressed `iTXt` chunk with an empty language tag and translated keyword; the chunks
//! follow IHDR, in the order given, before the image data.
//!
//! Reading: every `tEXt`, `zTXt` and `iTXt` chunk (compressed or not), in file order; `tEXt`
//! and `zTXt` are latin-1, `iTXt` UTF-8. The chunks themselves are parsed by the `png` crate.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use image::DynamicImage;
use png::text_metadata::{ITXtChunk, TEXtChunk};
use png::{BitDepth, ColorType, Compression, Decoded, StreamingDecoder};

use crate::{Error, Result};

/// The eight bytes every PNG file starts with.
const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The largest text a compressed chunk may inflate to (a guard against zip bombs).
const MAX_TEXT_BYTES: usize = 64 << 20;

/// The largest chunk length the PNG format allows (2³¹ − 1).
const MAX_CHUNK_LEN: u32 = i32::MAX as u32;

/// Encodes `img` as an 8-bit RGB PNG (RGBA if it has alpha; other colour types are
/// converted) with `texts` as (keyword, value) text chunks, in order, between IHDR and IDAT.
///
/// Each text is a `tEXt` chunk when its value is latin-1 encodable, otherwise an uncompressed
/// `iTXt` chunk with empty language tag and translated keyword, exactly as Pillow writes them.
/// Keywords must be 1 to 79 latin-1 characters without NUL ([`Error::Metadata`] otherwise).
/// The image data uses fast deflate.
pub fn encode_png(img: &DynamicImage, texts: &[(&str, &str)]) -> Result<Vec<u8>> {
    for (keyword, _) in texts {
        check_keyword(keyword)?;
    }
    let (color, raw) = rgb_or_rgba_bytes(img);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, img.width(), img.height());
    encoder.set_color(color);
    encoder.set_depth(BitDepth::Eight);
    encoder.set_compression(Compression::Fast);
    let mut writer = encoder.write_header().map_err(encode_error)?;
    for (keyword, value) in texts {
        let written = if is_latin1(value) {
            writer.write_text_chunk(&TEXtChunk::new(*keyword, *value))
        } else {
            writer.write_text_chunk(&ITXtChunk::new(*keyword, *value))
        };
        written.map_err(encode_error)?;
    }
    writer.write_image_data(&raw).map_err(encode_error)?;
    writer.finish().map_err(encode_error)?;
    Ok(out)
}

/// All text chunks (`tEXt`, `zTXt`, `iTXt`) of a PNG file in memory, as (keyword, text) in
/// file order, up to IEND.
///
/// Input that is not a well-formed PNG chunk stream (or has a corrupt text chunk) gives
/// [`Error::Metadata`].
pub fn read_png_texts(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    read_texts(&mut std::io::Cursor::new(bytes)).map_err(Error::Metadata)
}

/// All text chunks of the PNG file at `path`, as [`read_png_texts`] does, reading only chunk
/// headers and text chunks (the image data is skipped, not read).
///
/// Errors are [`Error::Input`] naming the file.
pub fn read_png_texts_from_path(path: impl AsRef<Path>) -> Result<Vec<(String, String)>> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::input(path, e.to_string()))?;
    read_texts(&mut BufReader::new(file)).map_err(|reason| Error::input(path, reason))
}

/// Whether Python's `s.encode("latin-1")` succeeds.
fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 0x100)
}

/// A keyword a PNG text chunk can hold: 1 to 79 latin-1 characters, no NUL.
fn check_keyword(keyword: &str) -> Result<()> {
    let length = keyword.chars().count();
    if !(1..=79).contains(&length) || !is_latin1(keyword) || keyword.contains('\0') {
        return Err(Error::Metadata(format!(
            "PNG text keyword {keyword:?} must be 1 to 79 latin-1 characters without NUL"
        )));
    }
    Ok(())
}

/// The pixels of `img` as 8-bit RGB or RGBA (borrowed when they already are).
fn rgb_or_rgba_bytes(img: &DynamicImage) -> (ColorType, Cow<'_, [u8]>) {
    match img {
        DynamicImage::ImageRgb8(buf) => (ColorType::Rgb, Cow::Borrowed(buf.as_raw().as_slice())),
        DynamicImage::ImageRgba8(buf) => (ColorType::Rgba, Cow::Borrowed(buf.as_raw().as_slice())),
        other if other.color().has_alpha() => {
            (ColorType::Rgba, Cow::Owned(other.to_rgba8().into_raw()))
        }
        other => (ColorType::Rgb, Cow::Owned(other.to_rgb8().into_raw())),
    }
}

/// A `png` encoding error as the library's error.
fn encode_error(e: png::EncodingError) -> Error {
    match e {
        png::EncodingError::Format(_) | png::EncodingError::Parameter(_) => {
            Error::ImageOp(format!("cannot encode PNG: {e}"))
        }
        other => Error::Metadata(format!("cannot write PNG: {other}")),
    }
}

/// A chunk's length and type, as read from its 8-byte header.
struct ChunkHeader {
    /// The length of the chunk's data.
    len: u32,
    /// The chunk type, e.g. `*b"tEXt"`.
    kind: [u8; 4],
    /// The header bytes themselves.
    raw: [u8; 8],
}

/// Walks the chunks of a PNG stream and decodes its text chunks, in order.
fn read_texts<R: Read + Seek>(r: &mut R) -> Result<Vec<(String, String)>, String> {
    let mut signature = [0u8; 8];
    r.read_exact(&mut signature)
        .map_err(|_| "not a PNG file (too short)".to_owned())?;
    if signature != SIGNATURE {
        return Err("not a PNG file (bad signature)".to_owned());
    }
    let ihdr = read_header(r)?;
    if &ihdr.kind != b"IHDR" || ihdr.len != 13 {
        return Err("not a PNG file (no IHDR chunk first)".to_owned());
    }
    let mut decoder = TextDecoder::new(&read_whole_chunk(r, &ihdr)?)?;
    let mut texts = Vec::new();
    loop {
        let header = read_header(r)?;
        match &header.kind {
            b"IEND" => return Ok(texts),
            b"tEXt" | b"zTXt" | b"iTXt" => {
                let chunk = read_whole_chunk(r, &header)?;
                texts.push(decoder.decode(&chunk, header.kind)?);
            }
            _ => skip_chunk(r, &header)?,
        }
    }
}

/// Reads a chunk header; the end of the input here means the file is truncated.
fn read_header<R: Read>(r: &mut R) -> Result<ChunkHeader, String> {
    let mut raw = [0u8; 8];
    r.read_exact(&mut raw)
        .map_err(|_| "truncated PNG file (no IEND chunk)".to_owned())?;
    let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let kind = [raw[4], raw[5], raw[6], raw[7]];
    if len > MAX_CHUNK_LEN || !kind.iter().all(u8::is_ascii_alphabetic) {
        return Err("corrupt PNG file (bad chunk header)".to_owned());
    }
    Ok(ChunkHeader { len, kind, raw })
}

/// The whole chunk (header, data and CRC) whose header was just read.
fn read_whole_chunk<R: Read>(r: &mut R, header: &ChunkHeader) -> Result<Vec<u8>, String> {
    let want = u64::from(header.len) + 4;
    let mut chunk = header.raw.to_vec();
    // `take` grows the buffer as data arrives, so a lying length cannot force a huge allocation.
    let got = r
        .take(want)
        .read_to_end(&mut chunk)
        .map_err(|e| format!("cannot read PNG: {e}"))?;
    if got as u64 != want {
        return Err("truncated PNG file".to_owned());
    }
    Ok(chunk)
}

/// Skips a chunk's data and CRC (a truncation shows when the next header is read).
fn skip_chunk<R: Seek>(r: &mut R, header: &ChunkHeader) -> Result<(), String> {
    r.seek(SeekFrom::Current(i64::from(header.len) + 4))
        .map(|_| ())
        .map_err(|e| format!("cannot read PNG: {e}"))
}

/// The `png` crate's chunk parser, fed the signature, IHDR and then only text chunks.
struct TextDecoder {
    /// The decoder, positioned between chunks.
    inner: StreamingDecoder,
}

impl TextDecoder {
    /// A decoder that has seen the signature and the given IHDR chunk.
    fn new(ihdr_chunk: &[u8]) -> Result<Self, String> {
        let mut decoder = TextDecoder {
            inner: StreamingDecoder::new(),
        };
        decoder.feed(&SIGNATURE)?;
        match decoder.feed(ihdr_chunk)? {
            Some(Decoded::ChunkComplete(_)) => Ok(decoder),
            _ => Err("corrupt PNG file (bad IHDR chunk)".to_owned()),
        }
    }

    /// Decodes one whole text chunk of type `kind` to (keyword, text).
    fn decode(&mut self, chunk: &[u8], kind: [u8; 4]) -> Result<(String, String), String> {
        let name = String::from_utf8_lossy(&kind).into_owned();
        match self.feed(chunk)? {
            Some(Decoded::ChunkComplete(_)) => self.last_text(&kind, &name),
            _ => Err(format!("corrupt {name} chunk")),
        }
    }

    /// The text chunk of type `kind` that the decoder completed last, inflated if need be.
    fn last_text(&self, kind: &[u8; 4], name: &str) -> Result<(String, String), String> {
        let missing = || format!("corrupt {name} chunk");
        let inflate = |e: png::DecodingError| format!("corrupt {name} chunk: {e}");
        let info = self.inner.info().ok_or_else(missing)?;
        match kind {
            b"tEXt" => {
                let chunk = info.uncompressed_latin1_text.last().ok_or_else(missing)?;
                Ok((chunk.keyword.clone(), chunk.text.clone()))
            }
            b"zTXt" => {
                let mut chunk = info
                    .compressed_latin1_text
                    .last()
                    .ok_or_else(missing)?
                    .clone();
                chunk
                    .decompress_text_with_limit(MAX_TEXT_BYTES)
                    .map_err(inflate)?;
                Ok((chunk.keyword.clone(), chunk.get_text().map_err(inflate)?))
            }
            _ => {
                let mut chunk = info.utf8_text.last().ok_or_else(missing)?.clone();
                chunk
                    .decompress_text_with_limit(MAX_TEXT_BYTES)
                    .map_err(inflate)?;
                Ok((chunk.keyword.clone(), chunk.get_text().map_err(inflate)?))
            }
        }
    }

    /// Feeds bytes that end on a chunk boundary; returns the last event other than the start
    /// of a chunk, if any.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<Option<Decoded>, String> {
        let mut last = None;
        while !bytes.is_empty() {
            let (used, event) = self
                .inner
                .update(bytes, None)
                .map_err(|e| format!("corrupt PNG file: {e}"))?;
            bytes = bytes.get(used..).unwrap_or_default();
            match event {
                Decoded::Nothing | Decoded::ChunkBegin(..) => {}
                other => last = Some(other),
            }
            if used == 0 && last.is_none() {
                return Err("corrupt PNG file (decoder made no progress)".to_owned());
            }
        }
        Ok(last)
    }
}
