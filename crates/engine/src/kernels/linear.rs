//! A linear layer whose CPU product can run in bf16.
//!
//! In f32 (and on every other device or dtype) it is candle's `Linear`, unchanged. With
//! [`Compute::Bf16`] its weight is packed once into bf16 ([`PackedRhs`], half the memory; the
//! f32 weight is dropped) and `x · Wᵀ + b` is one bf16 product written straight into an
//! output that already holds the bias. A bf16 layer needs f32 CPU input (the model keeps its
//! activations f32 in that mode).

use std::sync::Arc;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::bf16::{Lhs, PackedRhs, Rhs, gemm_bf16};
use crate::kernels::compute::Compute;
use crate::kernels::storage::f32_slice;

/// `x · Wᵀ + b` over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    weights: Weights,
    inputs: usize,
    outputs: usize,
}

/// The weights, as the arithmetic wants them.
#[derive(Debug, Clone)]
enum Weights {
    /// candle's layer: f32 (or any dtype, any device).
    Candle(candle_nn::Linear),
    /// bf16 on the CPU: `Wᵀ` packed (`in × out`), and the bias.
    Bf16 {
        packed: Arc<PackedRhs>,
        bias: Option<Vec<f32>>,
    },
}

impl Linear {
    /// Loads `weight` (`out × in`) and, when `bias`, `bias` from `vb`; with
    /// [`Compute::Bf16`] on the CPU packs the weight into bf16.
    pub fn new(
        vb: VarBuilder,
        (inputs, outputs): (usize, usize),
        bias: bool,
        compute: Compute,
    ) -> Result<Self> {
        let inner = if bias {
            candle_nn::linear(inputs, outputs, vb)?
        } else {
            candle_nn::linear_no_bias(inputs, outputs, vb)?
        };
        Self::from_candle(inner, compute)
    }

    /// candle's layer `inner` (weight `out × in`), in `compute`'s arithmetic: kept as it is
    /// for f32, its weight packed into bf16 (and the f32 weight dropped) for
    /// [`Compute::Bf16`] when it is an f32 CPU tensor.
    pub fn from_candle(inner: candle_nn::Linear, compute: Compute) -> Result<Self> {
        let weight = inner.weight();
        let (outputs, inputs) = weight.dims2()?;
        let bf16 = compute == Compute::Bf16
            && matches!(weight.device(), Device::Cpu)
            && weight.dtype() == DType::F32;
        let weights = if bf16 {
            let weight = weight.contiguous()?;
            let (store, layout) = weight.storage_and_layout();
            // Wᵀ as the right operand: element (i, o) is W[o][i].
            let packed = PackedRhs::new(inputs, outputs, (f32_slice(&store, layout)?, 1, inputs));
            drop(store);
            let bias = inner.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
            Weights::Bf16 {
                packed: Arc::new(packed),
                bias,
            }
        } else {
            Weights::Candle(inner)
        };
        Ok(Linear {
            weights,
            inputs,
            outputs,
        })
    }

    /// The number of outputs.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Whether its weight is held packed in bf16 (the f32 weight dropped).
    pub fn is_bf16(&self) -> bool {
        matches!(self.weights, Weights::Bf16 { .. })
    }

    /// The bf16 CPU product of [`Linear::forward`].
    fn forward_bf16(
        &self,
        xs: &Tensor,
        packed: &PackedRhs,
        bias: Option<&[f32]>,
    ) -> Result<Tensor> {
        let (inputs, outputs) = (self.inputs, self.outputs);
        if xs.dim(D::Minus1)? != inputs || !matches!(xs.device(), Device::Cpu) {
            candle_core::bail!(
                "linear (bf16): input {:?}, expected (…, {inputs}) on the CPU",
                xs.dims()
            );
        }
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        let rows = xs.elem_count() / inputs.max(1);
        let mut out = match bias {
            Some(bias) => crate::kernels::filled::repeated_rows(bias, rows),
            None => vec![0f32; rows * outputs],
        };
        let (x_store, x_layout) = xs.storage_and_layout();
        let x = f32_slice(&x_store, x_layout)?;
        gemm_bf16(
            (rows, outputs, inputs),
            &mut out,
            outputs,
            Lhs::View((x, inputs, 1)),
            Rhs::Packed(packed),
            true,
            true,
        );
        drop(x_store);
        let mut shape = xs.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = outputs;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.weights {
            Weights::Candle(linear) => linear.forward(xs),
            Weights::Bf16 { packed, bias } => self.forward_bf16(xs, packed, bias.as_deref()),
        }
    }
}
