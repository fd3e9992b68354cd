//! A1111's LoRA hash, as written in the `Lora hashes` infotext field.
//!
//! A1111 (`extensions-builtin/Lora/network.py`, `NetworkOnDisk.read_hash`) hashes a
//! `.safetensors` LoRA with `hashes.sha256(…, use_addnet_hash=True)`: the SHA-256 of the file
//! *after* its header (8-byte length + JSON), i.e. of the tensor data only, so editing the
//! metadata does not change it (the "addnet" hash kohya also stores as `sshs_model_hash`). The
//! infotext carries its first 12 hex digits (`shorthash = hash[0:12]`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use loopback_core::{Error, Result};

/// Hex digits of the short hash A1111 writes.
pub const SHORT_LEN: usize = 12;

/// The full "addnet" SHA-256 (hex) of a safetensors file: of everything after the header.
pub fn addnet_sha256(path: &Path) -> Result<String> {
    let fail = |e: std::io::Error| Error::input(path, format!("cannot hash: {e}"));
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(fail)?;
    let offset = u64::from_le_bytes(len)
        .checked_add(8)
        .ok_or_else(|| Error::input(path, "not a safetensors file (header length)"))?;
    file.seek(SeekFrom::Start(offset)).map_err(fail)?;
    crate::load::weights::hash::sha256_hex(file, path)
}

/// The short hash A1111 writes in `Lora hashes`: the first 12 hex digits of
/// [`addnet_sha256`].
pub fn short_hash(path: &Path) -> Result<String> {
    let mut full = addnet_sha256(path)?;
    full.truncate(SHORT_LEN);
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_the_data_after_the_header_only() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, header: &str| {
            let path = dir.path().join(name);
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(b"abc");
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let a = write("a.safetensors", "{}");
        let b = write("b.safetensors", r#"{"__metadata__":{"x":"y"}}"#);
        // sha256("abc")
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(addnet_sha256(&a).unwrap(), abc);
        assert_eq!(addnet_sha256(&b).unwrap(), abc);
        assert_eq!(short_hash(&a).unwrap(), &abc[..12]);
    }
}
