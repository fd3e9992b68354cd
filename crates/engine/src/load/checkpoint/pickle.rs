//! PyTorch pickles (`.ckpt`, `.pt`, `.pth`, `.bin`), opened without running anything.
//!
//! Unpickling in Python can run any code the file names. Nothing here runs anything: the
//! pickle program is interpreted by candle's reader (`candle_core::pickle`), which only
//! builds a tree of values and never calls what a file names. On top of that, every global
//! the file names must be on the allowlist of what a PyTorch state dict needs (the tensor and
//! storage rebuild functions, `OrderedDict`, a few NumPy and Lightning names, as A1111's
//! `safe.py` allows); anything else — `os.system`, `builtins.eval`, an unknown class —
//! refuses the file with one line naming the global. Both PyTorch formats are read: the zip
//! format (PyTorch ≥ 1.6) through candle's `PthTensors`, and the legacy stream of pickles
//! followed by the raw storages ([`legacy`], which candle does not read). The older tar
//! format (PyTorch < 0.4) is refused.
//!
//! A checked pickle's tensors are copied once into a safetensors file in the app's cache
//! (named by the pickle's SHA-256), which the loaders then open like any other.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, PthTensors, Stack};

mod legacy;

use crate::load::weights::hash::{default_cache_dir, sha256_file};
use loopback_core::{Error, Result};

/// File extensions of PyTorch pickles.
pub const PICKLE_EXTENSIONS: [&str; 4] = ["ckpt", "pt", "pth", "bin"];

/// The globals a state dict may name: `(module, name)`; a name of `*` allows the module's
/// storage classes.
const ALLOWED: [(&str, &str); 22] = [
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "*Storage"),
    ("torch", "Size"),
    ("torch", "float32"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("_codecs", "encode"),
    ("pytorch_lightning.callbacks", "model_checkpoint"),
    (
        "pytorch_lightning.callbacks.model_checkpoint",
        "ModelCheckpoint",
    ),
    ("__builtin__", "set"),
    ("builtins", "set"),
];

/// Whether `path` is a zip archive (PyTorch's format since 1.6).
fn is_zip(path: &Path) -> bool {
    std::fs::File::open(path)
        .ok()
        .is_some_and(|f| zip::ZipArchive::new(BufReader::new(f)).is_ok())
}

/// Whether `path` is named like a PyTorch pickle.
pub fn is_pickle(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    PICKLE_EXTENSIONS.contains(&ext.as_str())
}

/// Checks that the pickle `path` names nothing but what a state dict needs (see the module
/// documentation); the error names the file and the first global that is not allowed.
pub fn check_pickle(path: &Path) -> Result<()> {
    for object in pickles_of(path)? {
        if let Some((module, class)) = first_disallowed(&object) {
            return Err(Error::input(
                path,
                format!(
                    "refused: the pickle names {module}.{class}, which a state dict never needs \
                     (nothing was run)"
                ),
            ));
        }
    }
    Ok(())
}

/// The pickled objects of a PyTorch file: every `data.pkl` of the zip format, or the main
/// object of the legacy format.
fn pickles_of(path: &Path) -> Result<Vec<Object>> {
    let file = std::fs::File::open(path).map_err(|e| Error::input(path, e.to_string()))?;
    let Ok(mut zip) = zip::ZipArchive::new(BufReader::new(file)) else {
        return legacy::read(path).map(|legacy| vec![legacy.main]);
    };
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pickles: Vec<&String> = names.iter().filter(|n| n.ends_with("data.pkl")).collect();
    if pickles.is_empty() {
        return Err(Error::input(path, "holds no data.pkl: not a PyTorch file"));
    }
    let mut objects = Vec::new();
    for name in pickles {
        let entry = zip
            .by_name(name)
            .map_err(|e| Error::input(path, format!("cannot read {name}: {e}")))?;
        let object = legacy::parse_guarded(|| {
            let mut stack = Stack::empty();
            stack
                .read_loop(&mut BufReader::new(entry))
                .and_then(|()| stack.finalize())
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|| Err("the pickle is malformed".to_string()))
        .map_err(|e| Error::input(path, format!("not a PyTorch state dict: {e}")))?;
        objects.push(object);
    }
    Ok(objects)
}

/// The first global of `object` that is not allowed.
fn first_disallowed(object: &Object) -> Option<(String, String)> {
    match object {
        Object::Class {
            module_name,
            class_name,
        } => {
            let allowed = ALLOWED.iter().any(|&(m, c)| {
                m == module_name
                    && (c == class_name
                        || c.strip_prefix('*').is_some_and(|s| class_name.ends_with(s)))
            });
            (!allowed).then(|| (module_name.clone(), class_name.clone()))
        }
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            first_disallowed(callable).or_else(|| first_disallowed(args))
        }
        Object::Tuple(items) | Object::List(items) => items.iter().find_map(first_disallowed),
        Object::Dict(pairs) => pairs
            .iter()
            .find_map(|(k, v)| first_disallowed(k).or_else(|| first_disallowed(v))),
        Object::PersistentLoad(inner) => first_disallowed(inner),
        _ => None,
    }
}

/// `path` itself when it is not a pickle; else, once checked ([`check_pickle`]), a
/// safetensors copy of its tensors (those at the top level, or under the first of `keys` that
/// holds any: `state_dict` for checkpoints, `string_to_param` for embeddings), made once and
/// kept in the app's cache.
pub fn as_safetensors(path: &Path, keys: &[&str]) -> Result<PathBuf> {
    if !is_pickle(path) {
        return Ok(path.to_path_buf());
    }
    check_pickle(path)?;
    let dir = default_cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("pickles");
    let hash = sha256_file(path)?;
    let converted = dir.join(format!("{}.safetensors", &hash[..16]));
    if converted.is_file() {
        return Ok(converted);
    }
    let all = if is_zip(path) {
        let read = |key: Option<&str>| {
            PthTensors::new(path, key)
                .ok()
                .filter(|t| !t.tensor_infos().is_empty())
        };
        let tensors = read(None)
            .or_else(|| keys.iter().find_map(|k| read(Some(k))))
            .ok_or_else(|| Error::input(path, "holds no tensors this app can read"))?;
        let mut all = HashMap::new();
        for name in tensors.tensor_infos().keys() {
            if let Ok(Some(t)) = tensors.get(name) {
                all.insert(name.clone(), t);
            }
        }
        all
    } else {
        legacy::read(path)?.tensors(path, keys)?
    };
    if all.is_empty() {
        return Err(Error::input(path, "holds no tensors this app can read"));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::output(&dir, e.to_string()))?;
    // Only the path is kept open to candle's writer: Windows refuses to recreate a file this
    // process still holds open.
    let temp = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile_in(&dir)
        .map_err(|e| Error::output(&dir, e.to_string()))?
        .into_temp_path();
    candle_core::safetensors::save(&all, &temp)
        .map_err(|e| Error::output(&converted, e.to_string()))?;
    // Never replace: the name is the pickle's hash, so a copy already there (written meanwhile
    // by another run) holds the same tensors, and on Windows it cannot be replaced while
    // another run has it mapped.
    match temp.persist_noclobber(&converted) {
        Ok(_) => Ok(converted),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(converted),
        Err(e) => Err(Error::output(&converted, e.error.to_string())),
    }
}
