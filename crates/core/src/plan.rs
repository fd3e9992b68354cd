//! The loop plan: the final size and, for every loop, its size, denoise, seed and steps.
//!
//! Implements the plan of `docs/algorithm.md` (final size, each loop's size, denoise, seed and
//! steps) as pure functions. Two choices the original script leaves open are made here:
//! - In scale mode the limiting side (the one computed, the other following the ratio) is the
//!   longer side of the start size (height on a square).
//! - Each side of every loop stays between its start and final values (the final size bounds
//!   growth; when the start is larger than the final size, the loops shrink towards it).

use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::io::to_diffusion_rgb;
use crate::settings::{Curve, Settings, Size, TargetMode};
use crate::{Error, Result};

/// The smallest start side allowed.
pub const MIN_SIDE: u32 = 64;
/// The largest side of any loop.
pub const MAX_SIDE: u32 = 4096;

/// One loop of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoopSpec {
    /// 1-based loop number.
    pub index: u32,
    /// Width of this loop's img2img pass.
    pub width: u32,
    /// Height of this loop's img2img pass.
    pub height: u32,
    /// Denoising strength of this loop.
    pub denoise: f64,
    /// Seed of this loop.
    pub seed: u32,
    /// Sampling steps this loop actually runs (the last `floor(steps × denoise)` of the schedule).
    pub steps: u32,
    /// True when the size depends on an image not yet produced (adaptive curve, before a run).
    #[serde(skip)]
    pub estimated: bool,
}

impl LoopSpec {
    /// This loop's size.
    pub fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

/// The whole schedule of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The size of the last loop's output.
    #[serde(rename = "final")]
    pub final_size: Size,
    /// Every loop, in order.
    pub loops: Vec<LoopSpec>,
    /// The size the first loop starts from.
    #[serde(skip)]
    pub start: Size,
}

impl Plan {
    /// The plan as the `plan --json` output.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Remarks to show beside the plan (shrinking loops, estimated adaptive sizes).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.start.width > self.final_size.width || self.start.height > self.final_size.height {
            notes.push(format!(
                "the start size {} is larger than the final size {}: the loops shrink the image",
                self.start, self.final_size
            ));
        }
        if self.loops.iter().any(|l| l.estimated) {
            notes.push(
                "adaptive sizes marked * are estimates: they depend on each loop's output".into(),
            );
        }
        notes
    }
}

/// The start size: the setting if given, else the image size rounded down to multiples of 8.
pub fn start_size(settings: &Settings, image: Option<Size>) -> Result<Size> {
    let (size, origin) = match (settings.start_size, image) {
        (Some(size), _) => (size, "start size"),
        (None, Some(image)) => (image.floor8(), "input image size rounded down to ×8"),
        (None, None) => {
            return Err(Error::setting(
                "start_size",
                "none",
                "give a start size or an input image",
            ));
        }
    };
    for side in [size.width, size.height] {
        if !(MIN_SIDE..=MAX_SIDE).contains(&side) {
            return Err(Error::setting(
                "start_size",
                size,
                format!(
                    "the {origin} must be between {MIN_SIDE} and {MAX_SIDE} on each side \
                     (set --start-size)"
                ),
            ));
        }
    }
    Ok(size)
}

/// Which side drives the growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Width,
    Height,
}

/// The fixed geometry of a run: start, final size and which side limits.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    start: Size,
    final_size: Size,
    side: Side,
}

impl Geometry {
    fn new(settings: &Settings, start: Size) -> Result<Self> {
        let (w0, h0) = (u64::from(start.width), u64::from(start.height));
        let (side, final_size) = match settings.target_mode {
            TargetMode::MaxSize => {
                let (wmax, hmax) = (
                    u64::from(settings.max_width),
                    u64::from(settings.max_height),
                );
                // r ≥ Hmax/Wmax  ⇔  H0·Wmax ≥ Hmax·W0, exactly in integers.
                if h0 * wmax >= hmax * w0 {
                    (Side::Height, (hmax * w0 / h0, hmax))
                } else {
                    (Side::Width, (wmax, wmax * h0 / w0))
                }
            }
            TargetMode::Scale => {
                let side = if h0 >= w0 { Side::Height } else { Side::Width };
                let scaled = |v: u64| (v as f64 * settings.scale).floor() as u64;
                (side, (scaled(w0), scaled(h0)))
            }
        };
        let final_size = Size::new(final_size.0 as u32, final_size.1 as u32).floor8();
        if final_size.width < 8 || final_size.height < 8 {
            return Err(Error::setting(
                "target",
                final_size,
                "the final size must be at least 8 pixels on each side",
            ));
        }
        if final_size.width > MAX_SIDE || final_size.height > MAX_SIDE {
            return Err(Error::setting(
                "scale",
                settings.scale,
                format!(
                    "{start} × {} gives {final_size}; the largest side is {MAX_SIDE}",
                    settings.scale
                ),
            ));
        }
        Ok(Geometry {
            start,
            final_size,
            side,
        })
    }

    fn limit_of(&self, size: Size) -> i64 {
        i64::from(match self.side {
            Side::Width => size.width,
            Side::Height => size.height,
        })
    }

    /// The loop size for a limiting-side length `limit` (not yet rounded).
    fn size_for(&self, limit: f64) -> Size {
        let (w0, h0) = (f64::from(self.start.width), f64::from(self.start.height));
        let (w, h) = match self.side {
            Side::Height => ((limit * w0 / h0).floor(), limit),
            Side::Width => (limit, (limit * h0 / w0).floor()),
        };
        // Each side stays between its start and final values, so the sizes move monotonically
        // from the start towards the final size even where the side that follows the ratio
        // rounds differently from the final size's own rounding.
        let (s, f) = (self.start, self.final_size);
        let lo = Size::new(s.width.min(f.width), s.height.min(f.height));
        let hi = Size::new(s.width.max(f.width), s.height.max(f.height));
        Size::new(
            round8(w, hi.width).max(lo.width),
            round8(h, hi.height).max(lo.height),
        )
    }
}

/// The nearest multiple of 8 to `v`, at least 8 and at most `max` (a multiple of 8).
fn round8(v: f64, max: u32) -> u32 {
    let nearest = ((v / 8.0 + 0.5).floor().max(1.0) * 8.0) as u32;
    nearest.min(max)
}

/// The value of growth curve `curve` at progress `p` ∈ [0, 1] (not for [`Curve::Adaptive`]).
pub fn ease(curve: Curve, p: f64) -> f64 {
    use std::f64::consts::PI;
    match curve {
        Curve::Linear | Curve::Adaptive => p,
        Curve::EaseInSine => 1.0 - (PI * p / 2.0).cos(),
        Curve::EaseInCubic => p.powi(3),
        Curve::EaseInQuint => p.powi(5),
        Curve::EaseInCirc => 1.0 - (1.0 - p * p).sqrt(),
        Curve::EaseOutSine => (PI * p / 2.0).sin(),
        Curve::EaseOutCubic => 1.0 - (1.0 - p).powi(3),
        Curve::EaseOutQuint => 1.0 - (1.0 - p).powi(5),
        Curve::EaseOutCirc => (1.0 - (p - 1.0).powi(2)).sqrt(),
        Curve::EaseInOutSine => -((PI * p).cos() - 1.0) / 2.0,
        Curve::EaseInOutCubic if p < 0.5 => 4.0 * p.powi(3),
        Curve::EaseInOutCubic => 1.0 - (-2.0 * p + 2.0).powi(3) / 2.0,
        Curve::EaseInOutQuint if p < 0.5 => 16.0 * p.powi(5),
        Curve::EaseInOutQuint => 1.0 - (-2.0 * p + 2.0).powi(5) / 2.0,
        Curve::EaseInOutCirc if p < 0.5 => (1.0 - (1.0 - (2.0 * p).powi(2)).sqrt()) / 2.0,
        Curve::EaseInOutCirc => ((1.0 - (-2.0 * p + 2.0).powi(2)).sqrt() + 1.0) / 2.0,
    }
}

/// The final size for `settings` from `start`.
pub fn final_size(settings: &Settings, start: Size) -> Result<Size> {
    Ok(Geometry::new(settings, start)?.final_size)
}

/// Resolves the seed setting: −1 draws a random seed in [0, 4294967294) as A1111 does.
pub fn resolve_seed(seed: i64) -> u32 {
    match u32::try_from(seed) {
        Ok(seed) => seed,
        Err(_) => rand::random_range(0..u32::MAX - 1),
    }
}

/// The mean of all R, G and B values (0–255) of an image: the adaptive curve's brightness.
pub fn rgb_mean(image: &image::RgbImage) -> f64 {
    let pixels = image.as_raw();
    if pixels.is_empty() {
        return 0.0;
    }
    let sum: u64 = pixels.iter().map(|&v| u64::from(v)).sum();
    sum as f64 / pixels.len() as f64
}

/// What a plan is made for: the input image, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlanInput {
    /// An input image (or one assumed in its place).
    Image {
        /// Its size: rounded down to ×8, the start size unless the start size setting is
        /// given.
        size: Size,
        /// The mean of its R, G and B values ([`rgb_mean`] of the image as the run sees it,
        /// [`to_diffusion_rgb`]): the adaptive curve's brightness.
        mean: f64,
    },
    /// No input image: the start size setting must be given. The adaptive curve assumes a
    /// mean of 127.5, and its sizes after the first loop are estimates.
    NoImage,
}

impl PlanInput {
    /// The input `image`, flattened as the run sees it ([`to_diffusion_rgb`]).
    pub fn of_image(image: &DynamicImage) -> Self {
        Self::of_rgb(&to_diffusion_rgb(image))
    }

    /// The input `rgb`, already as the run sees it.
    pub fn of_rgb(rgb: &RgbImage) -> Self {
        PlanInput::Image {
            size: Size::new(rgb.width(), rgb.height()),
            mean: rgb_mean(rgb),
        }
    }

    /// The image's size, if there is one.
    pub fn size(&self) -> Option<Size> {
        match *self {
            PlanInput::Image { size, .. } => Some(size),
            PlanInput::NoImage => None,
        }
    }

    /// The image's mean RGB value, if there is one.
    pub fn mean(&self) -> Option<f64> {
        match *self {
            PlanInput::Image { mean, .. } => Some(mean),
            PlanInput::NoImage => None,
        }
    }
}

/// The plan of a run of `settings` on `input` whose first loop has seed `seed` (a resolved
/// seed, [`resolve_seed`]): the start size ([`start_size`]) and the plan from it ([`plan`]),
/// adaptive sizes after the first loop estimated from the input's brightness.
///
/// This is the one place a plan is made from settings and an input; a run re-plans with
/// [`plan`] from the same start as each loop's output becomes known.
pub fn plan_for(settings: &Settings, input: PlanInput, seed: u32) -> Result<Plan> {
    let start = start_size(settings, input.size())?;
    let means: Vec<f64> = input.mean().into_iter().collect();
    plan(settings, start, seed, &means)
}

/// Computes the plan.
///
/// `seed` is the run's resolved seed ([`resolve_seed`]). `means[k − 1]` is the mean RGB value of
/// loop `k`'s input image, used only by the adaptive curve; loops whose mean is not known yet
/// reuse the last known one and are marked [`LoopSpec::estimated`]. Before a run pass the
/// original image's mean; during a run, re-plan with every finished loop's mean appended.
pub fn plan(settings: &Settings, start: Size, seed: u32, means: &[f64]) -> Result<Plan> {
    settings.validate()?;
    let geometry = Geometry::new(settings, start)?;
    let n = settings.loops;
    let l0 = geometry.limit_of(start);
    let lf = geometry.limit_of(geometry.final_size);
    let adaptive_base = (lf - l0).div_euclid(i64::from(n));

    let mut loops = Vec::with_capacity(n as usize);
    let mut limit = l0;
    let mut denoise = settings.denoise;
    for k in 1..=n {
        let mut estimated = false;
        let size = if k == n {
            geometry.final_size
        } else if settings.curve == Curve::Adaptive {
            let index = (k - 1) as usize;
            let mean = means.get(index).or(means.last()).copied().unwrap_or(127.5);
            estimated = k > 1 && index >= means.len();
            limit +=
                (adaptive_base as f64 * mean / 255.0 * settings.adaptive_factor).trunc() as i64;
            // A large factor may overshoot; never go past the final size.
            limit = limit.clamp(l0.min(lf), l0.max(lf));
            geometry.size_for(limit as f64)
        } else {
            let e = ease(settings.curve, f64::from(k) / f64::from(n));
            geometry.size_for(l0 as f64 + (lf - l0) as f64 * e)
        };
        loops.push(LoopSpec {
            index: k,
            width: size.width,
            height: size.height,
            denoise,
            seed: seed.wrapping_add(k - 1),
            steps: steps_for(settings.steps, denoise),
            estimated,
        });
        denoise = (denoise * settings.denoise_change).clamp(0.1, 1.0);
    }
    Ok(Plan {
        final_size: geometry.final_size,
        loops,
        start,
    })
}

/// Steps a loop runs: `min(floor(T · d), T)`, at least one when `d > 0` (diffusers img2img).
pub fn steps_for(total: u32, denoise: f64) -> u32 {
    let steps = ((f64::from(total) * denoise).floor() as u32).min(total);
    if denoise > 0.0 { steps.max(1) } else { 0 }
}

#[cfg(test)]
mod tests;
