//! Helpers shared by the core's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root: the shared fixtures live in `tests/fixtures` and `tests/data` there.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A file under `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(ROOT).join("tests/data").join(name)
}

/// A PNG whose header claims `width`×`height`, followed by one small IDAT chunk of a valid
/// zlib stream of zeros (far too little data for the claimed size).
pub fn huge_png_header(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    push_chunk(&mut bytes, b"IHDR", &ihdr);
    // zlib: header, one stored block of 16 zero bytes, Adler-32 of 16 zeros.
    let mut idat = vec![0x78, 0x01, 0x01, 16, 0, 0xEF, 0xFF];
    idat.extend_from_slice(&[0; 16]);
    idat.extend_from_slice(&[0x00, 0x10, 0x00, 0x01]);
    push_chunk(&mut bytes, b"IDAT", &idat);
    bytes
}

fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE), as PNG chunks use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Files in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
