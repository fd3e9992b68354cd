//! Weights read from safetensors files on demand, without mapping or copying whole files.
//!
//! - [`file`]: one safetensors file: validated header, positioned reads per tensor, F16 /
//!   BF16 / F32 converted to the requested dtype;
//! - [`source`]: requested names → stored tensors (renamed, sliced, transposed, reshaped),
//!   served to the model code as a candle `VarBuilder`;
//! - [`hash`]: A1111's short model hash, cached per file.

pub mod file;
pub mod hash;
pub mod source;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use file::SafetensorsFile;
pub use source::{Derive, TensorRef, WeightSource};

use loopback_core::Result;

/// A var builder serving every tensor of the safetensors file `path` under its own name.
pub fn var_builder(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let file = Arc::new(SafetensorsFile::open(path)?);
    Ok(WeightSource::identity(file).into_var_builder(dtype, device))
}
