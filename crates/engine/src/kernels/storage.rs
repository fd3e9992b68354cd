//! Reaching the f32 data of a CPU tensor, for the kernels that work on slices.

use candle_core::{CpuStorage, Layout, Result, Storage};

/// The f32 data of a contiguous CPU tensor.
pub(crate) fn f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("expected a contiguous f32 CPU tensor"),
    }
}
