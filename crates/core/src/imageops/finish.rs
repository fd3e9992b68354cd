//! The finishing chain applied to the last loop's result (`docs/algorithm.md`, "After
//! the last loop"): Sharpness → Brightness → Color → Contrast (Pillow `ImageEnhance`), then
//! DETAIL × n → SMOOTH × n → BLUR × n → CONTOUR (Pillow `ImageFilter`).

use image::{DynamicImage, ImageBuffer, Pixel};

use super::enhance::{brightness, color, contrast, sharpness};
use super::filter::{Kernel, filter};

/// The finishing settings, defined with every other setting in the settings table.
pub use crate::settings::Finishing;

impl Finishing {
    /// Whether [`apply`] returns the image unchanged with these settings.
    pub fn is_identity(&self) -> bool {
        self.enhancements::<image::Rgb<u8>>()
            .iter()
            .all(|(_, factor)| is_one(*factor))
            && self.filters().iter().all(|(_, passes)| *passes == 0)
    }

    /// The enhancements with their factors, in the order they are applied.
    fn enhancements<P: Pixel<Subpixel = u8>>(&self) -> [(Enhancement<P>, f64); 4] {
        // Every setting is named here or in `filters`, so that a new finishing setting in the
        // settings table does not compile until it is applied.
        let Finishing {
            sharpness: sharpness_factor,
            brightness: brightness_factor,
            color: color_factor,
            contrast: contrast_factor,
            detail: _,
            smooth: _,
            blur: _,
            contour: _,
        } = *self;
        [
            (sharpness::<P>, sharpness_factor),
            (brightness::<P>, brightness_factor),
            (color::<P>, color_factor),
            (contrast::<P>, contrast_factor),
        ]
    }

    /// The filters with their number of passes, in the order they are applied.
    fn filters(&self) -> [(Kernel, usize); 4] {
        // As in `enhancements`: every setting is named in one of the two.
        let Finishing {
            detail,
            smooth,
            blur,
            contour,
            sharpness: _,
            brightness: _,
            color: _,
            contrast: _,
        } = *self;
        [
            (Kernel::Detail, detail.passes()),
            (Kernel::Smooth, smooth.passes()),
            (Kernel::Blur, blur.passes()),
            (Kernel::Contour, usize::from(contour)),
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
    use crate::settings::FilterLevel;
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
