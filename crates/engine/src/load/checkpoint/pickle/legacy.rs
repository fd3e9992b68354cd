//! PyTorch's legacy file format (`torch.save(..., _use_new_zipfile_serialization=False)`, and
//! every file saved before PyTorch 1.6), which candle does not read: five pickles in a row —
//! a magic number, the protocol version, system info, the object (its storages as persistent
//! ids `('storage', type, key, location, size)`), the sorted storage keys — then each storage's
//! data in key order, an 8-byte little-endian element count before its raw bytes.

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use loopback_core::{Error, Result};

/// The legacy format's first pickle: protocol 2, the magic number 0x1950a86a20f9469cfc6c as a
/// 10-byte `LONG1`, `STOP`. Checked byte for byte (candle's reader overflows on a 10-byte long).
const MAGIC_PICKLE: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// A legacy file's object and where its storages are.
pub struct Legacy {
    /// The pickled object.
    pub main: Object,
    /// The storage keys, in the order their data follows.
    keys: Vec<String>,
    /// The byte offset of the first storage's data.
    data_start: u64,
}

/// Reads the pickles of the legacy file `path` (nothing is run; see `super`).
pub fn read(path: &Path) -> Result<Legacy> {
    let refuse = |what: &str| {
        Error::input(
            path,
            format!(
                "is not a PyTorch file this app reads ({what}): truncated, or the pre-0.4 \
                 format (convert it to .safetensors)"
            ),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| Error::input(path, e.to_string()))?;
    let mut reader = BufReader::new(file);
    let next = |reader: &mut BufReader<std::fs::File>| -> Option<Object> {
        parse_guarded(|| {
            let mut stack = Stack::empty();
            stack.read_loop(reader).ok()?;
            stack.finalize().ok()
        })
        .flatten()
    };
    let mut magic = [0u8; MAGIC_PICKLE.len()];
    if reader.read_exact(&mut magic).is_err() || magic != MAGIC_PICKLE {
        return Err(refuse("no PyTorch magic number"));
    }
    let _version = next(&mut reader).ok_or_else(|| refuse("no protocol version"))?;
    let _sys_info = next(&mut reader).ok_or_else(|| refuse("no system info"))?;
    let main = next(&mut reader).ok_or_else(|| refuse("no object"))?;
    let keys = match next(&mut reader).ok_or_else(|| refuse("no storage keys"))? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| k.unicode().map_err(|_| refuse("bad storage keys")))
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(refuse("bad storage keys")),
    };
    let data_start = reader
        .stream_position()
        .map_err(|e| Error::input(path, e.to_string()))?;
    Ok(Legacy {
        main,
        keys,
        data_start,
    })
}

impl Legacy {
    /// The tensors of the object (at the top level, or under the first of `keys` that holds
    /// any), read from the storages.
    pub fn tensors(self, path: &Path, keys: &[&str]) -> Result<HashMap<String, Tensor>> {
        let entries = match &self.main {
            Object::Dict(entries) => entries.clone(),
            _ => return Err(Error::input(path, "the pickled object is not a dict")),
        };
        let infos = |entries: &[(Object, Object)]| {
            entries
                .iter()
                .filter_map(|(k, v)| v.clone().into_tensor_info(k.clone(), Path::new("")).ok()?)
                .collect::<Vec<_>>()
        };
        let mut found = infos(&entries);
        if found.is_empty() {
            for key in keys {
                let nested = entries.iter().find_map(|(k, v)| match (k, v) {
                    (Object::Unicode(k), Object::Dict(inner)) if k == key => Some(inner.clone()),
                    (Object::Unicode(k), Object::Reduce { args, .. }) if k == key => {
                        // An OrderedDict: its items are in the reduce's arguments.
                        match args.as_ref() {
                            Object::Tuple(a) => a.iter().find_map(|x| match x {
                                Object::Dict(d) => Some(d.clone()),
                                _ => None,
                            }),
                            _ => None,
                        }
                    }
                    _ => None,
                });
                if let Some(inner) = nested {
                    found = infos(&inner);
                    if !found.is_empty() {
                        break;
                    }
                }
            }
        }
        // Each storage's dtype (from the tensors using it), to step over its bytes.
        let dtype_of: HashMap<String, DType> = found
            .iter()
            .map(|t| (t.path.trim_start_matches('/').to_string(), t.dtype))
            .collect();
        let mut file = std::fs::File::open(path).map_err(|e| Error::input(path, e.to_string()))?;
        let mut at = self.data_start;
        let mut storages: HashMap<String, (u64, usize)> = HashMap::new();
        for key in &self.keys {
            let mut count = [0u8; 8];
            file.seek(SeekFrom::Start(at))
                .and_then(|_| file.read_exact(&mut count))
                .map_err(|_| Error::input(path, "truncated: a storage is missing"))?;
            let count = u64::from_le_bytes(count) as usize;
            let dtype = *dtype_of
                .get(key)
                .ok_or_else(|| Error::input(path, format!("storage {key} of an unknown type")))?;
            storages.insert(key.clone(), (at + 8, count));
            at += 8 + (count * dtype.size_in_bytes()) as u64;
        }
        let mut tensors = HashMap::new();
        for info in found {
            let key = info.path.trim_start_matches('/');
            let Some(&(offset, count)) = storages.get(key) else {
                continue;
            };
            let size = info.dtype.size_in_bytes();
            let mut bytes = vec![0u8; count * size];
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut bytes))
                .map_err(|_| Error::input(path, "truncated: a storage is cut short"))?;
            let storage = Tensor::from_raw_buffer(&bytes, info.dtype, &[count], &Device::Cpu)
                .map_err(|e| Error::input(path, e.to_string()))?;
            let Some((start, end)) = info.layout.contiguous_offsets() else {
                return Err(Error::input(
                    path,
                    format!("tensor {} is not contiguous", info.name),
                ));
            };
            let tensor = storage
                .narrow(0, start, end - start)
                .and_then(|t| t.reshape(info.layout.shape()))
                .map_err(|e| Error::input(path, e.to_string()))?;
            tensors.insert(info.name, tensor);
        }
        Ok(tensors)
    }
}

/// Runs a pickle parse, turning a panic of the parser on malformed input (candle's reader
/// can overflow) into `None`: a bad file is an error, never a crash.
pub fn parse_guarded<T>(parse: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).ok()
}
