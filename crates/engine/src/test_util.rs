//! Helpers for the engine's unit tests.

use candle_core::Tensor;

/// Max abs difference of two tensors of the same shape, for the unit tests of the CPU
/// kernels and the networks.
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of the same shape")
}

/// The workspace's shared test fixtures (`tests/fixtures` at the repository root).
pub(crate) fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}
