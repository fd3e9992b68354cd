//! The finishing chain applied to the last loop's result (`loopback-algorithm.md`, "After
//! the last loop"): Sharpness → Brightness → Color → Contrast (Pillow `ImageEnhance`), then
//! DETAIL × n → SMOOTH × n → BLUR × n → CONTOUR (Pillow `ImageFilter`).

use image::{DynamicImage, ImageBuffer, Pixel};

use super::enhance::{brightness, color, contrast, sharpness};
use super::filter::{Kernel, filter};
use crate::settings::FilterLevel;

/// The finishing settings: four enhancement factors (1.0 leaves the image as it is) and the
/// number of passes of each filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finishing {
    /// `ImageEnhance.Sharpness` factor.
    pub sharpness: f64,
    /// `ImageEnhance.Brightness` factor.
    pub brightness: f64,
    /// `ImageEnhance.Color` factor.
    pub color: f64,
    /// `ImageEnhance.Contrast` factor.
    pub contrast: f64,
    /// Passes of `ImageFilter.DETAIL`.
    pub detail: FilterLevel,
    /// Passes of `ImageFilter.SMOOTH`.
    pub smooth: FilterLevel,
    /// Passes of `ImageFilter.BLUR`.
    pub blur: FilterLevel,
    /// Whether `ImageFilter.CONTOUR` is applied last.
    pub contour: bool,
}

impl Default for Finishing {
    /// Factors of 1.0, no filter passes, no contour: the identity.
    fn default() -> Self {
        Finishing {
            sharpness: 1.0,
            brightness: 1.0,
            color: 1.0,
            contrast: 1.0,
            detail: FilterLevel::None,
            smooth: FilterLevel::None,
            blur: FilterLevel::None,
            contour: false,
        }
    }
}

impl Finishing {
    /// Whether [`apply`] returns the image unchanged with these settings.
    pub fn is_identity(&self) -> bool {
        [self.sharpness, self.brightness, self.color, self.contrast]
            .into_iter()
            .all(is_one)
            && self.filters().iter().all(|(_, passes)| *passes == 0)
    }

    /// The enhancements with their factors, in the order they are applied.
    fn enhancements<P: Pixel<Subpixel = u8>>(&self) -> [(Enhancement<P>, f64); 4] {
        [
            (sharpness::<P>, self.sharpness),
            (brightness::<P>, self.brightness),
            (color::<P>, self.color),
            (contrast::<P>, self.contrast),
        ]
    }

    /// The filters with their number of passes, in the order they are applied.
    fn filters(&self) -> [(Kernel, usize); 4] {
        [
            (Kernel::Detail, self.detail.passes()),
            (Kernel::Smooth, self.smooth.passes()),
            (Kernel::Blur, self.blur.passes()),
            (Kernel::Contour, usize::from(self.contour)),
        ]
    }
}

/// An `ImageEnhance` function on one image type.
type Enhancement<P> = fn(&ImageBuffer<P, Vec<u8>>, f64) -> ImageBuffer<P, Vec<u8>>;

/// Whether `factor` blends to an exact copy of the image (Pillow's `Image.blend` copies when
/// `f32(factor) == 1`).
fn is_one(factor: f64) -> bool {
    factor as f32 == 1.0
}

/// Applies the finishing chain to `img` in Loopback Scaler's order. Factors of 1.0 are
/// skipped, as Pillow would return a copy.
pub fn apply<P>(img: &ImageBuffer<P, Vec<u8>>, f: &Finishing) -> ImageBuffer<P, Vec<u8>>
where
    P: Pixel<Subpixel = u8>,
{
    let mut out = img.clone();
    for (enhance, factor) in f.enhancements::<P>() {
        if !is_one(factor) {
            out = enhance(&out, factor);
        }
    }
    for (kernel, passes) in f.filters() {
        for _ in 0..passes {
            out = filter(&out, kernel);
        }
    }
    out
}

/// Applies the finishing chain to any image: on RGBA8 if it has an alpha channel, else on
/// RGB8 (other colour types are converted to 8 bits first). The result is RGBA8 or RGB8.
pub fn apply_dynamic(img: &DynamicImage, f: &Finishing) -> DynamicImage {
    if img.color().has_alpha() {
        let rgba = match img {
            DynamicImage::ImageRgba8(buf) => apply(buf, f),
            other => apply(&other.to_rgba8(), f),
        };
        DynamicImage::ImageRgba8(rgba)
    } else {
        let rgb = match img {
            DynamicImage::ImageRgb8(buf) => apply(buf, f),
            other => apply(&other.to_rgb8(), f),
        };
        DynamicImage::ImageRgb8(rgb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    #[test]
    fn default_is_identity() {
        let f = Finishing::default();
        assert!(f.is_identity());
        let img = RgbImage::from_fn(7, 5, |x, y| Rgb([x as u8 * 30, y as u8 * 50, 9]));
        assert_eq!(apply(&img, &f), img);
        assert!(!Finishing { contour: true, ..f }.is_identity());
        assert!(!Finishing { color: 1.01, ..f }.is_identity());
        assert!(
            !Finishing {
                blur: FilterLevel::Low,
                ..f
            }
            .is_identity()
        );
    }

    #[test]
    fn contour_of_flat_image_is_white_inside() {
        let img = RgbImage::from_pixel(4, 4, Rgb([10, 20, 30]));
        let f = Finishing {
            contour: true,
            ..Finishing::default()
        };
        let out = apply(&img, &f);
        // Interior: 255.5 + 0 → 255; the border is copied.
        assert_eq!(out.get_pixel(1, 1), &Rgb([255, 255, 255]));
        assert_eq!(out.get_pixel(0, 0), &Rgb([10, 20, 30]));
    }

    #[test]
    fn order_is_enhance_then_filter() {
        // Brightness 0 makes the image black; contour then turns the interior white.
        let img = RgbImage::from_pixel(3, 3, Rgb([100, 100, 100]));
        let f = Finishing {
            brightness: 0.0,
            contour: true,
            ..Finishing::default()
        };
        let out = apply(&img, &f);
        assert_eq!(out.get_pixel(1, 1), &Rgb([255, 255, 255]));
        assert_eq!(out.get_pixel(0, 1), &Rgb([0, 0, 0]));
    }

    #[test]
    fn dynamic_keeps_alpha_and_converts_others() {
        let f = Finishing {
            brightness: 0.5,
            ..Finishing::default()
        };
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_pixel(2, 2, Rgba([200, 100, 50, 9])));
        let out = apply_dynamic(&rgba, &f);
        assert_eq!(
            out.as_rgba8().map(|b| *b.get_pixel(0, 0)),
            Some(Rgba([100, 50, 25, 9]))
        );
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_pixel(2, 2, image::Luma([80])));
        let out = apply_dynamic(&grey, &f);
        assert_eq!(
            out.as_rgb8().map(|b| *b.get_pixel(1, 1)),
            Some(Rgb([40, 40, 40]))
        );
    }
}
