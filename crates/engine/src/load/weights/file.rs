//! One safetensors file, read tensor by tensor with positioned reads.
//!
//! candle's `MmapedSafetensors` maps the whole file: on a 2–7 GB checkpoint every page the
//! loader touches stays resident as page cache charged to the process until the map is
//! dropped, on top of the converted copies (issue 4 measured a 3.2 GiB load peak). This
//! reader keeps only the parsed header; each tensor is read into its own buffer when asked
//! for, converted, and the buffer freed, so the load peak is the weights plus one tensor.

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};

use loopback_core::{Error, Result};

/// The largest header accepted (safetensors' own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

/// A safetensors file: its path, open handle and validated header.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    metadata: Metadata,
    /// Where the tensor data starts (8 + header length).
    data_start: u64,
}

/// Reads `buf.len()` bytes at `offset`.
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

/// Reads `buf.len()` bytes at `offset` (Windows: `seek_read` may return short reads).
#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `offset` (other platforms: a cloned handle, seek and read).
#[cfg(not(any(unix, windows)))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// The candle dtype of a safetensors dtype the engine converts from.
fn candle_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F32 => Some(DType::F32),
        Dtype::F64 => Some(DType::F64),
        _ => None,
    }
}

impl SafetensorsFile {
    /// Opens `path` and validates its header: the length, the JSON, every tensor's dtype,
    /// shape and offsets (contiguous, sized to match), and that the file holds all the data.
    /// Errors are one line naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::input(path, reason);
        let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| bad(format!("cannot read: {e}")))?
            .len();
        if len < 8 {
            return Err(bad(format!(
                "not a safetensors file ({len} bytes, too short for a header)"
            )));
        }
        let mut size = [0u8; 8];
        read_at(&file, &mut size, 0).map_err(|e| bad(format!("cannot read: {e}")))?;
        let header_len = u64::from_le_bytes(size);
        if header_len > MAX_HEADER || header_len > len - 8 {
            return Err(bad(format!(
                "not a safetensors file (header length {header_len} does not fit a {len}-byte \
                 file; truncated or another format?)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        read_at(&file, &mut header, 8).map_err(|e| bad(format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&header)
            .map_err(|_| bad("not a safetensors file (header is not UTF-8 JSON)".into()))?;
        let metadata: Metadata = serde_json::from_str(text.trim_end())
            .map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
        let data_start = 8 + header_len;
        let needed = data_start + metadata.data_len() as u64;
        if needed > len {
            return Err(bad(format!(
                "truncated: the header describes {needed} bytes but the file has {len}"
            )));
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            metadata,
            data_start,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name, in file order.
    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    /// The header entry of `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }

    /// The shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.info(name).map(|i| i.shape.as_slice())
    }

    /// The `__metadata__` strings of the header.
    pub fn user_metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// Reads tensor `name` from disk, converts it to `dtype` and puts it on `device`.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let fail = |what: String| {
            candle_core::Error::Msg(format!("{}: tensor {name}: {what}", self.path.display()))
        };
        let info = self
            .info(name)
            .ok_or_else(|| fail("not in the file".into()))?;
        let stored = candle_dtype(info.dtype).ok_or_else(|| {
            fail(format!(
                "dtype {:?} is not a floating-point weight",
                info.dtype
            ))
        })?;
        let (start, end) = info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        read_at(&self.file, &mut bytes, self.data_start + start as u64)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        let tensor = Tensor::from_raw_buffer(&bytes, stored, &info.shape, &Device::Cpu)?;
        drop(bytes);
        tensor.to_dtype(dtype)?.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::load::weights::{Derive, WeightSource};

    /// A file with `x` (2×3, 1..6) stored as F32, F16 and BF16.
    fn file(dir: &Path) -> SafetensorsFile {
        let x = Tensor::arange(1f32, 7.0, &Device::Cpu)
            .and_then(|t| t.reshape((2, 3)))
            .unwrap();
        let tensors: HashMap<String, Tensor> = [
            ("f32", x.clone()),
            ("f16", x.to_dtype(DType::F16).unwrap()),
            ("bf16", x.to_dtype(DType::BF16).unwrap()),
            ("conv", x.reshape((6, 1, 1, 1)).unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let path = dir.join("x.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        SafetensorsFile::open(&path).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn half_and_bfloat_convert_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        let file = file(dir.path());
        for name in ["f32", "f16", "bf16"] {
            let t = file.tensor(name, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(t.dtype(), DType::F32);
            assert_eq!(t.dims(), [2, 3]);
            assert_eq!(values(&t), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "{name}");
        }
        let err = file.tensor("nope", DType::F32, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("tensor nope: not in the file"));
    }

    #[test]
    fn derived_tensors_and_shape_checks() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(file(dir.path()));
        let mut source = WeightSource::new();
        source.insert(
            "row1",
            Arc::clone(&file),
            "f16",
            Derive::Rows { start: 1, len: 1 },
        );
        source.insert("t", Arc::clone(&file), "bf16", Derive::Transpose);
        source.insert(
            "lin",
            Arc::clone(&file),
            "conv",
            Derive::Reshape(vec![2, 3]),
        );
        let vb = source.into_var_builder(DType::F32, &Device::Cpu);
        assert_eq!(values(&vb.get((1, 3), "row1").unwrap()), [4.0, 5.0, 6.0]);
        assert_eq!(
            values(&vb.get((3, 2), "t").unwrap()),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        assert_eq!(
            values(&vb.get((2, 3), "lin").unwrap()),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let err = vb.get((2, 2), "t").unwrap_err().to_string();
        assert!(err.contains("shape [3, 2], expected [2, 2]"), "{err}");
        assert!(vb.get((1, 3), "missing").is_err());
        assert!(vb.contains_tensor("lin") && !vb.contains_tensor("f16"));
    }
}
