//! Pillow's built-in `ImageFilter` convolution kernels, reproduced bit for bit.
//!
//! The arithmetic follows Pillow 9.5.0's `libImaging/Filter.c` (see
//! `docs/pillow.md`, "Convolution filters"): coefficients `f32(k) / f32(scale)`, a start value of
//! `offset + 0.5`, each kernel row summed left to right in `f32` and the row sums added in
//! order, then a clamp to `0..=255` and truncation. The kernel is flipped vertically (kernel
//! row `i` reads image row `y + r − i`) but not horizontally. The outer `r = size / 2` rows and
//! columns are copied unchanged, and an image smaller than the kernel is returned unchanged.
//! Every channel, alpha included, is filtered on its own.

use image::{ImageBuffer, Pixel};
use rayon::prelude::*;

/// One of Pillow's built-in convolution filters (`PIL.ImageFilter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `ImageFilter.BLUR`: a 5×5 ring average.
    Blur,
    /// `ImageFilter.CONTOUR`: a 3×3 edge detector on a white background.
    Contour,
    /// `ImageFilter.DETAIL`: a mild 3×3 sharpening.
    Detail,
    /// `ImageFilter.EDGE_ENHANCE`: a 3×3 edge enhancement.
    EdgeEnhance,
    /// `ImageFilter.SHARPEN`: a 3×3 sharpening.
    Sharpen,
    /// `ImageFilter.SMOOTH`: a 3×3 smoothing.
    Smooth,
    /// `ImageFilter.SMOOTH_MORE`: a 5×5 smoothing.
    SmoothMore,
}

/// A convolution kernel as Pillow's `ImageFilter` defines it: integer coefficients, a scale
/// they are divided by, and an offset added to every result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// The side of the square kernel: 3 or 5.
    pub size: usize,
    /// The `size × size` coefficients, row-major as written in Pillow.
    pub coefficients: &'static [i32],
    /// The divisor of every coefficient.
    pub scale: i32,
    /// The value added to every result.
    pub offset: i32,
}

const BLUR: KernelSpec = KernelSpec {
    size: 5,
    #[rustfmt::skip]
    coefficients: &[
        1, 1, 1, 1, 1,
        1, 0, 0, 0, 1,
        1, 0, 0, 0, 1,
        1, 0, 0, 0, 1,
        1, 1, 1, 1, 1,
    ],
    scale: 16,
    offset: 0,
};

const CONTOUR: KernelSpec = KernelSpec {
    size: 3,
    #[rustfmt::skip]
    coefficients: &[
        -1, -1, -1,
        -1,  8, -1,
        -1, -1, -1,
    ],
    scale: 1,
    offset: 255,
};

const DETAIL: KernelSpec = KernelSpec {
    size: 3,
    #[rustfmt::skip]
    coefficients: &[
         0, -1,  0,
        -1, 10, -1,
         0, -1,  0,
    ],
    scale: 6,
    offset: 0,
};

const EDGE_ENHANCE: KernelSpec = KernelSpec {
    size: 3,
    #[rustfmt::skip]
    coefficients: &[
        -1, -1, -1,
        -1, 10, -1,
        -1, -1, -1,
    ],
    scale: 2,
    offset: 0,
};

const SHARPEN: KernelSpec = KernelSpec {
    size: 3,
    #[rustfmt::skip]
    coefficients: &[
        -2, -2, -2,
        -2, 32, -2,
        -2, -2, -2,
    ],
    scale: 16,
    offset: 0,
};

const SMOOTH: KernelSpec = KernelSpec {
    size: 3,
    #[rustfmt::skip]
    coefficients: &[
        1, 1, 1,
        1, 5, 1,
        1, 1, 1,
    ],
    scale: 13,
    offset: 0,
};

const SMOOTH_MORE: KernelSpec = KernelSpec {
    size: 5,
    #[rustfmt::skip]
    coefficients: &[
        1, 1,  1, 1, 1,
        1, 5,  5, 5, 1,
        1, 5, 44, 5, 1,
        1, 5,  5, 5, 1,
        1, 1,  1, 1, 1,
    ],
    scale: 100,
    offset: 0,
};

impl Kernel {
    /// Every kernel, in alphabetical order.
    pub const ALL: [Kernel; 7] = [
        Kernel::Blur,
        Kernel::Contour,
        Kernel::Detail,
        Kernel::EdgeEnhance,
        Kernel::Sharpen,
        Kernel::Smooth,
        Kernel::SmoothMore,
    ];

    /// The kernel's coefficients, scale and offset, as in Pillow's `ImageFilter.py`.
    pub const fn spec(self) -> &'static KernelSpec {
        match self {
            Kernel::Blur => &BLUR,
            Kernel::Contour => &CONTOUR,
            Kernel::Detail => &DETAIL,
            Kernel::EdgeEnhance => &EDGE_ENHANCE,
            Kernel::Sharpen => &SHARPEN,
            Kernel::Smooth => &SMOOTH,
            Kernel::SmoothMore => &SMOOTH_MORE,
        }
    }

    /// Pillow's name for the kernel, e.g. `"EDGE_ENHANCE"`.
    pub const fn pillow_name(self) -> &'static str {
        match self {
            Kernel::Blur => "BLUR",
            Kernel::Contour => "CONTOUR",
            Kernel::Detail => "DETAIL",
            Kernel::EdgeEnhance => "EDGE_ENHANCE",
            Kernel::Sharpen => "SHARPEN",
            Kernel::Smooth => "SMOOTH",
            Kernel::SmoothMore => "SMOOTH_MORE",
        }
    }

    /// The kernel named as in Pillow (case-insensitive), e.g. `"detail"` or `"SMOOTH_MORE"`.
    pub fn from_pillow_name(name: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.pillow_name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Pillow's `clip8`: 0 at or below 0, 255 at or above 255, otherwise truncated (NaN gives 0).
///
/// Written as two selects and an unchecked truncation so that LLVM vectorises it: Rust's
/// saturating float-to-int casts (`as u8`, `as i32`) are scalarised.
#[inline(always)]
pub(crate) fn clip8(v: f32) -> u8 {
    // `v > 0.0` is false for NaN, so NaN becomes 0 here.
    let v = if v > 0.0 { v } else { 0.0 };
    let v = if v < 255.0 { v } else { 255.0 };
    // SAFETY: `v` is finite and within 0..=255, so its truncation is representable in i32.
    let i: i32 = unsafe { v.to_int_unchecked() };
    i as u8
}

/// The `f32` weights and start value of a kernel, in the form the inner loop uses.
struct Weights<const S: usize> {
    /// `k[i][j] = f32(coefficient) / f32(scale)`.
    k: [[f32; S]; S],
    /// `f32(offset + 0.5)`.
    start: f32,
}

impl<const S: usize> Weights<S> {
    /// Precomputes the weights of `spec`, whose size must be `S`.
    fn new(spec: &KernelSpec) -> Self {
        debug_assert_eq!(spec.size, S);
        let scale = spec.scale as f32;
        let k = std::array::from_fn(|i| {
            std::array::from_fn(|j| spec.coefficients[i * S + j] as f32 / scale)
        });
        Weights {
            k,
            start: (f64::from(spec.offset) + 0.5) as f32,
        }
    }
}

/// Applies `kernel` to every channel of `img` exactly as Pillow's `Image.filter` does.
///
/// The border (1 pixel for 3×3 kernels, 2 for 5×5) is copied unchanged, and an image narrower
/// or lower than the kernel is returned unchanged.
pub fn filter<P>(img: &ImageBuffer<P, Vec<u8>>, kernel: Kernel) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
{
    let (width, height) = img.dimensions();
    let spec = kernel.spec();
    let size = spec.size as u32;
    if width < size || height < size {
        return img.clone();
    }
    let mut out = ImageBuffer::<P, Vec<u8>>::new(width, height);
    let layout = Layout {
        row_len: width as usize * usize::from(P::CHANNEL_COUNT),
        height: height as usize,
        step: usize::from(P::CHANNEL_COUNT),
    };
    match spec.size {
        5 => convolve::<5>(img.as_raw(), &mut out, layout, &Weights::new(spec)),
        _ => convolve::<3>(img.as_raw(), &mut out, layout, &Weights::new(spec)),
    }
    out
}

/// The shape of an interleaved 8-bit image buffer.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Bytes per row.
    row_len: usize,
    /// Number of rows.
    height: usize,
    /// Bytes per pixel: the distance between horizontal neighbours of one channel.
    step: usize,
}

/// Rows handed to one rayon task at least.
const ROWS_PER_TASK: usize = 8;

/// Filters the whole buffer `src` into `dst` (same layout) with an `S × S` kernel.
fn convolve<const S: usize>(src: &[u8], dst: &mut [u8], layout: Layout, w: &Weights<S>) {
    let r = S / 2;
    let Layout {
        row_len, height, ..
    } = layout;
    dst.par_chunks_mut(row_len)
        .enumerate()
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(y, out)| {
            let row = |yy: usize| &src[yy * row_len..(yy + 1) * row_len];
            if y < r || y + r >= height {
                out.copy_from_slice(row(y));
                return;
            }
            // Kernel row i multiplies image row y + r − i.
            let rows: [&[u8]; S] = std::array::from_fn(|i| row(y + r - i));
            filter_row(&rows, out, row(y), layout.step, w);
        });
}

/// Writes one output row: the border columns copied from `centre`, the rest convolved.
fn filter_row<const S: usize>(
    rows: &[&[u8]; S],
    out: &mut [u8],
    centre: &[u8],
    step: usize,
    w: &Weights<S>,
) {
    let edge = (S / 2) * step;
    let len = out.len();
    out[..edge].copy_from_slice(&centre[..edge]);
    out[len - edge..].copy_from_slice(&centre[len - edge..]);
    interior_fastest(rows, &mut out[edge..len - edge], step, w);
}

/// [`interior`] compiled for AVX2 when the CPU has it (the same `f32` operations, 8 lanes
/// wide instead of 4; no FMA), else for the baseline target.
fn interior_fastest<const S: usize>(
    rows: &[&[u8]; S],
    out: &mut [u8],
    step: usize,
    w: &Weights<S>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, as checked just above.
        unsafe { interior_avx2(rows, out, step, w) };
        return;
    }
    interior(rows, out, step, w);
}

/// [`interior`] with AVX2 enabled. Only `avx2` is enabled, not `fma`, and Rust never
/// contracts `a * b + c` into a fused multiply-add, so the results are bit-identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn interior_avx2<const S: usize>(rows: &[&[u8]; S], out: &mut [u8], step: usize, w: &Weights<S>) {
    interior(rows, out, step, w);
}

/// Convolves the interior bytes of one row. `out[b]` is the byte `b + r·step` of the row, and
/// the tap `(i, j)` of it is byte `b + j·step` of `rows[i]`.
// Indexed loops over the constant `S`: the iterator form (zip/skip) stops LLVM from unrolling
// the taps and vectorising across `b`, and runs 5 times slower.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn interior<const S: usize>(rows: &[&[u8]; S], out: &mut [u8], step: usize, w: &Weights<S>) {
    let n = out.len();
    let taps: [[&[u8]; S]; S] =
        std::array::from_fn(|i| std::array::from_fn(|j| &rows[i][j * step..j * step + n]));
    for (b, o) in out.iter_mut().enumerate() {
        let mut ss = w.start;
        for i in 0..S {
            let mut t = f32::from(taps[i][0][b]) * w.k[i][0];
            for j in 1..S {
                t += f32::from(taps[i][j][b]) * w.k[i][j];
            }
            ss += t;
        }
        *o = clip8(ss);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// A 3×3 image of (50, 50, 50) with `centre` in the middle.
    fn spot(centre: [u8; 3]) -> RgbImage {
        let mut img = RgbImage::from_pixel(3, 3, Rgb([50, 50, 50]));
        img.put_pixel(1, 1, Rgb(centre));
        img
    }

    #[test]
    fn three_by_three_kernels_match_hand_computed_values() {
        let img = spot([100, 0, 255]);
        let centre = |k| *filter(&img, k).get_pixel(1, 1);
        // DETAIL: (10·100 − 4·50)/6 + 0.5 = 133.8; G is negative, B above 255.
        assert_eq!(centre(Kernel::Detail), Rgb([133, 0, 255]));
        // SHARPEN: (32·100 − 16·50)/16 + 0.5 = 150.5.
        assert_eq!(centre(Kernel::Sharpen), Rgb([150, 0, 255]));
        // CONTOUR: 255.5 + 8·p − 400.
        assert_eq!(centre(Kernel::Contour), Rgb([255, 0, 255]));
        // SMOOTH: (400 + 5·p)/13 + 0.5, truncated.
        assert_eq!(centre(Kernel::Smooth), Rgb([69, 31, 129]));
        // The border is copied.
        assert_eq!(
            filter(&img, Kernel::Detail).get_pixel(0, 1),
            &Rgb([50, 50, 50])
        );
    }

    #[test]
    fn five_by_five_kernels_match_hand_computed_values() {
        let img = GrayImage::from_fn(5, 5, |x, y| Luma([(10 * (5 * y + x)) as u8]));
        // BLUR: the ring of 16 pixels sums to 1920; 1920/16 + 0.5 = 120.5.
        assert_eq!(filter(&img, Kernel::Blur).get_pixel(2, 2), &Luma([120]));
        assert_eq!(
            filter(&img, Kernel::SmoothMore).get_pixel(2, 2),
            &Luma([120])
        );
        let out = filter(&img, Kernel::Blur);
        for (x, y, p) in out.enumerate_pixels() {
            if (x, y) != (2, 2) {
                assert_eq!(p, img.get_pixel(x, y), "border pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn images_smaller_than_the_kernel_are_unchanged() {
        let img = RgbImage::from_fn(4, 4, |x, y| Rgb([x as u8 * 60, y as u8 * 60, 7]));
        assert_eq!(filter(&img, Kernel::Blur), img);
        assert_eq!(filter(&img, Kernel::SmoothMore), img);
        let thin = RgbImage::from_pixel(2, 9, Rgb([1, 2, 3]));
        assert_eq!(filter(&thin, Kernel::Detail), thin);
        let empty = RgbImage::new(0, 0);
        assert_eq!(filter(&empty, Kernel::Contour), empty);
    }

    #[test]
    fn clip8_is_pillows_clamp_and_truncation() {
        let cases = [
            (f32::NAN, 0),
            (f32::NEG_INFINITY, 0),
            (-1e9, 0),
            (-0.5, 0),
            (0.0, 0),
            (0.999, 0),
            (1.0, 1),
            (254.99, 254),
            (255.0, 255),
            (255.7, 255),
            (1e9, 255),
            (f32::INFINITY, 255),
        ];
        for (v, want) in cases {
            assert_eq!(clip8(v), want, "clip8({v})");
        }
    }

    #[test]
    fn every_kernel_is_found_by_its_pillow_name() {
        for k in Kernel::ALL {
            assert_eq!(Kernel::from_pillow_name(k.pillow_name()), Some(k));
            let spec = k.spec();
            assert_eq!(spec.coefficients.len(), spec.size * spec.size);
        }
        assert_eq!(
            Kernel::from_pillow_name("smooth_more"),
            Some(Kernel::SmoothMore)
        );
        assert_eq!(Kernel::from_pillow_name("EMBOSS"), None);
    }

    #[test]
    fn baseline_and_dispatched_inner_loops_agree() {
        let row = |seed: u32| -> Vec<u8> {
            (0..301u32)
                .map(|i| match (i * 7 + seed * 13) % 11 {
                    0 => 0,
                    1 => 255,
                    _ => (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8,
                })
                .collect()
        };
        let rows: Vec<Vec<u8>> = (0..5).map(row).collect();
        for kernel in Kernel::ALL {
            let spec = kernel.spec();
            let n = 301 - 2 * 4;
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            if spec.size == 5 {
                let r: [&[u8]; 5] = std::array::from_fn(|i| rows[i].as_slice());
                interior(&r, &mut a, 2, &Weights::new(spec));
                interior_fastest(&r, &mut b, 2, &Weights::new(spec));
            } else {
                let r: [&[u8]; 3] = std::array::from_fn(|i| rows[i].as_slice());
                interior(&r, &mut a, 4, &Weights::new(spec));
                interior_fastest(&r, &mut b, 4, &Weights::new(spec));
            }
            assert_eq!(a, b, "{kernel:?}");
        }
    }
}
