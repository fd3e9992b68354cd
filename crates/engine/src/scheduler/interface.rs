//! What every sampler implements ([`Scheduler`] over a [`SchedulerTensor`]), img2img's start
//! step, and the checks and helpers the samplers share.

use std::ops::Range;

use crate::scheduler::config::{PredictionType, SchedulerConfig};
use loopback_core::{Error, Result};

/// The tensor operations the schedulers need; the engine implements it for its tensors.
pub trait SchedulerTensor: Sized {
    /// `sum(c * x)` over the terms, elementwise; all tensors have the same shape and there is
    /// at least one term.
    fn lin_comb(terms: &[(f64, &Self)]) -> Result<Self>;
    /// Each element clamped to `[min, max]` (DDIM's `clip_sample`).
    fn clamp(&self, min: f64, max: f64) -> Result<Self>;
}

/// Where Euler ancestral's per-step noise comes from: called with the model output (the shape
/// and type to draw) exactly once per step, where diffusers calls `randn_tensor`.
pub type NoiseSource<'a, T> = dyn FnMut(&T) -> Result<T> + 'a;

/// A sampler's schedule and update rule, as a diffusers scheduler after `set_timesteps`.
///
/// Step indices are positions in [`Scheduler::timesteps`]; an img2img run calls
/// [`Scheduler::img2img`] first and then [`Scheduler::step`] for each index of the returned
/// range, in order.
pub trait Scheduler<T: SchedulerTensor> {
    /// Every timestep of the schedule, largest first (what the UNet is given).
    fn timesteps(&self) -> &[f64];
    /// The noise level of each timestep plus the final one (float32, as diffusers); empty for
    /// DDIM, which has none.
    fn sigmas(&self) -> &[f32];
    /// The number of inference steps asked for.
    fn num_inference_steps(&self) -> usize;
    /// Model evaluations per step (diffusers' `order`: 2 for Heun, 1 for the others).
    fn order(&self) -> usize {
        1
    }
    /// The standard deviation of pure-noise starting latents (unused by img2img).
    fn init_noise_sigma(&self) -> f64;
    /// Starts a run at `begin_index` (diffusers' `set_begin_index`), forgetting earlier steps.
    fn restart(&mut self, begin_index: usize);
    /// The noised latents to start at `step_index` (diffusers' `add_noise` with the begin index).
    fn add_noise(&self, original: &T, noise: &T, step_index: usize) -> Result<T>;
    /// The UNet input for `sample` at `step_index`.
    fn scale_model_input(&self, sample: &T, step_index: usize) -> Result<T>;
    /// The sample after the step at `step_index`, given the (guided) model output there.
    fn step(
        &mut self,
        model_output: &T,
        step_index: usize,
        sample: &T,
        noise: &mut NoiseSource<'_, T>,
    ) -> Result<T>;

    /// Prepares an img2img run with denoising `strength` (diffusers' `get_timesteps` and
    /// `set_begin_index`) and returns the step indices to run. The range is empty when
    /// `steps × strength < 1` (where diffusers fails); the caller decides what that means.
    fn img2img(&mut self, strength: f64) -> Result<Range<usize>> {
        let begin = img2img_start(self.num_inference_steps(), strength)? * self.order();
        let end = self.timesteps().len();
        let begin = begin.min(end);
        self.restart(begin);
        Ok(begin..end)
    }
}

/// The first of `steps` inference steps that img2img runs at `strength` in `[0, 1]`:
/// `steps - min(int(steps * strength), steps)`.
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::setting(
            "denoise",
            strength,
            "the denoising strength must be between 0 and 1",
        ));
    }
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    Ok(steps - init_timestep)
}

/// Refuses configs the schedulers do not implement and step counts outside
/// `1..=num_train_timesteps`; every constructor calls it first.
pub(super) fn check_config(config: &SchedulerConfig, steps: usize) -> Result<()> {
    config.check_supported()?;
    let train = config.train_timesteps();
    if steps == 0 || steps > train {
        return Err(Error::setting(
            "steps",
            steps,
            format!("the model's scheduler allows 1 to {train} steps"),
        ));
    }
    Ok(())
}

/// [`SchedulerTensor::lin_comb`] without the terms whose coefficient is zero (fewer tensor ops
/// for the engine); keeps the first term if all are zero.
pub(super) fn combine<T: SchedulerTensor>(terms: &[(f64, &T)]) -> Result<T> {
    let kept: Vec<(f64, &T)> = terms.iter().copied().filter(|&(c, _)| c != 0.0).collect();
    if kept.is_empty() {
        T::lin_comb(&terms[..terms.len().min(1)])
    } else {
        T::lin_comb(&kept)
    }
}

/// `original + sigma·noise`: the noised latents of the sigma-parameterised samplers (Euler,
/// Heun, DPM++ SDE).
pub(super) fn add_sigma_noise<T: SchedulerTensor>(
    original: &T,
    noise: &T,
    sigma: f32,
) -> Result<T> {
    combine(&[(1.0, original), (f64::from(sigma), noise)])
}

/// `sample / sqrt(sigma² + 1)`: the UNet input of the sigma-parameterised samplers.
pub(super) fn scale_by_sigma<T: SchedulerTensor>(sample: &T, sigma: f32) -> Result<T> {
    combine(&[(1.0 / f64::from((sigma * sigma + 1.0).sqrt()), sample)])
}

/// `sqrt(a)·original + sqrt(1 − a)·noise` for the alpha product `a` (DDIM, LCM; DPM-Solver
/// and UniPC in their `alpha_t`, `sigma_t` form).
pub(super) fn add_vp_noise<T: SchedulerTensor>(
    original: &T,
    noise: &T,
    signal: f32,
    noise_level: f32,
) -> Result<T> {
    combine(&[
        (f64::from(signal), original),
        (f64::from(noise_level), noise),
    ])
}

/// A copy of `sample` (the UNet input of samplers that do not scale it).
pub(super) fn unscaled<T: SchedulerTensor>(sample: &T) -> Result<T> {
    combine(&[(1.0, sample)])
}

/// The predicted clean sample of DPM-Solver and UniPC (`convert_model_output` with
/// `predict_x0`) at `(alpha, sigma)`.
pub(super) fn data_prediction<T: SchedulerTensor>(
    prediction: PredictionType,
    sample: &T,
    model_output: &T,
    (alpha, sigma): (f32, f32),
) -> Result<T> {
    match prediction {
        PredictionType::Epsilon => combine(&[
            (1.0 / f64::from(alpha), sample),
            (-f64::from(sigma) / f64::from(alpha), model_output),
        ]),
        PredictionType::VPrediction => combine(&[
            (f64::from(alpha), sample),
            (-f64::from(sigma), model_output),
        ]),
        PredictionType::Sample => combine(&[(1.0, model_output)]),
    }
}

/// A step index checked against a schedule of `len` entries.
pub(super) fn check_index(step_index: usize, len: usize) -> Result<usize> {
    if step_index < len {
        Ok(step_index)
    } else {
        Err(Error::setting(
            "step_index",
            step_index,
            format!("the schedule has {len} steps"),
        ))
    }
}

impl SchedulerTensor for Vec<f32> {
    fn lin_comb(terms: &[(f64, &Self)]) -> Result<Self> {
        let Some(&(_, first)) = terms.first() else {
            return Err(Error::ImageOp("lin_comb needs at least one term".into()));
        };
        if terms.iter().any(|(_, x)| x.len() != first.len()) {
            return Err(Error::ImageOp("lin_comb terms differ in length".into()));
        }
        Ok((0..first.len())
            .map(|i| terms.iter().map(|&(c, x)| c * f64::from(x[i])).sum::<f64>() as f32)
            .collect())
    }

    fn clamp(&self, min: f64, max: f64) -> Result<Self> {
        let (min, max) = (min as f32, max as f32);
        Ok(self.iter().map(|&x| x.clamp(min, max)).collect())
    }
}
