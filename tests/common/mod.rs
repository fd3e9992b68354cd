//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A file under `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Runs the `loopback-scaler` binary.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loopback-scaler"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Max abs difference of two tensors of the same shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The values and shape of a reference tensor that a fixture manifest describes as
/// `{"file": NAME, "shape": [..]}`, `NAME` holding little-endian f32s in `dir`.
pub fn reference_f32(dir: &Path, entry: &serde_json::Value) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(dir.join(entry["file"].as_str().unwrap())).unwrap();
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, reference_shape(entry))
}

/// The `"shape"` of a reference-tensor entry (see [`reference_f32`]).
pub fn reference_shape(entry: &serde_json::Value) -> Vec<usize> {
    entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

/// [`reference_f32`] as a CPU tensor.
pub fn reference_tensor(dir: &Path, entry: &serde_json::Value) -> candle_core::Tensor {
    let (values, shape) = reference_f32(dir, entry);
    candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap()
}
