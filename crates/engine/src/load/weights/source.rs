//! A candle var builder over safetensors files, with renamed and derived tensors.
//!
//! The engine's modules ask for diffusers names; a [`WeightSource`] maps each such name to a
//! tensor of a [`SafetensorsFile`] (under the file's own name) and an optional
//! [`Derive`] step (a row slice of a fused projection, a transpose, a reshape). Tensors are
//! read on demand, so nothing but the headers stays resident between requests.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::load::weights::file::SafetensorsFile;

/// How a requested tensor is made from the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derive {
    /// As stored.
    Plain,
    /// Rows `start..start + len` of dimension 0 (e.g. q, k or v of a fused `in_proj`).
    Rows {
        /// First row.
        start: usize,
        /// Number of rows.
        len: usize,
    },
    /// The transpose of a 2-D tensor (OpenCLIP's `text_projection` is `x @ P`, a linear
    /// layer's weight is `Pᵀ`).
    Transpose,
    /// The same values in another shape (a 1×1 convolution's `[c, c, 1, 1]` as `[c, c]`).
    Reshape(Vec<usize>),
}

/// Where a requested tensor comes from.
#[derive(Debug, Clone)]
pub struct TensorRef {
    /// The file holding it.
    pub file: Arc<SafetensorsFile>,
    /// Its name in the file.
    pub name: String,
    /// How to derive the requested tensor from it.
    pub derive: Derive,
}

impl TensorRef {
    /// The shape the derived tensor will have, from the header alone.
    pub fn shape(&self) -> Option<Vec<usize>> {
        let stored = self.file.shape(&self.name)?.to_vec();
        match &self.derive {
            Derive::Plain => Some(stored),
            Derive::Rows { start, len } => {
                let mut s = stored;
                (s.first().is_some_and(|&n| start + len <= n)).then(|| {
                    s[0] = *len;
                    s
                })
            }
            Derive::Transpose => (stored.len() == 2).then(|| vec![stored[1], stored[0]]),
            Derive::Reshape(shape) => (shape.iter().product::<usize>()
                == stored.iter().product::<usize>())
            .then(|| shape.clone()),
        }
    }

    /// Reads and derives the tensor.
    pub fn load(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let t = self.file.tensor(&self.name, dtype, device)?;
        match &self.derive {
            Derive::Plain => Ok(t),
            Derive::Rows { start, len } => t.narrow(0, *start, *len)?.contiguous(),
            Derive::Transpose => t.t()?.contiguous(),
            Derive::Reshape(shape) => t.reshape(shape.as_slice()),
        }
    }
}

/// Requested (diffusers) names → stored tensors.
#[derive(Debug, Clone, Default)]
pub struct WeightSource {
    entries: HashMap<String, TensorRef>,
}

impl WeightSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every tensor of `file` under its own name.
    pub fn identity(file: Arc<SafetensorsFile>) -> Self {
        let mut source = Self::new();
        for name in file.names() {
            source.insert(name.clone(), Arc::clone(&file), name, Derive::Plain);
        }
        source
    }

    /// Serves `file`'s tensor `stored` (derived by `derive`) under `requested`; a later
    /// insert under the same name replaces an earlier one.
    pub fn insert(
        &mut self,
        requested: impl Into<String>,
        file: Arc<SafetensorsFile>,
        stored: impl Into<String>,
        derive: Derive,
    ) {
        self.entries.insert(
            requested.into(),
            TensorRef {
                file,
                name: stored.into(),
                derive,
            },
        );
    }

    /// Where `requested` comes from.
    pub fn get(&self, requested: &str) -> Option<&TensorRef> {
        self.entries.get(requested)
    }

    /// Every requested name served, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// How many names are served.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no name is served.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A candle var builder reading from this source, converting to `dtype` on `device`.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for WeightSource {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _hints: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })?;
        // Check the shape from the header before reading anything.
        let expected = shape.dims();
        match entry.shape() {
            Some(found) if found == expected => entry.load(dtype, dev),
            Some(found) => Err(candle_core::Error::Msg(format!(
                "{}: tensor {name} (stored as {}): shape {found:?}, expected {expected:?}",
                entry.file.path().display(),
                entry.name,
            ))),
            None => Err(candle_core::Error::Msg(format!(
                "{}: tensor {name} cannot be made from {} ({:?} of shape {:?})",
                entry.file.path().display(),
                entry.name,
                entry.derive,
                entry.file.shape(&entry.name),
            ))),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.into() })?
            .load(dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}
