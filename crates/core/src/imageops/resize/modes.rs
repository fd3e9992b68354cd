//! A1111's `modules/images.py resize_image` for its three Pillow-based resize modes.

use std::borrow::Cow;

use image::RgbImage;

use super::kernel::Filter;
use super::resample::{lanczos, resize_box};
use crate::settings::ResizeMode;
use crate::{Error, Result};

/// A1111's `resize_image(mode, im, width, height)` (no upscaler model):
///
/// - [`ResizeMode::JustResize`]: LANCZOS to `width × height`.
/// - [`ResizeMode::CropAndResize`]: LANCZOS to cover the size with the source ratio, then a
///   centred crop.
/// - [`ResizeMode::ResizeAndFill`]: LANCZOS to fit inside the size, centred on black, and the
///   empty bands filled by stretching the edge rows (or columns) with Pillow's default
///   `Image.resize` filter (BICUBIC) over a zero-height (or zero-width) box; bands of 0 pixels
///   are skipped, and a leftover odd row or column stays black.
///
/// # Errors
/// [`Error::ImageOp`] when a size is 0 or an intermediate size rounds down to 0 (where
/// Pillow raises too).
pub fn resize_image(mode: ResizeMode, img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 || img.width() == 0 || img.height() == 0 {
        return Err(Error::ImageOp(format!(
            "cannot resize a {}x{} image to {width}x{height}: sizes must be > 0",
            img.width(),
            img.height()
        )));
    }
    match mode {
        ResizeMode::JustResize => lanczos(img, width, height),
        ResizeMode::CropAndResize => crop_and_resize(img, width, height),
        ResizeMode::ResizeAndFill => resize_and_fill(img, width, height),
    }
}

/// The size comparisons A1111 makes: `width/height` against the source's `W0/H0` (f64).
struct Fit {
    ratio: f64,
    src_ratio: f64,
    /// `W0·height // H0`: the source width scaled to the target height.
    scaled_w: u32,
    /// `H0·width // W0`: the source height scaled to the target width.
    scaled_h: u32,
}

impl Fit {
    /// The comparisons for fitting `img` to `width × height`.
    fn new(img: &RgbImage, width: u32, height: u32) -> Result<Self> {
        let (w0, h0) = (u64::from(img.width()), u64::from(img.height()));
        let narrow = |v: u64| {
            u32::try_from(v)
                .map_err(|_| Error::ImageOp(format!("resize: intermediate size {v} is too large")))
        };
        Ok(Fit {
            ratio: f64::from(width) / f64::from(height),
            src_ratio: w0 as f64 / h0 as f64,
            scaled_w: narrow(w0 * u64::from(height) / h0)?,
            scaled_h: narrow(h0 * u64::from(width) / w0)?,
        })
    }
}

/// Mode 1: scale to cover, paste centred (a clipped paste, i.e. a centre crop).
fn crop_and_resize(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let fit = Fit::new(img, width, height)?;
    let src_w = if fit.ratio > fit.src_ratio {
        width
    } else {
        fit.scaled_w
    };
    let src_h = if fit.ratio <= fit.src_ratio {
        height
    } else {
        fit.scaled_h
    };
    let resized = fitted(img, src_w, src_h)?;
    let mut res = RgbImage::new(width, height);
    paste(
        &mut res,
        &resized,
        centred(width, src_w),
        centred(height, src_h),
    );
    Ok(res)
}

/// Mode 2: scale to fit, paste centred, then fill the bands on either side.
fn resize_and_fill(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let fit = Fit::new(img, width, height)?;
    let src_w = if fit.ratio < fit.src_ratio {
        width
    } else {
        fit.scaled_w
    };
    let src_h = if fit.ratio >= fit.src_ratio {
        height
    } else {
        fit.scaled_h
    };
    let resized = fitted(img, src_w, src_h)?;
    let mut res = RgbImage::new(width, height);
    paste(
        &mut res,
        &resized,
        centred(width, src_w),
        centred(height, src_h),
    );
    if fit.ratio < fit.src_ratio {
        fill_rows(&mut res, &resized, width, src_h, centred(height, src_h))?;
    } else if fit.ratio > fit.src_ratio {
        fill_columns(&mut res, &resized, height, src_w, centred(width, src_w))?;
    }
    Ok(res)
}

/// `img` LANCZOS-resized to `width × height`, borrowed when the size is unchanged (Pillow
/// returns a copy then, which the paste copies again).
fn fitted(img: &RgbImage, width: u32, height: u32) -> Result<Cow<'_, RgbImage>> {
    if img.dimensions() == (width, height) {
        return Ok(Cow::Borrowed(img));
    }
    Ok(Cow::Owned(lanczos(img, width, height)?))
}

/// The bands above and below: the top and bottom edges stretched to `fill` rows.
fn fill_rows(
    res: &mut RgbImage,
    resized: &RgbImage,
    width: u32,
    src_h: u32,
    fill: i64,
) -> Result<()> {
    let Ok(fh) = u32::try_from(fill) else {
        return Ok(());
    };
    if fh == 0 {
        return Ok(());
    }
    let edge = src_h as f32;
    let top = resize_box(
        resized,
        width,
        fh,
        [0.0, 0.0, width as f32, 0.0],
        Filter::Bicubic,
    )?;
    let bottom = resize_box(
        resized,
        width,
        fh,
        [0.0, edge, width as f32, edge],
        Filter::Bicubic,
    )?;
    paste(res, &top, 0, 0);
    paste(res, &bottom, 0, fill + i64::from(src_h));
    Ok(())
}

/// The bands left and right: the left and right edges stretched to `fill` columns.
fn fill_columns(
    res: &mut RgbImage,
    resized: &RgbImage,
    height: u32,
    src_w: u32,
    fill: i64,
) -> Result<()> {
    let Ok(fw) = u32::try_from(fill) else {
        return Ok(());
    };
    if fw == 0 {
        return Ok(());
    }
    let edge = src_w as f32;
    let left = resize_box(
        resized,
        fw,
        height,
        [0.0, 0.0, 0.0, height as f32],
        Filter::Bicubic,
    )?;
    let right = resize_box(
        resized,
        fw,
        height,
        [edge, 0.0, edge, height as f32],
        Filter::Bicubic,
    )?;
    paste(res, &left, 0, 0);
    paste(res, &right, fill + i64::from(src_w), 0);
    Ok(())
}

/// `size // 2 − inner // 2`: the offset that centres `inner` in `size` (may be negative).
fn centred(size: u32, inner: u32) -> i64 {
    i64::from(size / 2) - i64::from(inner / 2)
}

/// Pillow's `dst.paste(src, (x, y))`: copies `src` with its top-left corner at `(x, y)`,
/// clipped to `dst`.
fn paste(dst: &mut RgbImage, src: &RgbImage, x: i64, y: i64) {
    let (dw, dh) = (i64::from(dst.width()), i64::from(dst.height()));
    let (sw, sh) = (i64::from(src.width()), i64::from(src.height()));
    let (x0, y0) = (x.max(0), y.max(0));
    let (x1, y1) = ((x + sw).min(dw), (y + sh).min(dh));
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    let run = (x1 - x0) as usize * 3;
    let (d_stride, s_stride) = (dw as usize * 3, sw as usize * 3);
    let (sx, dx) = ((x0 - x) as usize * 3, x0 as usize * 3);
    let src_raw = src.as_raw();
    let dst_raw: &mut [u8] = dst;
    for row in y0..y1 {
        let s = (row - y) as usize * s_stride + sx;
        let d = row as usize * d_stride + dx;
        dst_raw[d..d + run].copy_from_slice(&src_raw[s..s + run]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn paste_clips_on_every_side() {
        let mut dst = RgbImage::new(4, 3);
        let src = RgbImage::from_pixel(3, 3, Rgb([9, 9, 9]));
        paste(&mut dst, &src, -1, 2);
        let lit: Vec<_> = dst
            .enumerate_pixels()
            .filter(|p| p.2[0] == 9)
            .map(|p| (p.0, p.1))
            .collect();
        assert_eq!(lit, vec![(0, 2), (1, 2)]);
        paste(&mut dst, &src, 5, 0);
        paste(&mut dst, &src, 0, -3);
        assert_eq!(dst.pixels().filter(|p| p[0] == 9).count(), 2);
    }

    #[test]
    fn zero_sizes_are_errors() {
        let img = RgbImage::new(10, 10);
        for mode in [
            ResizeMode::JustResize,
            ResizeMode::CropAndResize,
            ResizeMode::ResizeAndFill,
        ] {
            assert!(resize_image(mode, &img, 0, 5).is_err());
            assert!(resize_image(mode, &img, 5, 0).is_err());
            assert!(resize_image(mode, &RgbImage::new(0, 0), 5, 5).is_err());
        }
        // 1000:1 source into a square: the scaled side rounds to 0, as Pillow would refuse.
        let thin = RgbImage::new(1000, 1);
        assert!(resize_image(ResizeMode::CropAndResize, &thin, 4, 4).is_ok());
        assert!(resize_image(ResizeMode::ResizeAndFill, &thin, 4, 4).is_err());
    }
}
