//! Pillow's `ImageEnhance` (Sharpness, Brightness, Color, Contrast), reproduced bit for bit,
//! with the two primitives they rest on: `Image.blend` (`libImaging/Blend.c`) and the RGB→L
//! conversion (`libImaging/Convert.c`). See `docs/pillow.md`, "Enhancements".
//!
//! Every enhancement is `blend(degenerate, image, factor)` for an enhancer-specific degenerate
//! image. The functions are generic over 8-bit pixels; the first channels are colour (one for
//! grey images, three for RGB) and the alpha channel, if any, is kept as it is.

use image::{ImageBuffer, Pixel};
use rayon::prelude::*;

use super::filter::{Kernel, clip8, filter};
use crate::{Error, Result};

/// Pixels handed to one rayon task at least.
const PIXELS_PER_TASK: usize = 16 * 1024;

/// How a pixel's channels divide into colour and alpha.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// Channels per pixel.
    channels: usize,
    /// The leading colour channels; the rest (alpha) are kept unchanged.
    colour: usize,
}

impl Shape {
    /// The shape of pixel type `P`.
    fn of<P: Pixel>() -> Shape {
        let channels = usize::from(P::CHANNEL_COUNT);
        let colour = if P::HAS_ALPHA {
            channels.saturating_sub(1)
        } else {
            channels
        };
        Shape { channels, colour }
    }
}

/// Calls `$body(channels, colour)` with constant arguments for the common pixel shapes, so the
/// inlined per-pixel loops are specialised, and with run-time values otherwise.
macro_rules! with_shape {
    ($shape:expr, |$c:ident, $colour:ident| $body:expr) => {
        match ($shape.channels, $shape.colour) {
            (3, 3) => {
                let ($c, $colour) = (3, 3);
                $body
            }
            (4, 3) => {
                let ($c, $colour) = (4, 3);
                $body
            }
            (1, 1) => {
                let ($c, $colour) = (1, 1);
                $body
            }
            (2, 1) => {
                let ($c, $colour) = (2, 1);
                $body
            }
            (c, colour) => {
                let ($c, $colour) = (c, colour);
                $body
            }
        }
    };
}

/// Pillow's RGB→L conversion (`L24` in `Convert.c`): `(19595 R + 38470 G + 7471 B + 0x8000) >> 16`.
pub fn rgb_to_l(r: u8, g: u8, b: u8) -> u8 {
    let l = 19595 * u32::from(r) + 38470 * u32::from(g) + 7471 * u32::from(b) + 0x8000;
    // The weights sum to 65536, so the result is at most 255.
    (l >> 16) as u8
}

/// One byte of `Image.blend`: `f32(in1) + a · f32(in2 − in1)` in `f32`, truncated.
///
/// [`clip8`] is Pillow's clamp for factors outside `[0, 1]` (≤ 0 gives 0, ≥ 255 gives 255)
/// and a plain truncation inside, where the result is always in range.
#[inline(always)]
fn blend_byte(in1: u8, in2: u8, a: f32) -> u8 {
    clip8(f32::from(in1) + a * (i32::from(in2) - i32::from(in1)) as f32)
}

/// Pillow's `Image.blend(im1, im2, alpha)`: every channel, alpha included, interpolated (or
/// extrapolated, with clamping) from `im1` towards `im2` in `f32` and truncated.
///
/// `alpha` is rounded to `f32` first; 0 gives a copy of `im1` and 1 a copy of `im2`.
/// Fails if the images differ in size.
pub fn blend<P>(
    im1: &ImageBuffer<P, Vec<u8>>,
    im2: &ImageBuffer<P, Vec<u8>>,
    alpha: f64,
) -> Result<ImageBuffer<P, Vec<u8>>>
where
    P: Pixel<Subpixel = u8>,
{
    if im1.dimensions() != im2.dimensions() {
        return Err(Error::ImageOp(format!(
            "blend: images differ in size ({}x{} and {}x{})",
            im1.width(),
            im1.height(),
            im2.width(),
            im2.height()
        )));
    }
    let a = alpha as f32;
    if a == 1.0 {
        return Ok(im2.clone());
    }
    let mut out = im1.clone();
    if a != 0.0 {
        blend_bytes_into(&mut out, im2, a);
    }
    Ok(out)
}

/// `dst[i] = blend_byte(dst[i], src[i], a)` for every byte, in parallel.
fn blend_bytes_into(dst: &mut [u8], src: &[u8], a: f32) {
    dst.par_chunks_mut(PIXELS_PER_TASK)
        .zip(src.par_chunks(PIXELS_PER_TASK))
        .for_each(|(d, s)| blend_slice(d, s, a));
}

/// `dst[i] = blend_byte(dst[i], src[i], a)` for every byte, compiled for AVX2 when the CPU
/// has it (the same `f32` operations, wider; no FMA).
fn blend_slice(dst: &mut [u8], src: &[u8], a: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, as checked just above.
        unsafe { blend_slice_avx2(dst, src, a) };
        return;
    }
    blend_slice_baseline(dst, src, a);
}

/// [`blend_slice`] for the baseline target.
#[inline(always)]
fn blend_slice_baseline(dst: &mut [u8], src: &[u8], a: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = blend_byte(*d, s, a);
    }
}

/// [`blend_slice`] with AVX2 enabled (not FMA; Rust never fuses `a * b + c` anyway).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn blend_slice_avx2(dst: &mut [u8], src: &[u8], a: f32) {
    blend_slice_baseline(dst, src, a);
}

/// Pillow's `ImageEnhance.Sharpness(img).enhance(factor)`: a blend from `img` filtered with
/// `SMOOTH` (alpha kept) towards `img`. Above 1 it sharpens, below 1 it smooths.
pub fn sharpness<P>(img: &ImageBuffer<P, Vec<u8>>, factor: f64) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
{
    let a = factor as f32;
    if a == 1.0 {
        return img.clone();
    }
    let mut degenerate = filter(img, Kernel::Smooth);
    let shape = Shape::of::<P>();
    if shape.colour < shape.channels {
        with_shape!(shape, |c, colour| copy_alpha(
            &mut degenerate,
            img,
            c,
            colour
        ));
    }
    blend_bytes_into(&mut degenerate, img, a);
    degenerate
}

/// Pillow's `ImageEnhance.Brightness(img).enhance(factor)`: every colour value times
/// `f32(factor)`, truncated and clamped to 255; alpha kept.
pub fn brightness<P>(img: &ImageBuffer<P, Vec<u8>>, factor: f64) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
{
    blend_from_grey(img, factor, |_| 0)
}

/// Pillow's `ImageEnhance.Color(img).enhance(factor)`: a blend from the image's grey version
/// `(L, L, L)` towards it; alpha kept. Grey images are returned unchanged.
pub fn color<P>(img: &ImageBuffer<P, Vec<u8>>, factor: f64) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
{
    blend_from_grey(img, factor, pixel_l)
}

/// Pillow's `ImageEnhance.Contrast(img).enhance(factor)`: a blend from a flat image at the
/// rounded mean grey level towards the image; alpha kept.
pub fn contrast<P>(img: &ImageBuffer<P, Vec<u8>>, factor: f64) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
{
    if factor as f32 == 1.0 {
        return img.clone();
    }
    let mean = mean_l(img);
    blend_from_grey(img, factor, move |_| mean)
}

/// The grey level Pillow's `ImageStat.Stat(img.convert("L")).mean` rounds to:
/// `int(Σ v·hist[v] / N + 0.5)`, with the exact integer sum divided in `f64`.
pub fn mean_l<P>(img: &ImageBuffer<P, Vec<u8>>) -> u8
where
    P: Pixel<Subpixel = u8>,
{
    let shape = Shape::of::<P>();
    let (sum, count) = with_shape!(shape, |c, _colour| sum_l(img.as_raw(), c));
    // An empty image has no mean (Pillow raises); any value will do as nothing is blended.
    let mean = sum as f64 / count as f64;
    (mean + 0.5) as u8
}

/// The sum of the L values of all pixels, and their number, for pixels of `c` channels.
#[inline(always)]
fn sum_l(bytes: &[u8], c: usize) -> (u64, u64) {
    bytes
        .par_chunks(PIXELS_PER_TASK * c)
        .map(|chunk| {
            let sum: u64 = chunk.chunks_exact(c).map(|p| u64::from(pixel_l(p))).sum();
            (sum, (chunk.len() / c) as u64)
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// The L value of one pixel's channels: RGB→L for colour pixels, the grey value otherwise.
#[inline(always)]
fn pixel_l(p: &[u8]) -> u8 {
    match p {
        [r, g, b, ..] => rgb_to_l(*r, *g, *b),
        [l, ..] => *l,
        [] => 0,
    }
}

/// `blend(degenerate, img, a)` where the degenerate pixel is `(g, g, g, alpha)` with
/// `g = grey(pixel)`.
fn blend_from_grey<P, G>(
    img: &ImageBuffer<P, Vec<u8>>,
    factor: f64,
    grey: G,
) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
    G: Fn(&[u8]) -> u8 + Sync,
{
    let a = factor as f32;
    if a == 1.0 {
        return img.clone();
    }
    let (width, height) = img.dimensions();
    let mut out = ImageBuffer::<P, Vec<u8>>::new(width, height);
    let shape = Shape::of::<P>();
    with_shape!(shape, |c, colour| blend_grey_into(
        &mut out, img, c, colour, a, &grey
    ));
    out
}

/// Writes `blend((g, g, g, A), src, a)` into `dst`, where `g = grey(pixel)` and `A` is the
/// pixel's alpha: each chunk is filled with the degenerate pixels, then blended byte by byte
/// (alpha blends with itself, which leaves it unchanged, as in Pillow).
#[inline(always)]
fn blend_grey_into<G>(dst: &mut [u8], src: &[u8], c: usize, colour: usize, a: f32, grey: &G)
where
    G: Fn(&[u8]) -> u8 + Sync,
{
    dst.par_chunks_mut(PIXELS_PER_TASK * c)
        .zip(src.par_chunks(PIXELS_PER_TASK * c))
        .for_each(|(d, s)| {
            for (d, s) in d.chunks_exact_mut(c).zip(s.chunks_exact(c)) {
                let g = grey(s);
                for ch in 0..c {
                    d[ch] = if ch < colour { g } else { s[ch] };
                }
            }
            blend_slice(d, s, a);
        });
}

/// Copies the non-colour (alpha) channels of every pixel of `src` into `dst`.
#[inline(always)]
fn copy_alpha(dst: &mut [u8], src: &[u8], c: usize, colour: usize) {
    for (d, s) in dst.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
        d[colour..].copy_from_slice(&s[colour..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    #[test]
    fn rgb_to_l_matches_pillow_on_known_values() {
        assert_eq!(rgb_to_l(0, 0, 0), 0);
        assert_eq!(rgb_to_l(255, 255, 255), 255);
        // (19595·255 + 0x8000) >> 16 = 76; (38470·255 + 0x8000) >> 16 = 150.
        assert_eq!(rgb_to_l(255, 0, 0), 76);
        assert_eq!(rgb_to_l(0, 255, 0), 150);
        assert_eq!(rgb_to_l(0, 0, 255), 29);
    }

    #[test]
    fn blend_byte_truncates_and_clamps() {
        // 10 + 0.5·(21 − 10) = 15.5 → 15 (truncated, not rounded).
        assert_eq!(blend_byte(10, 21, 0.5), 15);
        assert_eq!(blend_byte(200, 100, 3.0), 0);
        assert_eq!(blend_byte(100, 200, 3.0), 255);
        assert_eq!(blend_byte(7, 9, 0.0), 7);
        assert_eq!(blend_byte(7, 9, 1.0), 9);
    }

    #[test]
    fn dispatched_blend_equals_baseline_on_every_byte_pair() {
        let in1: Vec<u8> = (0..=255u8)
            .flat_map(|x| std::iter::repeat_n(x, 256))
            .collect();
        let in2: Vec<u8> = (0..256).flat_map(|_| 0..=255u8).collect();
        for a in [0.1f32, 0.37, 0.99, 1.01, 1.5, 2.0, -0.5, 3.0] {
            let (mut fast, mut base) = (in1.clone(), in1.clone());
            blend_slice(&mut fast, &in2, a);
            blend_slice_baseline(&mut base, &in2, a);
            assert_eq!(fast, base, "factor {a}");
        }
    }

    #[test]
    fn blend_rejects_mismatched_sizes() {
        let a = RgbImage::new(2, 2);
        let b = RgbImage::new(3, 2);
        assert!(blend(&a, &b, 0.5).is_err());
    }

    #[test]
    fn blend_copies_at_zero_and_one() {
        let a = RgbImage::from_pixel(2, 1, Rgb([1, 2, 3]));
        let b = RgbImage::from_pixel(2, 1, Rgb([200, 100, 50]));
        assert_eq!(blend(&a, &b, 0.0).unwrap(), a);
        assert_eq!(blend(&a, &b, 1.0).unwrap(), b);
        assert_eq!(
            blend(&a, &b, 0.5).unwrap().get_pixel(0, 0),
            &Rgb([100, 51, 26])
        );
    }

    #[test]
    fn brightness_scales_colour_and_keeps_alpha() {
        let img = RgbaImage::from_pixel(3, 3, Rgba([100, 200, 3, 77]));
        let out = brightness(&img, 1.5);
        assert_eq!(out.get_pixel(1, 1), &Rgba([150, 255, 4, 77]));
    }

    #[test]
    fn color_zero_is_grey() {
        let img = RgbImage::from_pixel(2, 2, Rgb([255, 0, 0]));
        assert_eq!(color(&img, 0.0).get_pixel(0, 0), &Rgb([76, 76, 76]));
    }

    #[test]
    fn contrast_uses_rounded_mean() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, Rgb([0, 0, 0]));
        img.put_pixel(1, 0, Rgb([255, 255, 255]));
        // Mean 127.5 rounds to 128.
        assert_eq!(mean_l(&img), 128);
        assert_eq!(contrast(&img, 0.0).get_pixel(0, 0), &Rgb([128, 128, 128]));
    }

    #[test]
    fn sharpness_of_flat_image_is_identity() {
        let img = RgbImage::from_pixel(5, 4, Rgb([9, 99, 199]));
        assert_eq!(sharpness(&img, 1.7), img);
    }
}
