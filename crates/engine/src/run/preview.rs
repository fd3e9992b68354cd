//! A cheap preview of latents after every step, where decoding with the VAE would cost as much
//! as the step itself: with TAESD when its weights are there ([`taesd_to_rgb`], image
//! resolution up to [`TAESD_MAX_LATENT`] × 8 pixels), otherwise a linear projection of the 4
//! latent channels to RGB at latent resolution ([`latents_to_rgb`], one pixel per 8×8 block).

use candle_core::{DType, Tensor};
use image::RgbImage;

use crate::error::engine_err;
use crate::model::taesd::TaesdDecoder;
use loopback_core::Result;

/// Approximate RGB contribution of each SD 1.x/2.x latent channel (rows: channels), plus bias.
const FACTORS: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];
const BIAS: [f32; 3] = [0.0, 0.0, 0.0];

/// The preview of `(1, 4, h, w)` latents as an `w × h` RGB image.
pub fn latents_to_rgb(latents: &Tensor) -> Result<RgbImage> {
    let latents = latents
        .to_dtype(DType::F32)
        .map_err(engine_err("preview"))?;
    let (_, c, h, w) = latents.dims4().map_err(engine_err("preview"))?;
    let values: Vec<f32> = latents
        .get(0)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(engine_err("preview"))?;
    let plane = h * w;
    let mut out = RgbImage::new(w as u32, h as u32);
    for (i, px) in out.pixels_mut().enumerate() {
        for (rgb, bias) in BIAS.iter().enumerate() {
            let v: f32 = (0..c.min(4))
                .map(|ch| values[ch * plane + i] * FACTORS[ch][rgb])
                .sum::<f32>()
                + bias;
            px[rgb] = (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        }
    }
    Ok(out)
}

/// The largest latent side TAESD previews decode; larger latents are average-pooled first
/// (a factor of 2, 3, …), so a preview costs at most a 512-pixel decode.
pub const TAESD_MAX_LATENT: usize = 64;

/// The TAESD preview of `(1, 4, h, w)` latents: an RGB image of `8w × 8h` pixels (smaller for
/// latents beyond [`TAESD_MAX_LATENT`]).
pub fn taesd_to_rgb(decoder: &TaesdDecoder, latents: &Tensor) -> Result<RgbImage> {
    let (_, _, h, w) = latents.dims4().map_err(engine_err("preview"))?;
    let factor = h.max(w).div_ceil(TAESD_MAX_LATENT).max(1);
    let latents = if factor > 1 {
        latents
            .to_dtype(DType::F32)
            .and_then(|l| l.avg_pool2d(factor))
            .map_err(engine_err("preview"))?
    } else {
        latents.clone()
    };
    let rgb = decoder.decode(&latents)?;
    let rgb = rgb
        .to_dtype(DType::F32)
        .and_then(|t| t.get(0))
        .map_err(engine_err("preview"))?;
    let (_, height, width) = rgb.dims3().map_err(engine_err("preview"))?;
    let values: Vec<f32> = rgb
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(engine_err("preview"))?;
    let plane = height * width;
    let mut out = RgbImage::new(width as u32, height as u32);
    for (i, px) in out.pixels_mut().enumerate() {
        for c in 0..3 {
            px[c] = (values[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    Ok(out)
}
