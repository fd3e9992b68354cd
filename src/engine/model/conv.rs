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
//!   F(2×2, 3×3) ([`super::winograd`]), 4× or 2.25× fewer multiplications.
//!
//! Other devices and dtypes use candle's `conv2d` and broadcast additions.

use candle_core::{CpuStorage, DType, Device, Layout, Module, Result, Storage, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use super::winograd;

/// Bytes of patch matrix built at once per image.
const BAND_BYTES: usize = 8 << 20;

/// A convolution layer (square kernel, zero padding, no dilation or groups).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Loads `weight` (and `bias`) from `vb`.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(Conv2d {
            inner: candle_nn::conv2d(cin, cout, kernel, cfg, vb)?,
            cin,
            cout,
            kernel,
            stride,
            padding,
        })
    }

    /// The padding.
    pub fn padding(&self) -> usize {
        self.padding
    }

    /// `conv(xs) + bias + extra`, where `extra: (batch, c_out)` is added to every pixel of
    /// each image and channel (the UNet's projected time embedding).
    pub fn forward_plus(&self, xs: &Tensor, extra: Option<&Tensor>) -> Result<Tensor> {
        if matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32 {
            return self.forward_cpu(xs, extra);
        }
        let out = self.inner.forward(xs)?;
        match extra {
            Some(extra) => out.broadcast_add(&extra.unsqueeze(2)?.unsqueeze(3)?),
            None => Ok(out),
        }
    }

    fn forward_cpu(&self, xs: &Tensor, extra: Option<&Tensor>) -> Result<Tensor> {
        let (batch, cin, height, width) = xs.dims4()?;
        if cin != self.cin {
            candle_core::bail!("conv2d: {cin} input channels, expected {}", self.cin);
        }
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        if height + 2 * p < k || width + 2 * p < k {
            candle_core::bail!("conv2d: input {height}x{width} smaller than the kernel");
        }
        let out_h = (height + 2 * p - k) / s + 1;
        let out_w = (width + 2 * p - k) / s + 1;
        let xs = xs.contiguous()?;
        let weight = self.inner.weight().contiguous()?;
        let bias = self.inner.bias().map(|b| b.contiguous()).transpose()?;
        let extra = extra.map(|e| e.contiguous()).transpose()?;
        let extra = extra
            .as_ref()
            .map(|e| e.dims2().map(|d| (e, d)))
            .transpose()?;
        if let Some((_, dims)) = &extra
            && *dims != (batch, self.cout)
        {
            candle_core::bail!(
                "conv2d: extra term {dims:?}, expected ({batch}, {})",
                self.cout
            );
        }

        let (x_store, x_layout) = xs.storage_and_layout();
        let (w_store, w_layout) = weight.storage_and_layout();
        let x = f32_slice(&x_store, x_layout)?;
        let w = f32_slice(&w_store, w_layout)?;
        let bias_guard = bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias_guard {
            Some((store, layout)) => Some(f32_slice(store, layout)?),
            None => None,
        };
        let extra_guard = extra.as_ref().map(|(e, _)| e.storage_and_layout());
        let extra = match &extra_guard {
            Some((store, layout)) => Some(f32_slice(store, layout)?),
            None => None,
        };

        let geometry = Geometry {
            cin,
            height,
            width,
            k,
            s,
            p,
            out_h,
            out_w,
        };
        let plane = out_h * out_w;
        let winograd = (k == 3 && s == 1 && p == 1)
            .then(|| winograd::Variant::for_image(height, width))
            .flatten();
        let mut out = vec![0f32; batch * self.cout * plane];
        // Start from bias (+ extra) so the products only accumulate.
        out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
            let (b, c) = (i / self.cout, i % self.cout);
            let value = bias.map_or(0.0, |b| b[c]) + extra.map_or(0.0, |e| e[b * self.cout + c]);
            dst.fill(value);
        });
        match winograd {
            Some(variant) => variant.with_transformed_kernel(w, self.cout, cin, |u| {
                variant.convolve_batch(x, (batch, cin, height, width), u, self.cout, &mut out)
            }),
            None => {
                for (b, out_image) in out.chunks_mut(self.cout * plane).enumerate() {
                    let image = &x[b * cin * height * width..(b + 1) * cin * height * width];
                    geometry.convolve(image, w, self.cout, out_image);
                }
            }
        }
        drop((x_store, w_store, bias_guard, extra_guard));
        Tensor::from_vec(out, (batch, self.cout, out_h, out_w), &Device::Cpu)
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_plus(xs, None)
    }
}

/// The f32 data of a contiguous CPU tensor.
pub(crate) fn f32_slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("expected a contiguous f32 CPU tensor"),
    }
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    cin: usize,
    height: usize,
    width: usize,
    k: usize,
    s: usize,
    p: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    /// Accumulates the convolution of one image (`cin × height × width`) with the OIHW
    /// kernel `w` into `out` (`cout × out_h × out_w`, already holding the bias).
    fn convolve(&self, image: &[f32], w: &[f32], cout: usize, out: &mut [f32]) {
        let plane = self.out_h * self.out_w;
        let depth = self.cin * self.k * self.k;
        if self.k == 1 && self.s == 1 && self.p == 0 {
            // The input is already the (cin, plane) right-hand matrix.
            gemm_f32(
                (cout, plane, depth),
                out,
                plane,
                (w, depth, 1),
                (image, plane, 1),
                true,
                true,
            );
            return;
        }
        let rows = (BAND_BYTES / (4 * depth * self.out_w)).clamp(1, self.out_h);
        let mut col = vec![0f32; depth * rows * self.out_w];
        let mut y0 = 0;
        while y0 < self.out_h {
            let band = rows.min(self.out_h - y0);
            let n = band * self.out_w;
            let col = &mut col[..depth * n];
            col.par_chunks_mut(n)
                .enumerate()
                .for_each(|(row, dst)| self.patch_row(image, row, y0, band, dst));
            gemm_f32(
                (cout, n, depth),
                &mut out[y0 * self.out_w..],
                plane,
                (w, depth, 1),
                (col, n, 1),
                true,
                true,
            );
            y0 += band;
        }
    }

    /// Row `(ci, kh, kw)` of the patch matrix for output rows `y0..y0 + band`: the input
    /// pixel each output pixel sees through that kernel tap (0 in the padding).
    fn patch_row(&self, image: &[f32], row: usize, y0: usize, band: usize, dst: &mut [f32]) {
        let (ci, tap) = (row / (self.k * self.k), row % (self.k * self.k));
        let (kh, kw) = (tap / self.k, tap % self.k);
        let channel = &image[ci * self.height * self.width..(ci + 1) * self.height * self.width];
        for (i, out_row) in dst.chunks_mut(self.out_w).take(band).enumerate() {
            let iy = ((y0 + i) * self.s + kh) as isize - self.p as isize;
            if iy < 0 || iy >= self.height as isize {
                out_row.fill(0.0);
                continue;
            }
            let src = &channel[iy as usize * self.width..(iy as usize + 1) * self.width];
            if self.s == 1 {
                // A shifted copy: output x reads input x + kw − p.
                let shift = kw as isize - self.p as isize;
                let lo = (-shift).clamp(0, self.out_w as isize) as usize;
                let hi =
                    (self.width as isize - shift).clamp(lo as isize, self.out_w as isize) as usize;
                out_row[..lo].fill(0.0);
                out_row[hi..].fill(0.0);
                let from = (lo as isize + shift) as usize;
                out_row[lo..hi].copy_from_slice(&src[from..from + (hi - lo)]);
            } else {
                for (x, v) in out_row.iter_mut().enumerate() {
                    let ix = (x * self.s + kw) as isize - self.p as isize;
                    *v = if ix < 0 || ix >= self.width as isize {
                        0.0
                    } else {
                        src[ix as usize]
                    };
                }
            }
        }
    }
}

/// A row-major matrix view: data, row stride, column stride.
pub(crate) type View<'a> = (&'a [f32], usize, usize);

/// `dst (m × n, row stride dst_rs) ← [dst +] lhs (m × k) · rhs (k × n)`, accumulating when
/// `accumulate`; on all of candle's CPU threads when `parallel`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    (lhs, lhs_rs, lhs_cs): View,
    (rhs, rhs_rs, rhs_cs): View,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1
    };
    assert!(dst.len() >= last(m, dst_rs, n, 1));
    assert!(k == 0 || lhs.len() >= last(m, lhs_rs, k, lhs_cs));
    assert!(k == 0 || rhs.len() >= last(k, rhs_rs, n, rhs_cs));
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides reach inside the slices;
    // `dst` is borrowed mutably and does not alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn matches_candle_convolution() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        // (cin, cout, kernel, stride, padding, height, width)
        let cases = [
            (3, 5, 3, 1, 1, 9, 7),
            (4, 6, 3, 2, 1, 9, 8),
            (4, 6, 3, 2, 0, 10, 7),
            (8, 4, 1, 1, 0, 5, 6),
            (2, 3, 3, 1, 0, 4, 4),
            (64, 32, 3, 1, 1, 40, 33),
            (16, 8, 3, 1, 1, 24, 23),
            (7, 300, 3, 1, 1, 31, 64),
        ];
        for (i, &(cin, cout, k, s, p, h, w)) in cases.iter().enumerate() {
            let conv = Conv2d::new(vb.pp(i.to_string()), cin, cout, k, s, p).unwrap();
            let xs = Tensor::randn(0f32, 1.0, (2, cin, h, w), &Device::Cpu).unwrap();
            let extra = Tensor::randn(0f32, 1.0, (2, cout), &Device::Cpu).unwrap();
            let ours = conv.forward_plus(&xs, Some(&extra)).unwrap();
            let reference = conv
                .inner
                .forward(&xs)
                .unwrap()
                .broadcast_add(&extra.unsqueeze(2).unwrap().unsqueeze(3).unwrap())
                .unwrap();
            assert_eq!(ours.dims(), reference.dims(), "case {i}");
            let diff = super::super::max_abs_diff(&ours, &reference);
            assert!(diff < 1e-4, "case {i}: max abs diff {diff}");
            // Non-contiguous input.
            let t = xs
                .transpose(2, 3)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(2, 3)
                .unwrap();
            assert!(
                super::super::max_abs_diff(
                    &conv.forward(&t).unwrap(),
                    &conv.inner.forward(&xs).unwrap()
                ) < 1e-4
            );
        }
    }
}
