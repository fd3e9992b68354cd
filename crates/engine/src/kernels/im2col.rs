//! The sizes of a convolution and its patch matrix (im2col): built in bands of output rows,
//! one `(c_in, kh, kw)` row at a time as shifted copies of input rows, then multiplied by the
//! kernel in f32, or in bf16 by a kernel packed once ([`Geometry::convolve_packed`]).

use rayon::prelude::*;

use crate::kernels::bf16::patches::Patches;
use crate::kernels::bf16::{Lhs, PackedLhs, Rhs, gemm_bf16, gemm_bf16_filled};
use crate::kernels::gemm::gemm_f32;
use std::ops::Range;

/// Bytes of patch matrix built at once per image.
const BAND_BYTES: usize = 8 << 20;

/// Bytes of one band of a bf16 1×1 convolution's input packed into bf16 (a per-thread scratch
/// buffer kept between calls): the UNet's 1×1 convolutions take one band, the VAE's
/// full-resolution shortcuts several.
const POINTWISE_BAND_BYTES: usize = 8 << 20;

/// Bytes of one band of a bf16 convolution's patch matrix packed straight from the image
/// (a per-thread scratch buffer kept between calls).
const PACKED_BAND_BYTES: usize = 8 << 20;

thread_local! {
    /// The packed patch matrix of the bf16 convolutions on this thread.
    static PACKED_PATCHES: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) batch: usize,
    pub(crate) cin: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) k: usize,
    pub(crate) s: usize,
    /// Zero rows above and columns left of the input (those below and right follow from
    /// the output size).
    pub(crate) top: usize,
    pub(crate) left: usize,
    pub(crate) out_h: usize,
    pub(crate) out_w: usize,
    /// 3×3, stride 1, padding 1 on every side: Winograd applies.
    pub(crate) winograd: bool,
}

impl Geometry {
    pub(crate) fn out_dims(&self, cout: usize) -> (usize, usize, usize, usize) {
        (self.batch, cout, self.out_h, self.out_w)
    }

    /// The input's sizes: images, channels, height, width.
    pub(crate) fn dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.cin, self.height, self.width)
    }

    /// The Winograd variant this convolution runs, if any (3×3, stride 1, padding 1, on
    /// images where it pays).
    pub(crate) fn winograd_variant(&self) -> Option<crate::kernels::winograd::Variant> {
        self.winograd
            .then(|| {
                crate::kernels::winograd::Variant::for_images(self.batch, self.height, self.width)
            })
            .flatten()
    }

    /// A 1×1 convolution of stride 1 without padding: the input is its own patch matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1
            && self.s == 1
            && (self.top, self.left) == (0, 0)
            && (self.out_h, self.out_w) == (self.height, self.width)
    }

    /// Accumulates the convolution of one image (`cin × height × width`) with the OIHW
    /// kernel `w` into `out` (`cout × out_h × out_w`, already holding the bias).
    pub(crate) fn convolve(&self, image: &[f32], w: &[f32], cout: usize, out: &mut [f32]) {
        let plane = self.out_h * self.out_w;
        let depth = self.cin * self.k * self.k;
        self.for_each_band(image, |patches, n, y0| {
            gemm_f32(
                (cout, n, depth),
                &mut out[y0 * self.out_w..],
                plane,
                (w, depth, 1),
                (patches, n, 1),
                true,
                true,
            );
        });
    }

    /// Accumulates the convolution of one image with the kernel packed into bf16 (`packed`:
    /// `c_out × (c_in·k·k)`) into `out` (`c_out × out_h × out_w`, already holding the bias):
    /// `out = kernel · patches` in bf16, band by band of the patch matrix, straight into the
    /// planes. Where panels pay ([`gemm_bf16_filled`]) the patches, 1×1 ones included, are
    /// packed straight from the image as the product goes; otherwise a 1×1 convolution reads
    /// the image as its patch matrix, in bands of pixels ([`POINTWISE_BAND_BYTES`]).
    pub(crate) fn convolve_packed(&self, image: &[f32], packed: &PackedLhs, out: &mut [f32]) {
        let bands = (POINTWISE_BAND_BYTES, Some(PACKED_BAND_BYTES), true);
        self.convolve_packed_in(image, packed, out, bands);
    }

    /// [`Geometry::convolve_packed`] with 1×1 bands of about `pointwise_bytes`, and with the
    /// patch matrix packed straight from the image in bands of about `direct` bytes where that
    /// can be done (built in f32 and packed when `direct` is `None`); when `fused` too, packed
    /// panel by panel as the product goes where the product takes that
    /// ([`gemm_bf16_filled`]: the 64² 640→320 convolution at batch 2 25.9 → 16.2 ms on
    /// Sapphire Rapids).
    fn convolve_packed_in(
        &self,
        image: &[f32],
        packed: &PackedLhs,
        out: &mut [f32],
        (pointwise_bytes, direct, fused): (usize, Option<usize>, bool),
    ) {
        let cout = packed.m();
        let plane = self.out_h * self.out_w;
        let depth = self.cin * self.k * self.k;
        let patches = Patches {
            cin: self.cin,
            height: self.height,
            width: self.width,
            k: self.k,
            top: self.top,
            left: self.left,
            out_w: self.out_w,
        };
        if let (Some(_), true, 1, true) = (direct, fused, self.s, patches.supported()) {
            let fill = |b: &mut [u16], panel: (usize, usize), chunks: Range<usize>| {
                patches.pack_panel(image, b, panel, chunks)
            };
            let dims = (cout, plane, depth);
            if gemm_bf16_filled(dims, out, plane, packed, &fill, true) {
                return;
            }
        }
        // The band of `n` pixels from pixel `p0` whose patch matrix is `patches` (`depth × n`,
        // `rs` apart from one patch row to the next).
        let mut band = |patches: &[f32], rs: usize, n: usize, p0: usize| {
            let (lhs, rhs) = (Lhs::Packed(packed), Rhs::View((patches, rs, 1)));
            gemm_bf16(
                (cout, n, depth),
                &mut out[p0..],
                plane,
                lhs,
                rhs,
                true,
                true,
            );
        };
        if self.is_pointwise() {
            let pixels = (pointwise_bytes / (2 * depth)).max(64);
            for p0 in (0..plane).step_by(pixels) {
                band(&image[p0..], plane, pixels.min(plane - p0), p0);
            }
            return;
        }
        if let (Some(band_bytes), 1, true) = (direct, self.s, patches.supported()) {
            let rows = (band_bytes / (2 * depth * self.out_w)).clamp(1, self.out_h);
            let mut buffer = PACKED_PATCHES.take();
            for y0 in (0..self.out_h).step_by(rows) {
                let n = rows.min(self.out_h - y0) * self.out_w;
                let rhs = patches.pack(buffer, image, y0, rows.min(self.out_h - y0));
                let operands = (Lhs::Packed(packed), Rhs::Packed(&rhs));
                let dst = &mut out[y0 * self.out_w..];
                gemm_bf16(
                    (cout, n, depth),
                    dst,
                    plane,
                    operands.0,
                    operands.1,
                    true,
                    true,
                );
                buffer = rhs.into_buffer();
            }
            PACKED_PATCHES.set(buffer);
            return;
        }
        self.for_each_band(image, |patches, n, y0| band(patches, n, n, y0 * self.out_w));
    }

    /// Calls `f(patches, n, y0)` for each band of output rows from `y0`, `n` output pixels
    /// long, with its `(c_in·k·k) × n` patch matrix: the image itself for a pointwise
    /// convolution (one band), else built a band of at most [`BAND_BYTES`] at a time.
    fn for_each_band(&self, image: &[f32], mut f: impl FnMut(&[f32], usize, usize)) {
        if self.is_pointwise() {
            // The input is already the (cin, plane) patch matrix.
            return f(image, self.out_h * self.out_w, 0);
        }
        let depth = self.cin * self.k * self.k;
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
            f(col, n, y0);
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
            let iy = ((y0 + i) * self.s + kh) as isize - self.top as isize;
            if iy < 0 || iy >= self.height as isize {
                out_row.fill(0.0);
                continue;
            }
            let src = &channel[iy as usize * self.width..(iy as usize + 1) * self.width];
            if self.s == 1 {
                // A shifted copy: output x reads input x + kw − p.
                let shift = kw as isize - self.left as isize;
                let lo = (-shift).clamp(0, self.out_w as isize) as usize;
                let hi =
                    (self.width as isize - shift).clamp(lo as isize, self.out_w as isize) as usize;
                out_row[..lo].fill(0.0);
                out_row[hi..].fill(0.0);
                let from = (lo as isize + shift) as usize;
                out_row[lo..hi].copy_from_slice(&src[from..from + (hi - lo)]);
            } else {
                for (x, v) in out_row.iter_mut().enumerate() {
                    let ix = (x * self.s + kw) as isize - self.left as isize;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1-image, stride-1 convolution of `cin` channels of `height × width` with a `k × k`
    /// kernel, padded to keep the size.
    fn same_size(cin: usize, height: usize, width: usize, k: usize) -> Geometry {
        Geometry {
            batch: 1,
            cin,
            height,
            width,
            k,
            s: 1,
            top: k / 2,
            left: k / 2,
            out_h: height,
            out_w: width,
            winograd: false,
        }
    }

    /// `n` values in [−1, 1), varied by `seed`.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed) % 1009) as f32 / 504.5) - 1.0)
            .collect()
    }

    /// The largest |a − b|.
    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    /// A bf16 1×1 convolution cut into bands of pixels (the last one short) equals the same
    /// convolution in one band.
    #[test]
    fn pointwise_bf16_bands_cover_the_image() {
        let (cin, cout, height, width) = (24, 40, 15, 20);
        let g = same_size(cin, height, width, 1);
        let image = values(cin * height * width, 1);
        let kernel = values(cout * cin, 2);
        // The OIHW kernel is the (c_out, c_in) matrix.
        let packed = PackedLhs::new(cout, cin, (&kernel, cin, 1));
        let run = |bytes: usize| {
            let mut out = values(cout * height * width, 3);
            g.convolve_packed_in(&image, &packed, &mut out, (bytes, None, false));
            out
        };
        // 64-pixel bands (300 pixels: four and a short one), then one band.
        let (banded, whole) = (run(1), run(1 << 30));
        let diff = max_diff(&banded, &whole);
        assert!(diff <= 1e-5 * cin as f32, "{diff}");
    }

    /// A bf16 convolution whose patch matrix is packed straight from the image equals the one
    /// that builds the f32 patch matrix and packs it: bit for bit in one band and packed as
    /// the product goes, and up to the order of the f32 sums in several bands (the bands
    /// block the columns differently, and edge blocks add the bias after their products); odd
    /// tap counts, the padding on every side, 1×1; an image of 2048 pixels, whose panels pay
    /// on up to eight threads.
    #[test]
    fn direct_bf16_patches_equal_the_packed_patch_matrix() {
        for (cin, cout, height, width, k) in [
            (5, 24, 9, 16, 3),
            (3, 40, 20, 32, 3),
            (2, 16, 6, 16, 5),
            (3, 40, 32, 64, 3),
            (20, 36, 16, 48, 1),
        ] {
            let g = same_size(cin, height, width, k);
            let image = values(cin * height * width, 4);
            let depth = cin * k * k;
            let packed = PackedLhs::new(cout, depth, (&values(cout * depth, 5), depth, 1));
            let run = |direct: Option<usize>, fused: bool| {
                let mut out = values(cout * height * width, 6);
                g.convolve_packed_in(&image, &packed, &mut out, (1 << 20, direct, fused));
                out
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let built = run(None, false);
            for fused in [false, true] {
                assert_eq!(
                    bits(&run(Some(1 << 30), fused)),
                    bits(&built),
                    "{cin}×{height}×{width}, k {k}, fused {fused}"
                );
            }
            // Bands of two output rows (the last one short where odd).
            let banded = run(Some(2 * 2 * depth * width), false);
            let diff = max_diff(&banded, &built);
            assert!(
                diff <= 1e-5 * depth as f32,
                "{cin}×{height}×{width}, k {k}: {diff}"
            );
        }
    }
}
