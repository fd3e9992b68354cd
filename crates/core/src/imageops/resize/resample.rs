//! Pillow 9.5's `Image.resize` with a filter and a box: the two passes over the rows they
//! need, plain copies and crops where Pillow makes them, and the alpha premultiply round trip.

use std::borrow::Cow;

use image::{ImageBuffer, Pixel};

use super::kernel::{Coefficients, Filter};
use super::pass::{self, Plane};
use crate::error::{Error, Result};

/// Pillow 9.5 `im.resize((width, height), Image.LANCZOS)`.
///
/// The same size gives a copy. Images with an alpha channel (`LumaA`, `Rgba`) are
/// premultiplied around the resize, as Pillow does for `LA` and `RGBA`.
///
/// # Errors
/// [`Error::ImageOp`] when `width` or `height` is 0, or the image is empty.
pub fn lanczos<P>(
    img: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
) -> Result<ImageBuffer<P, Vec<u8>>>
where
    P: Pixel<Subpixel = u8>,
{
    let full = [0.0, 0.0, img.width() as f32, img.height() as f32];
    resize_box(img, width, height, full, Filter::Lanczos)
}

/// Pillow 9.5 `im.resize((width, height), filter, box)`: resamples the region
/// `box = [x0, y0, x1, y1]` (f32 pixel coordinates, possibly fractional or of zero width or
/// height) of `img` to `width × height`.
///
/// As in Pillow: the full box at the same size gives a copy, and an integral box of exactly
/// the output size gives a plain crop (after the alpha premultiply round trip).
///
/// # Errors
/// [`Error::ImageOp`] when `width` or `height` is 0, the image is empty, or the box has a
/// negative offset, exceeds the image, is inverted or not finite.
pub fn resize_box<P>(
    img: &ImageBuffer<P, Vec<u8>>,
    width: u32,
    height: u32,
    region: [f32; 4],
    filter: Filter,
) -> Result<ImageBuffer<P, Vec<u8>>>
where
    P: Pixel<Subpixel = u8>,
{
    check_sizes(img.width(), img.height(), width, height)?;
    check_box(img.width(), img.height(), region)?;
    let full = [0.0, 0.0, img.width() as f32, img.height() as f32];
    if (width, height) == img.dimensions() && region == full {
        return Ok(img.clone());
    }
    let channels = usize::from(P::CHANNEL_COUNT);
    let len = img.width() as usize * img.height() as usize * channels;
    let mut src = Cow::Borrowed(&img.as_raw()[..len]);
    if P::HAS_ALPHA {
        src = Cow::Owned(premultiplied(&src, channels));
    }
    let plane = Plane {
        data: &src,
        width: img.width() as usize,
        height: img.height() as usize,
    };
    let mut out = resample(
        plane,
        channels,
        width as usize,
        height as usize,
        region,
        filter,
    )?;
    if P::HAS_ALPHA {
        unpremultiply(&mut out, channels);
    }
    ImageBuffer::from_raw(width, height, out)
        .ok_or_else(|| Error::ImageOp(format!("resize to {width}x{height}: buffer size mismatch")))
}

/// Rejects zero output sizes and empty inputs, as Pillow does ("height and width must be > 0").
fn check_sizes(in_w: u32, in_h: u32, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::ImageOp(format!(
            "cannot resize to {width}x{height}: height and width must be > 0"
        )));
    }
    if in_w == 0 || in_h == 0 {
        return Err(Error::ImageOp(format!(
            "cannot resize an empty {in_w}x{in_h} image"
        )));
    }
    Ok(())
}

/// Pillow's box checks: finite, non-negative offsets, inside the image, not inverted.
fn check_box(in_w: u32, in_h: u32, b: [f32; 4]) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::ImageOp(format!(
            "resize box {b:?} on a {in_w}x{in_h} image: {why}"
        )))
    };
    if b.iter().any(|v| !v.is_finite()) {
        return bad("box must be finite");
    }
    if b[0] < 0.0 || b[1] < 0.0 {
        return bad("box offset can't be negative");
    }
    if b[2] > in_w as f32 || b[3] > in_h as f32 {
        return bad("box can't exceed original image size");
    }
    if b[2] - b[0] < 0.0 || b[3] - b[1] < 0.0 {
        return bad("box can't be empty");
    }
    Ok(())
}

/// Pillow's `_resize` + `ImagingResampleInner` on premultiplied interleaved samples.
fn resample(
    src: Plane<'_>,
    channels: usize,
    out_w: usize,
    out_h: usize,
    b: [f32; 4],
    filter: Filter,
) -> Result<Vec<u8>> {
    if is_plain_crop(b, out_w, out_h) {
        return Ok(crop(
            src,
            channels,
            b[0] as usize,
            b[1] as usize,
            out_w,
            out_h,
        ));
    }
    let need_h = out_w != src.width || b[0] != 0.0 || b[2] != out_w as f32;
    let need_v = out_h != src.height || b[1] != 0.0 || b[3] != out_h as f32;
    let mut vert = Coefficients::new(src.height, b[1], b[3], out_h, filter);
    let tmp;
    let mut cur = src;
    if need_h {
        let horiz = Coefficients::new(src.width, b[0], b[2], out_w, filter);
        let (first, last) = vert.span();
        vert.shift(first);
        tmp = horizontal(src, channels, first, last - first, &horiz)?;
        cur = Plane {
            data: &tmp,
            width: out_w,
            height: last - first,
        };
    }
    if need_v {
        return Ok(pass::vertical(cur, channels, &vert));
    }
    Ok(cur.data.to_vec())
}

/// Whether Pillow takes the crop shortcut: an integral box offset and a box of exactly the
/// output size.
fn is_plain_crop(b: [f32; 4], out_w: usize, out_h: usize) -> bool {
    b[0].fract() == 0.0
        && b[1].fract() == 0.0
        && b[2] - b[0] == out_w as f32
        && b[3] - b[1] == out_h as f32
}

/// The `w × h` region at `(x, y)`.
fn crop(src: Plane<'_>, channels: usize, x: usize, y: usize, w: usize, h: usize) -> Vec<u8> {
    let stride = src.width * channels;
    let mut out = Vec::with_capacity(w * h * channels);
    for row in src.data.chunks_exact(stride).skip(y).take(h) {
        out.extend_from_slice(&row[x * channels..(x + w) * channels]);
    }
    out
}

/// The horizontal pass, monomorphised for 1 to 4 channels.
fn horizontal(
    src: Plane<'_>,
    channels: usize,
    first: usize,
    n: usize,
    c: &Coefficients,
) -> Result<Vec<u8>> {
    Ok(match channels {
        1 => pass::horizontal::<1>(src, first, n, c),
        2 => pass::horizontal::<2>(src, first, n, c),
        3 => pass::horizontal::<3>(src, first, n, c),
        4 => pass::horizontal::<4>(src, first, n, c),
        _ => {
            return Err(Error::ImageOp(format!(
                "cannot resize images with {channels} channels"
            )));
        }
    })
}

/// Pillow's `RGBA → RGBa` (and `LA → La`): colour × alpha / 255 with `MULDIV255` rounding.
/// The alpha channel is the last one.
fn premultiplied(data: &[u8], channels: usize) -> Vec<u8> {
    let mut out = data.to_vec();
    for px in out.chunks_exact_mut(channels) {
        let (colour, alpha) = px.split_at_mut(channels - 1);
        let a = u32::from(alpha[0]);
        for v in colour {
            let t = u32::from(*v) * a + 128;
            *v = (((t >> 8) + t) >> 8) as u8;
        }
    }
    out
}

/// Pillow's `RGBa → RGBA` (and `La → LA`): colour × 255 / alpha, truncated and clipped;
/// alpha 0 and 255 leave the colour unchanged.
fn unpremultiply(data: &mut [u8], channels: usize) {
    for px in data.chunks_exact_mut(channels) {
        let (colour, alpha) = px.split_at_mut(channels - 1);
        let a = u32::from(alpha[0]);
        if a == 0 || a == 255 {
            continue;
        }
        for v in colour {
            *v = (255 * u32::from(*v) / a).min(255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgb, RgbImage, RgbaImage};

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 7, Rgb([10, 200, 77]));
        for (w, h) in [(1, 1), (40, 3), (5, 29), (13, 8)] {
            let out = lanczos(&img, w, h).unwrap();
            assert!(out.pixels().all(|p| *p == Rgb([10, 200, 77])), "{w}x{h}");
        }
    }

    #[test]
    fn bad_sizes_and_boxes_are_errors() {
        let img = GrayImage::new(8, 8);
        assert!(lanczos(&img, 0, 4).is_err());
        assert!(lanczos(&img, 4, 0).is_err());
        assert!(lanczos(&GrayImage::new(0, 3), 4, 4).is_err());
        for b in [
            [-1.0, 0.0, 8.0, 8.0],
            [0.0, 0.0, 9.0, 8.0],
            [4.0, 0.0, 3.0, 8.0],
            [0.0, 0.0, f32::NAN, 8.0],
        ] {
            assert!(resize_box(&img, 4, 4, b, Filter::Lanczos).is_err(), "{b:?}");
        }
    }

    #[test]
    fn premultiply_round_trip_keeps_opaque_and_clear_pixels() {
        let img = RgbaImage::from_fn(6, 6, |x, y| {
            image::Rgba([x as u8 * 40, y as u8 * 40, 99, [0, 255][(x % 2) as usize]])
        });
        let data = premultiplied(img.as_raw(), 4);
        assert_eq!(data[4..8], [40, 0, 99, 255]);
        assert_eq!(data[0..4], [0, 0, 0, 0]);
    }
}
