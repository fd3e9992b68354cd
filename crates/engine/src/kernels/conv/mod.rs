//! 2-D convolution with a fast f32 CPU path, and candle's convolution everywhere else.
//!
//! candle 0.11's CPU convolution (`conv2d_tiled`) re-flattens the kernel on every call, turns
//! the input into NHWC on one thread, gathers each patch with a stride of 512 elements, and
//! scatters the result back into NCHW; then the bias is added in another pass. Here, in NCHW
//! throughout:
//! - the OIHW kernel as stored *is* the `(c_out, c_in·k·k)` left-hand matrix: no reordering;
//! - the patch matrix is built in bands of output rows, one `(ci, kh, kw)` row at a time as
//!   shifted copies of input rows (contiguous runs; rows built in parallel);
//! - one `gemm` per band writes straight into the NCHW output, whose band was first filled
//!   with the bias (plus an optional per-image, per-channel term — the UNet's time
//!   embedding), so bias and that addition cost nothing extra;
//! - 1×1 convolutions with stride 1 are a single `gemm` on the input as it is;
//! - 3×3 convolutions with stride 1 on large enough images use Winograd F(4×4, 3×3) or
//!   F(2×2, 3×3) ([`crate::kernels::winograd`]), 4× or 2.25× fewer multiplications.
//!
//! Other devices and dtypes use candle's `conv2d` and broadcast additions.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::kernels::bf16::PackedLhs;
use crate::kernels::compute::Compute;
use crate::kernels::filled;
use crate::kernels::im2col::Geometry;
use crate::kernels::storage::f32_slice;
use crate::kernels::widened::Bf16Weights;
use crate::kernels::winograd;

/// A convolution layer (square kernel, zero padding, no dilation or groups).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weights: Weights,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

/// The kernel and bias, as the arithmetic wants them.
#[derive(Debug, Clone)]
enum Weights {
    /// candle's layer: f32 products on the CPU (any dtype and device otherwise).
    Candle(candle_nn::Conv2d),
    /// bf16 on the CPU: the kernel in bf16 (half the memory of the f32 kernel, which is
    /// dropped), and the bias. Needs f32 CPU input.
    Bf16 {
        kernel: Bf16Kernel,
        bias: Option<Tensor>,
    },
}

/// A bf16 layer's kernel, as its [`Compute`] wants it.
#[derive(Debug, Clone)]
enum Bf16Kernel {
    /// Packed once for the bf16 products (`c_out × (c_in·k·k)`): [`Compute::Bf16`].
    Packed(Arc<PackedLhs>),
    /// Held in bf16 and widened for the f32 path (Winograd included) as the layer runs:
    /// [`Compute::Bf16Weights`].
    Widened(Arc<Bf16Weights>),
}

impl Conv2d {
    /// Loads `weight` (and `bias`) from `vb`; products in f32.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::with_compute(vb, (cin, cout), kernel, stride, padding, Compute::F32)
    }

    /// [`Conv2d::new`] with the CPU products in `compute`'s arithmetic (bf16: the kernel
    /// packed into bf16, or held in bf16 for [`Compute::Bf16Weights`], now, when it is an
    /// f32 CPU tensor).
    pub fn with_compute(
        vb: VarBuilder,
        (cin, cout): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
        compute: Compute,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let inner = candle_nn::conv2d(cin, cout, kernel, cfg, vb)?;
        let weight = inner.weight();
        let weights = if compute.bf16_weights() && fast(weight) {
            let weight = weight.contiguous()?;
            let (store, layout) = weight.storage_and_layout();
            let values = f32_slice(&store, layout)?;
            let depth = cin * kernel * kernel;
            let kernel = if compute == Compute::Bf16 {
                // The OIHW kernel is the (c_out, depth) left operand as it is stored.
                Bf16Kernel::Packed(Arc::new(PackedLhs::new(cout, depth, (values, depth, 1))))
            } else {
                Bf16Kernel::Widened(Arc::new(Bf16Weights::new(values)))
            };
            drop(store);
            Weights::Bf16 {
                kernel,
                bias: inner.bias().cloned(),
            }
        } else {
            Weights::Candle(inner)
        };
        Ok(Conv2d {
            weights,
            cin,
            cout,
            kernel,
            stride,
            padding,
        })
    }

    /// candle's layer, for input the CPU kernels do not take (a bf16 layer has none).
    fn candle(&self) -> Result<&candle_nn::Conv2d> {
        match &self.weights {
            Weights::Candle(conv) => Ok(conv),
            Weights::Bf16 { .. } => {
                candle_core::bail!("conv2d: a bf16 CPU layer takes f32 CPU input only")
            }
        }
    }

    /// The padding.
    pub fn padding(&self) -> usize {
        self.padding
    }

    /// Whether its kernel is held in bf16 (the f32 kernel dropped).
    pub fn is_bf16(&self) -> bool {
        matches!(self.weights, Weights::Bf16 { .. })
    }

    /// `conv(xs) + bias + extra`, where `extra: (batch, c_out)` is added to every pixel of
    /// each image and channel (the UNet's projected time embedding).
    pub fn forward_plus(&self, xs: &Tensor, extra: Option<&Tensor>) -> Result<Tensor> {
        if !fast(xs) {
            let out = self.candle()?.forward(xs)?;
            return match extra {
                Some(extra) => out.broadcast_add(&extra.unsqueeze(2)?.unsqueeze(3)?),
                None => Ok(out),
            };
        }
        let g = self.geometry(xs, self.symmetric())?;
        let extra = extra.map(|e| e.contiguous()).transpose()?;
        if let Some(e) = &extra
            && e.dims() != [g.batch, self.cout]
        {
            candle_core::bail!(
                "conv2d: extra term {:?}, expected ({}, {})",
                e.dims(),
                g.batch,
                self.cout
            );
        }
        let extra_guard = extra.as_ref().map(|e| e.storage_and_layout());
        let extra = match &extra_guard {
            Some((store, layout)) => Some(f32_slice(store, layout)?),
            None => None,
        };
        let mut out = self.biased((g.batch, g.out_h * g.out_w), extra, None, None)?;
        drop(extra_guard);
        self.accumulate(xs, g, &mut out)?;
        Tensor::from_vec(out, g.out_dims(self.cout), &Device::Cpu)
    }

    /// `conv(xs) + bias + residual` in one output buffer: the end of a residual block, with
    /// the skip connection either a tensor of the output's shape or another convolution (a
    /// 1×1 shortcut) of its own input.
    pub fn forward_residual(&self, xs: &Tensor, residual: Residual) -> Result<Tensor> {
        if !fast(xs) {
            let out = self.candle()?.forward(xs)?;
            return match residual {
                Residual::Tensor(t) => out + t,
                Residual::Conv(conv, t) => out + conv.forward(t)?,
            };
        }
        let g = self.geometry(xs, self.symmetric())?;
        let plane = g.out_h * g.out_w;
        let mut out = match residual {
            Residual::Tensor(t) => {
                if t.dims4()? != g.out_dims(self.cout) {
                    candle_core::bail!(
                        "conv2d: residual {:?}, expected {:?}",
                        t.dims(),
                        g.out_dims(self.cout)
                    );
                }
                let t = t.contiguous()?;
                let (store, layout) = t.storage_and_layout();
                let residual = f32_slice(&store, layout)?;
                self.biased((g.batch, plane), None, None, Some(residual))?
            }
            Residual::Conv(conv, t) => {
                let h = conv.geometry(t, conv.symmetric())?;
                if !fast(t) || h.out_dims(conv.cout) != g.out_dims(self.cout) {
                    candle_core::bail!(
                        "conv2d: shortcut gives {:?}, expected {:?}",
                        h.out_dims(conv.cout),
                        g.out_dims(self.cout)
                    );
                }
                let mut out = self.biased((g.batch, plane), None, Some(conv), None)?;
                conv.accumulate(t, h, &mut out)?;
                out
            }
        };
        self.accumulate(xs, g, &mut out)?;
        Tensor::from_vec(out, g.out_dims(self.cout), &Device::Cpu)
    }

    /// The convolution of `xs` padded with one more row of zeros at the bottom and one more
    /// column at the right than the layer's own padding (diffusers' VAE encoder pads so
    /// before its stride-2 downsampling), without building the padded copy.
    pub fn forward_pad_end(&self, xs: &Tensor) -> Result<Tensor> {
        if !fast(xs) {
            return self
                .candle()?
                .forward(&xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?);
        }
        let p = self.padding;
        let g = self.geometry(xs, (p, p + 1, p, p + 1))?;
        let mut out = self.biased((g.batch, g.out_h * g.out_w), None, None, None)?;
        self.accumulate(xs, g, &mut out)?;
        Tensor::from_vec(out, g.out_dims(self.cout), &Device::Cpu)
    }

    /// `conv(upsample_nearest_2x(xs))` (the VAE decoder's upsampler) in bands of output rows,
    /// so the 4× larger upsampled input exists only one band at a time.
    pub fn forward_upsampled(&self, xs: &Tensor) -> Result<Tensor> {
        self.upsampled_in_bands(xs, BAND_INPUT_BYTES)
    }

    /// [`Conv2d::forward_upsampled`] with about `band_bytes` of upsampled input per band.
    fn upsampled_in_bands(&self, xs: &Tensor, band_bytes: usize) -> Result<Tensor> {
        let (batch, _, h, w) = xs.dims4()?;
        let (out_h, out_w) = (2 * h, 2 * w);
        self.forward_banded((batch, out_h, out_w), band_bytes, |lo, hi| {
            // Upsampled rows lo..hi come from input rows lo/2..ceil(hi/2).
            let (src_lo, src_hi) = (lo / 2, hi.div_ceil(2));
            xs.narrow(2, src_lo, src_hi - src_lo)?
                .upsample_nearest2d(2 * (src_hi - src_lo), out_w)?
                .narrow(2, lo - 2 * src_lo, hi - lo)
        })
    }

    /// The convolution of an input that is produced band by band: `band(lo, hi)` gives rows
    /// `lo..hi` of the `(batch, c_in, height, width)` input. Output rows are computed in bands
    /// of about `band_bytes` of input each, so the whole input never exists at once (the price:
    /// `2 × padding` rows per band computed twice). For size-preserving convolutions (stride
    /// 1, padding `(k − 1) / 2`) on f32 CPU tensors; otherwise the whole input is built and
    /// convolved.
    pub fn forward_banded(
        &self,
        (batch, height, width): (usize, usize, usize),
        band_bytes: usize,
        band: impl Fn(usize, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let p = self.padding;
        let same_size = self.kernel == 2 * p + 1 && self.stride == 1;
        let rows = (band_bytes / (4 * self.cin * width).max(1)).max(8) & !1;
        if !same_size || rows >= height {
            return self.forward(&band(0, height)?);
        }
        let plane = height * width;
        let mut out = vec![0f32; batch * self.cout * plane];
        let mut r0 = 0;
        while r0 < height {
            let r1 = (r0 + rows).min(height);
            // Input rows lo..hi feed output rows r0..r1. Zero padding is right at the
            // image's edges; the rows the band's own padding spoils (its first and last p
            // inside the image) are not copied.
            let (lo, hi) = (r0.saturating_sub(p), (r1 + p).min(height));
            let input = band(lo, hi)?;
            if !fast(&input) {
                drop(input);
                return self.forward(&band(0, height)?);
            }
            let y = self.forward(&input)?;
            drop(input);
            let (store, layout) = y.storage_and_layout();
            let y = f32_slice(&store, layout)?;
            let (skip, len) = ((r0 - lo) * width, (r1 - r0) * width);
            out.par_chunks_mut(plane)
                .zip(y.par_chunks((hi - lo) * width))
                .for_each(|(dst, src)| {
                    dst[r0 * width..][..len].copy_from_slice(&src[skip..][..len]);
                });
            r0 = r1;
        }
        Tensor::from_vec(out, (batch, self.cout, height, width), &Device::Cpu)
    }

    fn symmetric(&self) -> Pad {
        let p = self.padding;
        (p, p, p, p)
    }

    /// The sizes of a convolution of `xs` with `pad`.
    fn geometry(&self, xs: &Tensor, (top, bottom, left, right): Pad) -> Result<Geometry> {
        let (batch, cin, height, width) = xs.dims4()?;
        if cin != self.cin {
            candle_core::bail!("conv2d: {cin} input channels, expected {}", self.cin);
        }
        let (k, s) = (self.kernel, self.stride);
        if height + top + bottom < k || width + left + right < k {
            candle_core::bail!("conv2d: input {height}x{width} smaller than the kernel");
        }
        Ok(Geometry {
            batch,
            cin,
            height,
            width,
            k,
            s,
            top,
            left,
            out_h: (height + top + bottom - k) / s + 1,
            out_w: (width + left + right - k) / s + 1,
            winograd: k == 3 && s == 1 && (top, bottom, left, right) == (1, 1, 1, 1),
        })
    }

    /// A new output of `batch × c_out` planes of `plane` values, each holding the bias (plus
    /// `other`'s bias, plus `extra[image][channel]`), added to `add` element by element where
    /// given; written once, on candle's threads ([`filled::planes`]).
    fn biased(
        &self,
        (batch, plane): (usize, usize),
        extra: Option<&[f32]>,
        other: Option<&Conv2d>,
        add: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let own = self.bias_values()?;
        let other = match other {
            Some(conv) => conv.bias_values()?,
            None => None,
        };
        let cout = self.cout;
        Ok(filled::planes(batch * cout, plane, add, |i| {
            let (b, c) = (i / cout, i % cout);
            own.as_ref().map_or(0.0, |v| v[c])
                + other.as_ref().map_or(0.0, |v| v[c])
                + extra.map_or(0.0, |e| e[b * cout + c])
        }))
    }

    /// The bias, if the layer has one, as f32 values.
    fn bias_values(&self) -> Result<Option<Vec<f32>>> {
        let bias = match &self.weights {
            Weights::Candle(conv) => conv.bias(),
            Weights::Bf16 { bias, .. } => bias.as_ref(),
        };
        bias.map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()
    }

    /// Adds the convolution of `xs` (sizes `g`) to `out`.
    fn accumulate(&self, xs: &Tensor, g: Geometry, out: &mut [f32]) -> Result<()> {
        let xs = xs.contiguous()?;
        let (x_store, x_layout) = xs.storage_and_layout();
        let x = f32_slice(&x_store, x_layout)?;
        let image_len = g.cin * g.height * g.width;
        let plane = g.out_h * g.out_w;
        let weight = match &self.weights {
            Weights::Candle(conv) => conv.weight().contiguous()?,
            Weights::Bf16 { kernel, .. } => {
                match kernel {
                    Bf16Kernel::Packed(packed) => {
                        for (b, out_image) in out.chunks_mut(self.cout * plane).enumerate() {
                            g.convolve_packed(&x[b * image_len..][..image_len], packed, out_image);
                        }
                    }
                    Bf16Kernel::Widened(w) => match g.winograd_variant() {
                        // Widened one output channel at a time by the kernel transform.
                        Some(variant) => {
                            let kernel = winograd::Kernel::Bf16(w.bits());
                            variant.convolve(x, g.dims(), kernel, self.cout, out)
                        }
                        None => w.with_widened(|w| self.convolve_f32(x, w, g, out)),
                    },
                }
                return Ok(());
            }
        };
        let (w_store, w_layout) = weight.storage_and_layout();
        self.convolve_f32(x, f32_slice(&w_store, w_layout)?, g, out);
        Ok(())
    }

    /// Adds the f32 convolution of the images `x` (sizes `g`) with the OIHW kernel `w` to
    /// `out`: Winograd where it applies, else banded patch products.
    fn convolve_f32(&self, x: &[f32], w: &[f32], g: Geometry, out: &mut [f32]) {
        let image_len = g.cin * g.height * g.width;
        let plane = g.out_h * g.out_w;
        match g.winograd_variant() {
            Some(variant) => {
                variant.convolve(x, g.dims(), winograd::Kernel::F32(w), self.cout, out)
            }
            None => {
                for (b, out_image) in out.chunks_mut(self.cout * plane).enumerate() {
                    g.convolve(&x[b * image_len..][..image_len], w, self.cout, out_image);
                }
            }
        }
    }
}

/// What [`Conv2d::forward_residual`] adds to the convolution.
#[derive(Debug, Clone, Copy)]
pub enum Residual<'a> {
    /// A tensor of the output's shape.
    Tensor(&'a Tensor),
    /// Another convolution of another input (with its bias).
    Conv(&'a Conv2d, &'a Tensor),
}

/// Zero padding on each side: top, bottom, left, right.
type Pad = (usize, usize, usize, usize);

/// Bytes of input per band in [`Conv2d::forward_upsampled`] (and a fair choice for
/// [`Conv2d::forward_banded`]).
pub const BAND_INPUT_BYTES: usize = 32 << 20;

/// Whether the f32 CPU path applies.
fn fast(xs: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_plus(xs, None)
    }
}

#[cfg(test)]
mod tests;
