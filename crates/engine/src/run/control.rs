//! How a ControlNet steers a pass: which steps it acts on, how each residual is weighted,
//! which guidance rows get it, and the control image.
//!
//! - Steps: diffusers' `controlnet_keep` over the steps the pass runs: step `i` of `n` is
//!   controlled unless `i/n < start` or `(i+1)/n > end`.
//! - Weights, as the sd-webui-controlnet extension's control modes: *Balanced* multiplies
//!   every residual by the weight; *My prompt is more important* by
//!   `weight × 0.825^(N−1−j)` for residual `j` of `N` (SD 1.5's 13: the extension's
//!   `0.825^(12−i)`), fading the shallow ones; *ControlNet is more important* does the same
//!   on the prompt's row only (the negative prompt's row gets no control, so guidance pushes
//!   towards it).
//! - The control image is the pass's input in [0, 1], RGB; the tile preprocessor shrinks it
//!   by the resample rate (area average, as the extension's `tile_resample`) and brings it
//!   back with Lanczos.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::engine_err;
use crate::model::controlnet::ControlNet;
use crate::model::unet::{AddedCond, ControlResiduals};
use loopback_core::imageops::resize::{area_downscale, lanczos};
use loopback_core::settings::{ControlMode, ControlPreprocess};
use loopback_core::{Error, Result};

/// The soft-injection decay per residual of the extension's prompt/ControlNet modes.
const SOFT_DECAY: f64 = 0.825;

/// How a ControlNet steers a pass (the `control_*` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlParams {
    /// The residuals' multiplier.
    pub weight: f64,
    /// First controlled fraction of the steps.
    pub start: f64,
    /// Last controlled fraction of the steps.
    pub end: f64,
    /// The extension's control mode.
    pub mode: ControlMode,
    /// What the control image is made from the pass's input.
    pub preprocess: ControlPreprocess,
    /// The tile preprocessor's down-sampling rate.
    pub resample_rate: f64,
}

impl ControlParams {
    /// Whether step `i` of the `n` the pass runs is controlled (diffusers' `controlnet_keep`).
    pub fn keeps(&self, i: usize, n: usize) -> bool {
        let n = n.max(1) as f64;
        !((i as f64) / n < self.start || (i as f64 + 1.0) / n > self.end)
    }

    /// The multiplier of each of `count` residuals (skip connections first, the mid
    /// block's last).
    pub fn scales(&self, count: usize) -> Vec<f64> {
        (0..count)
            .map(|j| match self.mode {
                ControlMode::Balanced => self.weight,
                ControlMode::Prompt | ControlMode::ControlNet => {
                    self.weight * SOFT_DECAY.powi((count - 1 - j) as i32)
                }
            })
            .collect()
    }

    /// Whether the negative prompt's row gets the residuals too.
    pub fn controls_uncond(&self) -> bool {
        self.mode != ControlMode::ControlNet
    }

    /// The control image for a pass whose input is `image`.
    pub fn control_image(&self, image: &RgbImage) -> Result<RgbImage> {
        match self.preprocess {
            ControlPreprocess::None => Ok(image.clone()),
            ControlPreprocess::TileResample => tile_resample(image, self.resample_rate),
        }
    }
}

/// The extension's `tile_resample`: below a rate of 1.1 the image as it is; else shrunk to
/// `size / rate` by area averaging, then (the extension resizes every control map to the
/// generation size) back to the image's size with Lanczos.
pub fn tile_resample(image: &RgbImage, rate: f64) -> Result<RgbImage> {
    if rate.is_nan() || rate < 1.1 {
        return Ok(image.clone());
    }
    let (w, h) = image.dimensions();
    let small_w = ((f64::from(w) / rate) as u32).max(1);
    let small_h = ((f64::from(h) / rate) as u32).max(1);
    let small = area_downscale(image, small_w, small_h)?;
    lanczos(&small, w, h)
}

/// A ControlNet at work in one pass: the network, its settings and the control image as a
/// `(1, 3, H, W)` tensor in [0, 1].
#[derive(Debug)]
pub struct ActiveControl<'a> {
    net: &'a ControlNet,
    params: ControlParams,
    image: Tensor,
}

impl<'a> ActiveControl<'a> {
    /// Prepares `net` for a pass over `input` (the pass's input image).
    pub fn new(
        net: &'a ControlNet,
        params: ControlParams,
        input: &RgbImage,
        device: &Device,
    ) -> Result<Self> {
        let control = params.control_image(input)?;
        let (w, h) = control.dimensions();
        let values: Vec<f32> = control
            .as_raw()
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        let image = Tensor::from_vec(values, (h as usize, w as usize, 3), device)
            .and_then(|t| t.permute((2, 0, 1)))
            .and_then(|t| t.unsqueeze(0))
            .map_err(engine_err("control image"))?;
        Ok(ActiveControl { net, params, image })
    }

    /// The residuals for one UNet call at step `step` of `steps`, or `None` when the step is
    /// not controlled. `input` is the call's latents (its rows the call's batch); `latent_rect`
    /// `(y, x, h, w)` is where they lie in the whole latents (a tile, or all of it);
    /// `uncond_rows` says which rows are the negative prompt's.
    #[allow(clippy::too_many_arguments)]
    pub fn residuals(
        &self,
        input: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCond>,
        latent_rect: (usize, usize, usize, usize),
        uncond_rows: &[bool],
        (step, steps): (usize, usize),
    ) -> Result<Option<ControlResiduals>> {
        if !self.params.keeps(step, steps) || self.params.weight == 0.0 {
            return Ok(None);
        }
        let err = || engine_err("ControlNet");
        let controlled: Vec<usize> = (0..uncond_rows.len())
            .filter(|&r| !uncond_rows[r] || self.params.controls_uncond())
            .collect();
        if controlled.is_empty() {
            return Ok(None);
        }
        let down = self.net.hint_downscale();
        let (y, x, h, w) = latent_rect;
        let crop = self
            .image
            .narrow(2, y * down, h * down)
            .and_then(|t| t.narrow(3, x * down, w * down))
            .map_err(err())?;
        // Only the controlled rows run through the ControlNet.
        let rows = uncond_rows.len();
        let pick = |t: &Tensor| -> candle_core::Result<Tensor> {
            if controlled.len() == rows {
                return Ok(t.clone());
            }
            let parts = controlled
                .iter()
                .map(|&r| t.narrow(0, r, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)
        };
        let added_rows = added
            .map(|a| -> candle_core::Result<AddedCond> {
                Ok(AddedCond {
                    text_embeds: pick(&a.text_embeds)?,
                    time_ids: pick(&a.time_ids)?,
                })
            })
            .transpose()
            .map_err(err())?;
        let control = Tensor::cat(&vec![&crop; controlled.len()], 0).map_err(err())?;
        let raw = self
            .net
            .forward(
                &pick(input).map_err(err())?,
                timestep,
                &pick(context).map_err(err())?,
                added_rows.as_ref(),
                &control,
            )
            .map_err(err())?;
        let scales = self.params.scales(raw.down.len() + 1);
        // Back to the call's rows: the uncontrolled ones get zeros.
        let spread = |t: Tensor, scale: f64| -> candle_core::Result<Tensor> {
            let t = t.affine(scale, 0.0)?;
            if controlled.len() == rows {
                return Ok(t);
            }
            let zero = t.narrow(0, 0, 1)?.zeros_like()?;
            let mut next = 0;
            let parts = (0..rows)
                .map(|r| {
                    if controlled.contains(&r) {
                        next += 1;
                        t.narrow(0, next - 1, 1)
                    } else {
                        Ok(zero.clone())
                    }
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)
        };
        let count = raw.down.len();
        let down = raw
            .down
            .into_iter()
            .zip(&scales)
            .map(|(t, &s)| spread(t, s))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err())?;
        let mid = spread(raw.mid, scales[count]).map_err(err())?;
        Ok(Some(ControlResiduals { down, mid }))
    }

    /// The control image's size must be the latents' times the ControlNet's downscale.
    pub fn check_size(&self, lat_h: usize, lat_w: usize) -> Result<()> {
        let (_, _, h, w) = self.image.dims4().map_err(engine_err("control image"))?;
        let down = self.net.hint_downscale();
        if h != lat_h * down || w != lat_w * down {
            return Err(Error::Engine(format!(
                "the control image is {w}x{h}, the latents need {}x{}",
                lat_w * down,
                lat_h * down
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: ControlMode, start: f64, end: f64) -> ControlParams {
        ControlParams {
            weight: 0.5,
            start,
            end,
            mode,
            preprocess: ControlPreprocess::None,
            resample_rate: 1.0,
        }
    }

    #[test]
    fn keep_follows_diffusers() {
        let p = params(ControlMode::Balanced, 0.2, 0.8);
        let kept: Vec<bool> = (0..5).map(|i| p.keeps(i, 5)).collect();
        assert_eq!(kept, [false, true, true, true, false]);
        let all = params(ControlMode::Balanced, 0.0, 1.0);
        assert!((0..7).all(|i| all.keeps(i, 7)));
    }

    #[test]
    fn soft_modes_fade_the_shallow_residuals() {
        let b = params(ControlMode::Balanced, 0.0, 1.0).scales(13);
        assert!(b.iter().all(|&s| s == 0.5));
        let p = params(ControlMode::Prompt, 0.0, 1.0).scales(13);
        assert_eq!(p[12], 0.5);
        assert!((p[0] - 0.5 * 0.825f64.powi(12)).abs() < 1e-15);
        let c = params(ControlMode::ControlNet, 0.0, 1.0);
        assert_eq!(c.scales(13), p);
        assert!(!c.controls_uncond());
    }

    #[test]
    fn tile_resample_blurs_only_past_its_threshold() {
        let img = RgbImage::from_fn(16, 8, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 30) as u8, 7])
        });
        assert_eq!(tile_resample(&img, 1.0).unwrap(), img);
        let soft = tile_resample(&img, 2.0).unwrap();
        assert_eq!(soft.dimensions(), (16, 8));
        assert_ne!(soft, img);
    }
}
