//! What a run holds in memory at which size: its weights' dtype and its activations' dtype.
//! They differ for bf16 on the CPU, where every network keeps its weights in bf16 (2 bytes)
//! and computes on f32 activations
//! (`crate::kernels::compute::Compute::bf16_weights`).

use candle_core::DType;

use super::system::is_gpu;
use crate::device::{DeviceSpec, Precision};
use crate::kernels::compute::Compute;

/// The dtypes of a run's weights and activations, as the planner counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtypes {
    /// The networks' weights (their matrices and kernels; the few norms, biases and small
    /// embeddings a bf16 model keeps in f32 are left to the planner's base overhead).
    pub weights: DType,
    /// The tensors the networks compute on.
    pub activations: DType,
}

impl Dtypes {
    /// Weights and activations in `dtype`.
    pub fn same(dtype: DType) -> Self {
        Dtypes {
            weights: dtype,
            activations: dtype,
        }
    }

    /// The dtypes of networks built for `compute` on tensors of `dtype` (a loaded model's
    /// `SdModel::compute` and `SdModel::dtype`): bf16 weights on f32 activations for
    /// [`Compute::Bf16`] and [`Compute::Bf16Weights`] (whose f32 buffer for the widened
    /// weights of the layer running now is left to the base overhead, like other scratch).
    pub fn for_compute(compute: Compute, dtype: DType) -> Self {
        match compute {
            Compute::Bf16 | Compute::Bf16Weights => Dtypes {
                weights: DType::BF16,
                activations: dtype,
            },
            Compute::F32 => Self::same(dtype),
        }
    }

    /// Whether the activations live in host memory as f32 (the CPU), which decides what a
    /// refusal suggests.
    pub(super) fn on_the_cpu(self) -> bool {
        self.activations == DType::F32
    }
}

impl std::fmt::Display for Dtypes {
    /// `F32`, or `BF16 weights, F32 activations` where the two differ.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.weights == self.activations {
            write!(f, "{:?}", self.activations)
        } else {
            write!(
                f,
                "{:?} weights, {:?} activations",
                self.weights, self.activations
            )
        }
    }
}

impl From<DType> for Dtypes {
    /// Weights and activations in one dtype (every device and precision but bf16 on the CPU).
    fn from(dtype: DType) -> Self {
        Self::same(dtype)
    }
}

/// The dtypes `device` will use at `precision` (`auto` as [`Precision::resolve`] decides),
/// without opening it: one dtype, except that bf16 on the CPU holds bf16 weights on f32
/// activations.
pub fn device_dtypes(device: DeviceSpec, precision: Precision) -> Dtypes {
    let gpu = is_gpu(device);
    match precision.resolve(gpu) {
        Precision::F16 => Dtypes::same(DType::F16),
        Precision::Bf16 if gpu => Dtypes::same(DType::BF16),
        Precision::Bf16 => Dtypes {
            weights: DType::BF16,
            activations: DType::F32,
        },
        Precision::F32 | Precision::Auto => Dtypes::same(DType::F32),
    }
}

/// The tensors' dtype `device` will use at `precision`, without opening it (the activations
/// of [`device_dtypes`]).
pub fn device_dtype(device: DeviceSpec, precision: Precision) -> DType {
    device_dtypes(device, precision).activations
}
