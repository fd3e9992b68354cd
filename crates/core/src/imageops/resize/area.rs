//! Shrinking by area averaging (OpenCV's `INTER_AREA` for downscaling): each output pixel is
//! the mean of the source pixels it covers, fractional pixels weighted by their coverage.

use image::RgbImage;

use crate::error::{Error, Result};

/// For one axis: per output index, the source indices it covers and their weights (summing
/// to 1).
fn spans(src: u32, dst: u32) -> Vec<Vec<(usize, f64)>> {
    let scale = f64::from(src) / f64::from(dst);
    (0..dst)
        .map(|o| {
            let (lo, hi) = (f64::from(o) * scale, f64::from(o + 1) * scale);
            let mut out = Vec::new();
            let mut i = lo.floor() as usize;
            while (i as f64) < hi && i < src as usize {
                let cover = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                if cover > 0.0 {
                    out.push((i, cover / scale));
                }
                i += 1;
            }
            out
        })
        .collect()
}

/// `img` shrunk to `width × height` (each at most the source's) by area averaging, rounded
/// to the nearest level.
///
/// # Errors
/// [`Error::ImageOp`] when a side is 0 or larger than the source's.
pub fn area_downscale(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if width == 0 || height == 0 || width > img.width() || height > img.height() {
        return Err(Error::ImageOp(format!(
            "cannot area-downscale {}x{} to {width}x{height}",
            img.width(),
            img.height()
        )));
    }
    let (xs, ys) = (spans(img.width(), width), spans(img.height(), height));
    let mut out = RgbImage::new(width, height);
    for (oy, row) in ys.iter().enumerate() {
        for (ox, col) in xs.iter().enumerate() {
            let mut acc = [0.0f64; 3];
            for &(sy, wy) in row {
                for &(sx, wx) in col {
                    let p = img.get_pixel(sx as u32, sy as u32).0;
                    for c in 0..3 {
                        acc[c] += f64::from(p[c]) * wy * wx;
                    }
                }
            }
            let px = acc.map(|v| v.round().clamp(0.0, 255.0) as u8);
            out.put_pixel(ox as u32, oy as u32, image::Rgb(px));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_averages_blocks() {
        let img = RgbImage::from_fn(4, 2, |x, _| image::Rgb([(x * 60) as u8, 10, 200]));
        let out = area_downscale(&img, 2, 1).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [30, 10, 200]);
        assert_eq!(out.get_pixel(1, 0).0, [150, 10, 200]);
    }

    #[test]
    fn fractional_factors_weight_partial_pixels() {
        // 3 → 2: output 0 covers source 0 and half of 1.
        let img = RgbImage::from_fn(3, 1, |x, _| image::Rgb([[0, 90, 180][x as usize]; 3]));
        let out = area_downscale(&img, 2, 1).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [30; 3]);
        assert_eq!(out.get_pixel(1, 0).0, [150; 3]);
        assert!(area_downscale(&img, 4, 1).is_err());
        assert_eq!(area_downscale(&img, 3, 1).unwrap(), img);
    }
}
