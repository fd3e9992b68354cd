//! A linear layer whose CPU product can run in bf16.
//!
//! On other devices and dtypes it is candle's `Linear`, unchanged. On the CPU in f32 it keeps
//! candle's weights but writes `x · Wᵀ` straight into an output that already holds the bias
//! (candle adds the bias in a second, single-threaded pass over the output). With
//! [`Compute::Bf16`] its weight is packed once into bf16 ([`PackedRhs`], half the memory; the
//! f32 weight is dropped) and `x · Wᵀ + b` is one bf16 product written straight into an
//! output that already holds the bias. With [`Compute::Bf16Weights`] the weight is held in
//! bf16 ([`Bf16Weights`]) and widened to f32 for an f32 product into that output. A bf16
//! layer needs f32 CPU input (the model keeps its activations f32 in that mode).

use std::sync::Arc;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::bf16::{Lhs, PackedRhs, Rhs, gemm_bf16};
use crate::kernels::compute::Compute;
use crate::kernels::gemm::gemm_f32;
use crate::kernels::storage::f32_slice;
use crate::kernels::widened::Bf16Weights;

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
    /// bf16 weights on a CPU without bf16 instructions: `W` (`out × in`) in bf16, and the
    /// bias.
    Widened {
        weight: Arc<Bf16Weights>,
        bias: Option<Vec<f32>>,
    },
}

impl Linear {
    /// Loads `weight` (`out × in`) and, when `bias`, `bias` from `vb`; with
    /// [`Compute::Bf16`] on the CPU packs the weight into bf16 ([`Compute::Bf16Weights`]
    /// holds it in bf16).
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
    /// for f32, its weight packed into bf16 for [`Compute::Bf16`] or held in bf16 for
    /// [`Compute::Bf16Weights`] (and the f32 weight dropped) when it is an f32 CPU tensor.
    pub fn from_candle(inner: candle_nn::Linear, compute: Compute) -> Result<Self> {
        let weight = inner.weight();
        let (outputs, inputs) = weight.dims2()?;
        let bf16 = compute.bf16_weights()
            && matches!(weight.device(), Device::Cpu)
            && weight.dtype() == DType::F32;
        let weights = if bf16 {
            let weight = weight.contiguous()?;
            let (store, layout) = weight.storage_and_layout();
            let values = f32_slice(&store, layout)?;
            let bias = inner.bias().map(|b| b.to_vec1::<f32>()).transpose()?;
            if compute == Compute::Bf16 {
                // Wᵀ as the right operand: element (i, o) is W[o][i].
                let packed = PackedRhs::new(inputs, outputs, (values, 1, inputs));
                Weights::Bf16 {
                    packed: Arc::new(packed),
                    bias,
                }
            } else {
                Weights::Widened {
                    weight: Arc::new(Bf16Weights::new(values)),
                    bias,
                }
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

    /// Whether its weight is held in bf16 (the f32 weight dropped).
    pub fn is_bf16(&self) -> bool {
        !matches!(self.weights, Weights::Candle(_))
    }

    /// [`Linear::forward`] on the CPU: `product(x, rows, out)` adds `x · Wᵀ` to `out`, which
    /// holds the bias.
    fn forward_cpu(
        &self,
        xs: &Tensor,
        bias: Option<&[f32]>,
        product: impl FnOnce(&[f32], usize, &mut [f32]),
    ) -> Result<Tensor> {
        let (inputs, outputs) = (self.inputs, self.outputs);
        if xs.dim(D::Minus1)? != inputs || !matches!(xs.device(), Device::Cpu) {
            candle_core::bail!(
                "linear: input {:?}, expected (…, {inputs}) on the CPU",
                xs.dims()
            );
        }
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        let rows = xs.elem_count() / inputs.max(1);
        let mut out = match bias {
            Some(bias) => crate::kernels::filled::repeated_rows(bias, rows),
            None => crate::kernels::filled::zeros(rows * outputs),
        };
        let (x_store, x_layout) = xs.storage_and_layout();
        product(f32_slice(&x_store, x_layout)?, rows, &mut out);
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
            Weights::Candle(linear) if fast_f32(linear, xs) => {
                let weight = linear.weight().contiguous()?;
                let (w_store, w_layout) = weight.storage_and_layout();
                let w = f32_slice(&w_store, w_layout)?;
                let bias = linear.bias().map(|b| b.contiguous()).transpose()?;
                let bias = bias.as_ref().map(|b| b.storage_and_layout());
                let bias = match &bias {
                    Some((store, layout)) => Some(f32_slice(store, layout)?),
                    None => None,
                };
                self.forward_cpu(xs, bias, |x, rows, out| {
                    // Wᵀ as the right operand: element (i, o) is W[o][i].
                    let (lhs, rhs) = ((x, self.inputs, 1), (w, 1, self.inputs));
                    let dims = (rows, self.outputs, self.inputs);
                    gemm_f32(dims, out, self.outputs, lhs, rhs, bias.is_some(), true);
                })
            }
            Weights::Candle(linear) => linear.forward(xs),
            Weights::Bf16 { packed, bias } => {
                self.forward_cpu(xs, bias.as_deref(), |x, rows, out| {
                    let (lhs, rhs) = (Lhs::View((x, self.inputs, 1)), Rhs::Packed(packed));
                    let dims = (rows, self.outputs, self.inputs);
                    gemm_bf16(dims, out, self.outputs, lhs, rhs, true, true);
                })
            }
            Weights::Widened { weight, bias } => {
                self.forward_cpu(xs, bias.as_deref(), |x, rows, out| {
                    weight.with_widened(|w| {
                        // Wᵀ as the right operand: element (i, o) is W[o][i].
                        let (lhs, rhs) = ((x, self.inputs, 1), (w, 1, self.inputs));
                        let dims = (rows, self.outputs, self.inputs);
                        gemm_f32(dims, out, self.outputs, lhs, rhs, true, true);
                    })
                })
            }
        }
    }
}

/// Whether candle's f32 layer `linear` can run `xs` on the f32 CPU path of
/// [`Linear::forward`].
fn fast_f32(linear: &candle_nn::Linear, xs: &Tensor) -> bool {
    let cpu_f32 = |t: &Tensor| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32;
    cpu_f32(xs) && cpu_f32(linear.weight()) && linear.bias().is_none_or(cpu_f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16::round_bf16;

    /// The f32 layer against candle's, and layers with bf16 weights against the f32 layer
    /// with the bf16-rounded weight: bit for bit when the weight is widened for the f32
    /// product ([`Compute::Bf16Weights`]), up to the input's rounding and the order of the
    /// sums for bf16 products; with and without a bias, on a batch of several token rows.
    #[test]
    fn bf16_weights_match_f32_on_the_rounded_weight() {
        let dev = &Device::Cpu;
        let (inputs, outputs) = (70, 45);
        let weight = Tensor::randn(0f32, 1.0, (outputs, inputs), dev).unwrap();
        let values: Vec<f32> = weight.flatten_all().unwrap().to_vec1().unwrap();
        let rounded: Vec<f32> = values.into_iter().map(round_bf16).collect();
        let rounded = Tensor::from_vec(rounded, (outputs, inputs), dev).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (2, 19, inputs), dev).unwrap();
        for bias in [None, Some(Tensor::randn(0f32, 1.0, outputs, dev).unwrap())] {
            let layer = |w: &Tensor, compute| {
                let inner = candle_nn::Linear::new(w.clone(), bias.clone());
                Linear::from_candle(inner, compute).unwrap()
            };
            let expected = layer(&rounded, Compute::F32).forward(&xs).unwrap();
            // The f32 path (bias first, then the product) against candle's layer.
            let candle = candle_nn::Linear::new(rounded.clone(), bias.clone());
            let diff = crate::test_util::max_abs_diff(&expected, &candle.forward(&xs).unwrap());
            assert!(diff < 1e-4, "f32 against candle: {diff}");
            let widened = layer(&weight, Compute::Bf16Weights);
            assert!(widened.is_bf16() && !layer(&weight, Compute::F32).is_bf16());
            let got = widened.forward(&xs).unwrap();
            assert_eq!(got.dims(), [2, 19, outputs]);
            assert_eq!(crate::test_util::max_abs_diff(&got, &expected), 0.0);
            let bf16 = layer(&weight, Compute::Bf16).forward(&xs).unwrap();
            let diff = crate::test_util::max_abs_diff(&bf16, &expected);
            // The input's rounding: at most 2⁻⁹ of each |x · w| term.
            assert!(diff <= 0.01 * inputs as f32, "bf16 products: {diff}");
        }
    }
}
