//! A1111's img2img colour correction (`modules/processing.py`):
//!
//! - `setup_color_correction(reference)`: the reference in OpenCV 8-bit Lab
//!   ([`ColorReference::new`]);
//! - `apply_color_correction(reference, image)`: the image to Lab, each Lab channel
//!   histogram-matched to the reference's (scikit-image `match_histograms`), back to RGB, and
//!   the result used as the background of a blendmodes LUMINOSITY blend under the original
//!   image ([`ColorReference::apply`]).
//!
//! Every step is bit-exact with A1111 v1.10's stack (OpenCV 4.x integer Lab, scikit-image
//! 0.21, blendmodes 2022, which truncates).

mod histogram;
mod lab;
mod luminosity;

use image::{RgbImage, RgbaImage};
use rayon::prelude::*;

pub use histogram::{Histogram, match_lut};
pub use lab::checksums as lab_table_checksums;
pub use luminosity::blend_pixel as luminosity_blend_pixel;

use lab::Lab;

/// Pixels handed to a rayon task at a time.
const CHUNK_PIXELS: usize = 16 * 1024;

/// The colour reference of A1111's colour correction: the reference image's Lab
/// histograms, all that histogram matching reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorReference {
    /// Histograms of the L, a and b channels of the reference in OpenCV 8-bit Lab.
    histograms: [Histogram; 3],
}

impl ColorReference {
    /// A1111's `setup_color_correction(reference)`: converts the reference to Lab once.
    pub fn new(reference: &RgbImage) -> Self {
        ColorReference {
            histograms: lab_histograms(reference.as_raw(), 3),
        }
    }

    /// The same for an RGBA reference: its alpha is ignored, as `cv2.cvtColor` does.
    pub fn from_rgba(reference: &RgbaImage) -> Self {
        ColorReference {
            histograms: lab_histograms(reference.as_raw(), 4),
        }
    }

    /// The reference's Lab histograms (L, a, b).
    pub fn histograms(&self) -> &[Histogram; 3] {
        &self.histograms
    }

    /// A1111's `apply_color_correction(reference, image)`: `image`'s colours matched to the
    /// reference in Lab, under `image`'s own luminosity.
    ///
    /// An empty reference leaves the colours unmatched (A1111 would raise).
    pub fn apply(&self, image: &RgbImage) -> RgbImage {
        let lab = Lab::get();
        let samples = image.as_raw();
        let image_lab = to_lab(samples);
        let own = histograms(&image_lab, 3);
        let luts: [[u8; 256]; 3] = std::array::from_fn(|c| match_lut(&own[c], &self.histograms[c]));
        let mut out = vec![0u8; samples.len()];
        out.par_chunks_mut(CHUNK_PIXELS * 3)
            .zip(samples.par_chunks(CHUNK_PIXELS * 3))
            .zip(image_lab.par_chunks(CHUNK_PIXELS * 3))
            .for_each(|((dst, rgb), lab_px)| {
                for ((d, s), l) in dst
                    .chunks_exact_mut(3)
                    .zip(rgb.chunks_exact(3))
                    .zip(lab_px.chunks_exact(3))
                {
                    let matched = [
                        luts[0][usize::from(l[0])],
                        luts[1][usize::from(l[1])],
                        luts[2][usize::from(l[2])],
                    ];
                    let colour = lab.lab_to_rgb(matched);
                    d.copy_from_slice(&luminosity::blend_pixel(colour, [s[0], s[1], s[2]]));
                }
            });
        RgbImage::from_raw(image.width(), image.height(), out).unwrap_or_else(|| image.clone())
    }
}

/// Colour-corrects `image` to `reference` (A1111's setup + apply in one call).
pub fn correct_colors(image: &RgbImage, reference: &RgbImage) -> RgbImage {
    ColorReference::new(reference).apply(image)
}

/// `cv2.cvtColor(image, COLOR_RGB2LAB)` of an 8-bit RGB image.
pub fn rgb_to_lab(image: &RgbImage) -> RgbImage {
    let out = to_lab(image.as_raw());
    RgbImage::from_raw(image.width(), image.height(), out).unwrap_or_else(|| image.clone())
}

/// `cv2.cvtColor(image, COLOR_LAB2RGB)` of an 8-bit Lab image (channels L, a, b).
pub fn lab_to_rgb(image: &RgbImage) -> RgbImage {
    let lab = Lab::get();
    let mut out = image.as_raw().clone();
    out.par_chunks_mut(CHUNK_PIXELS * 3).for_each(|chunk| {
        for px in chunk.chunks_exact_mut(3) {
            px.copy_from_slice(&lab.lab_to_rgb([px[0], px[1], px[2]]));
        }
    });
    RgbImage::from_raw(image.width(), image.height(), out).unwrap_or_else(|| image.clone())
}

/// skimage `match_histograms(image, reference, channel_axis=2)` for 8-bit 3-channel images.
pub fn match_histograms(image: &RgbImage, reference: &RgbImage) -> RgbImage {
    let own = histograms(image.as_raw(), 3);
    let target = histograms(reference.as_raw(), 3);
    let luts: [[u8; 256]; 3] = std::array::from_fn(|c| match_lut(&own[c], &target[c]));
    let mut out = image.as_raw().clone();
    out.par_chunks_mut(CHUNK_PIXELS * 3).for_each(|chunk| {
        for px in chunk.chunks_exact_mut(3) {
            for (v, lut) in px.iter_mut().zip(&luts) {
                *v = lut[usize::from(*v)];
            }
        }
    });
    RgbImage::from_raw(image.width(), image.height(), out).unwrap_or_else(|| image.clone())
}

/// blendmodes 2022 `blendLayers(background, foreground, LUMINOSITY)` of two opaque RGB images
/// of the same size; `None` when the sizes differ.
pub fn luminosity_blend(background: &RgbImage, foreground: &RgbImage) -> Option<RgbImage> {
    if background.dimensions() != foreground.dimensions() {
        return None;
    }
    let mut out = background.as_raw().clone();
    out.par_chunks_mut(CHUNK_PIXELS * 3)
        .zip(foreground.as_raw().par_chunks(CHUNK_PIXELS * 3))
        .for_each(|(dst, fg)| {
            for (d, f) in dst.chunks_exact_mut(3).zip(fg.chunks_exact(3)) {
                let blended = luminosity::blend_pixel([d[0], d[1], d[2]], [f[0], f[1], f[2]]);
                d.copy_from_slice(&blended);
            }
        });
    RgbImage::from_raw(background.width(), background.height(), out)
}

/// The Lab conversion of interleaved 8-bit RGB samples.
fn to_lab(samples: &[u8]) -> Vec<u8> {
    let lab = Lab::get();
    let mut out = vec![0u8; samples.len() / 3 * 3];
    out.par_chunks_mut(CHUNK_PIXELS * 3)
        .zip(samples.par_chunks(CHUNK_PIXELS * 3))
        .for_each(|(dst, src)| {
            for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
                d.copy_from_slice(&lab.rgb_to_lab([s[0], s[1], s[2]]));
            }
        });
    out
}

/// The Lab histograms of interleaved RGB(A) samples with `channels` samples per pixel.
fn lab_histograms(samples: &[u8], channels: usize) -> [Histogram; 3] {
    let lab = Lab::get();
    samples
        .par_chunks(CHUNK_PIXELS * channels)
        .map(|chunk| {
            let mut h = [[0u64; 256]; 3];
            for px in chunk.chunks_exact(channels) {
                let [l, a, b] = lab.rgb_to_lab([px[0], px[1], px[2]]);
                h[0][usize::from(l)] += 1;
                h[1][usize::from(a)] += 1;
                h[2][usize::from(b)] += 1;
            }
            h
        })
        .reduce(|| [[0u64; 256]; 3], add_histograms)
}

/// Per-channel histograms of interleaved samples.
fn histograms(samples: &[u8], channels: usize) -> [Histogram; 3] {
    samples
        .par_chunks(CHUNK_PIXELS * channels)
        .map(|chunk| {
            let mut h = [[0u64; 256]; 3];
            for px in chunk.chunks_exact(channels) {
                for (hist, &v) in h.iter_mut().zip(px) {
                    hist[usize::from(v)] += 1;
                }
            }
            h
        })
        .reduce(|| [[0u64; 256]; 3], add_histograms)
}

/// The bin-wise sum of two sets of histograms.
fn add_histograms(mut a: [Histogram; 3], b: [Histogram; 3]) -> [Histogram; 3] {
    for (ha, hb) in a.iter_mut().zip(&b) {
        for (x, y) in ha.iter_mut().zip(hb) {
            *x += y;
        }
    }
    a
}
