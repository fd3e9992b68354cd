//! Weights held in bf16 and widened to f32 as each layer runs ([`Compute::Bf16Weights`]):
//! `--precision bf16` on a CPU without bf16 instructions (no AMX, no AVX512-BF16: Zen 2/3,
//! Intel's client cores).
//!
//! On such a CPU a bf16 product is an f32 product of rounded operands, so rounding the
//! activations buys nothing and the emulated bf16 products lost the f32 path's Winograd
//! convolutions (a 512² SD 1.5 step on a Zen 3: 16.6 s emulated against 9.1 s in f32, and
//! more memory). Here the layers keep their weights as bf16 bits (half the memory of f32) and
//! widen them into one reused f32 buffer just before the f32 kernels run (a bf16 value is the
//! high half of an f32, so widening is exact); activations and products stay f32. The
//! Winograd convolutions take the bits themselves and widen one output channel's kernels at a
//! time as they transform them ([`crate::kernels::winograd::Kernel`]), so the shared buffer
//! never holds their kernels (SD 1.5's largest is 118 MB in f32; a 512² bf16 loop holds
//! 61 MiB less through its steps on a Zen 3).
//!
//! [`Compute::Bf16Weights`]: crate::kernels::compute::Compute::Bf16Weights

use std::sync::Mutex;

use rayon::prelude::*;

use crate::kernels::bf16::bf16_bits;
use crate::kernels::fastmath::dispatch;

/// A weight matrix or kernel as bf16 bits (rounded to nearest even), in the order of the f32
/// values it was made from.
#[derive(Clone)]
pub struct Bf16Weights {
    bits: Vec<u16>,
}

impl std::fmt::Debug for Bf16Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Weights({} values)", self.bits.len())
    }
}

/// Values widened per task (256 KiB of f32): enough to pay for a task, few enough to spread
/// a layer over the threads.
const TASK_VALUES: usize = 1 << 16;

dispatch! {
    /// `dst[i] ← src[i]` widened from bf16 bits to f32 (`dst` and `src` of equal length).
    pub fn widen(dst: &mut [f32], src: &[u16]) -> () = widen_generic
}

#[inline(always)]
fn widen_generic(dst: &mut [f32], src: &[u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s) << 16);
    }
}

/// The widened weights of the layer running now, reused from one layer to the next (a fresh
/// allocation per layer would page-fault its whole length every time) and released by
/// [`release_scratch`] when a network pass ends.
static WIDENED: Mutex<Vec<f32>> = Mutex::new(Vec::new());

impl Bf16Weights {
    /// `values` rounded to bf16 (on candle's threads).
    pub fn new(values: &[f32]) -> Self {
        let mut bits = vec![0u16; values.len()];
        bits.par_chunks_mut(TASK_VALUES)
            .zip(values.par_chunks(TASK_VALUES))
            .for_each(|(bits, values)| {
                for (b, &v) in bits.iter_mut().zip(values) {
                    *b = bf16_bits(v);
                }
            });
        Bf16Weights { bits }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.bits.len()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        2 * self.bits.len()
    }

    /// The values as bf16 bits, in order.
    pub fn bits(&self) -> &[u16] {
        &self.bits
    }

    /// `dst ← the values widened to f32` (on candle's threads; `dst` as long as the values).
    pub fn widen_into(&self, dst: &mut [f32]) {
        assert_eq!(
            dst.len(),
            self.bits.len(),
            "widened into a buffer of another length"
        );
        dst.par_chunks_mut(TASK_VALUES)
            .zip(self.bits.par_chunks(TASK_VALUES))
            .for_each(|(dst, src)| widen(dst, src));
    }

    /// Runs `f` on the values widened to f32, in a buffer shared between layers (a fresh one
    /// when another thread holds it).
    pub fn with_widened<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        let len = self.bits.len();
        match WIDENED.try_lock() {
            Ok(mut buffer) => {
                crate::kernels::scratch::grow_scratch(&mut buffer, len);
                self.widen_into(&mut buffer[..len]);
                f(&buffer[..len])
            }
            Err(_) => {
                let mut values = vec![0f32; len];
                self.widen_into(&mut values);
                f(&values)
            }
        }
    }
}

/// Frees the buffer of widened weights (see [`Bf16Weights::with_widened`]); for the end of a
/// network pass.
pub fn release_scratch() {
    if let Ok(mut buffer) = WIDENED.lock() {
        *buffer = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16::round_bf16;

    #[test]
    fn widened_values_are_the_bf16_roundings() {
        // Several tasks' worth, with a short last one, and the values rounding must handle.
        let mut values: Vec<f32> = (0..3 * TASK_VALUES + 1234)
            .map(|i| ((i as f32) * 0.618_034).sin() * 10f32.powi(i as i32 % 7 - 3))
            .collect();
        values[..6].copy_from_slice(&[
            0.0,
            -0.0,
            f32::INFINITY,
            f32::MAX,
            1.0 + f32::EPSILON,
            -3.0e-39,
        ]);
        let weights = Bf16Weights::new(&values);
        assert_eq!(
            (weights.len(), weights.bytes()),
            (values.len(), 2 * values.len())
        );
        let expected: Vec<u32> = values.iter().map(|&v| round_bf16(v).to_bits()).collect();
        let got = weights.with_widened(|w| w.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert_eq!(got, expected);
        // A second, shorter layer reuses the buffer and sees only its own values.
        let short = Bf16Weights::new(&values[..100]);
        let got = short.with_widened(|w| w.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert_eq!(got, expected[..100]);
        release_scratch();
    }
}
