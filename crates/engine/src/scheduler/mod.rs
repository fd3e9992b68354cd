//! The samplers, as schedulers equivalent to diffusers': DDIM (eta 0), Euler ancestral and
//! DPM-Solver++ 2M with Karras sigmas, with img2img strength handling.
//!
//! # Why not candle's schedulers
//! candle-transformers 0.11's schedulers deviate from diffusers: they have no `set_timesteps`,
//! `trailing` spacing yields `n + 1` steps when `n` does not divide 1000, `linspace` truncates
//! instead of rounding, `betas_for_alpha_bar` uses integer division (breaking
//! `squaredcos_cap_v2`), DPM-Solver++ is missing and Euler ancestral bails on `sample`
//! prediction. So the schedulers are written here, after diffusers 0.42's
//! `DDIMScheduler`, `EulerAncestralDiscreteScheduler` and `DPMSolverMultistepScheduler`.
//!
//! # Design
//! Every update is a linear combination of the sample, the model output, earlier outputs and
//! noise. The schedulers compute the scalar coefficients, in float32 where diffusers uses torch
//! float32 scalars and float64 where it uses NumPy, and apply them through
//! [`SchedulerTensor`], which the engine implements for its tensor type (here: `Vec<f32>`,
//! for tests). Parity with diffusers is tested against fixtures from
//! `tools/parity/schedulers.py`.
//!
//! # Use (img2img, as `StableDiffusionImg2ImgPipeline`)
//! ```
//! use crate::scheduler::{build, Scheduler, SchedulerConfig};
//! use loopback_core::settings::Sampler;
//!
//! # fn main() -> loopback_core::Result<()> {
//! let config = SchedulerConfig::from_json(r#"{"beta_schedule": "scaled_linear",
//!     "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}"#)?;
//! let mut scheduler = build::<Vec<f32>>(Sampler::EulerA, &config, 30)?;
//! let run = scheduler.img2img(0.5)?; // the last 15 of the 30 steps
//! let (latents, noise) = (vec![0.1f32; 16], vec![0.5f32; 16]);
//! let mut sample = scheduler.add_noise(&latents, &noise, run.start)?;
//! for i in run {
//!     let input = scheduler.scale_model_input(&sample, i)?;
//!     let t = scheduler.timesteps()[i]; // the UNet's timestep
//!     let output: Vec<f32> = input.iter().map(|x| 0.1 * x + t as f32 * 1e-5).collect();
//!     sample = scheduler.step(&output, i, &sample, &mut |like: &Vec<f32>| Ok(vec![0.0; like.len()]))?;
//! }
//! # Ok(())
//! # }
//! ```

mod alphas;
mod config;
mod ddim;
mod dpm_solver;
mod euler_ancestral;
pub mod noise;
mod sigmas;
mod timesteps;

use std::ops::Range;

pub use config::{
    BetaSchedule, FinalSigmas, PredictionType, SchedulerConfig, SolverType, TimestepSpacing,
};
pub use ddim::Ddim;
pub use dpm_solver::DpmSolverMultistep;
pub use euler_ancestral::EulerAncestral;

use loopback_core::settings::Sampler;
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
    /// Model evaluations per step (diffusers' `order`; 1 for all three).
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

/// Builds `sampler` for a model whose scheduler config is `config`, with `steps` inference
/// steps, as `XScheduler.from_config(pipe.scheduler.config, ...)` then `set_timesteps(steps)`
/// in diffusers: the betas, prediction type, spacing and offset come from the config, missing
/// keys take the sampler class's defaults, and DPM++ 2M Karras sets `algorithm_type =
/// "dpmsolver++"`, `solver_order = 2` and `use_karras_sigmas = true`.
pub fn build<T>(
    sampler: Sampler,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler<T> + Send>>
where
    T: SchedulerTensor + Send + 'static,
{
    Ok(match sampler {
        Sampler::Ddim => Box::new(Ddim::new(config, steps)?),
        Sampler::EulerA => Box::new(EulerAncestral::new(config, steps)?),
        Sampler::DpmPp2mKarras => Box::new(DpmSolverMultistep::<T>::new(config, steps)?),
    })
}

/// Refuses configs the schedulers do not implement and step counts outside
/// `1..=num_train_timesteps`; every constructor calls it first.
fn check_config(config: &SchedulerConfig, steps: usize) -> Result<()> {
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
fn combine<T: SchedulerTensor>(terms: &[(f64, &T)]) -> Result<T> {
    let kept: Vec<(f64, &T)> = terms.iter().copied().filter(|&(c, _)| c != 0.0).collect();
    if kept.is_empty() {
        T::lin_comb(&terms[..terms.len().min(1)])
    } else {
        T::lin_comb(&kept)
    }
}

/// A step index checked against a schedule of `len` entries.
fn check_index(step_index: usize, len: usize) -> Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn img2img_start_follows_diffusers() {
        assert_eq!(img2img_start(30, 0.5).ok(), Some(15));
        assert_eq!(img2img_start(10, 0.35).ok(), Some(7));
        assert_eq!(img2img_start(10, 0.7).ok(), Some(3)); // int(7.000000000000001) = 7
        assert_eq!(img2img_start(4, 0.2).ok(), Some(4));
        assert_eq!(img2img_start(4, 1.0).ok(), Some(0));
        assert!(img2img_start(4, 1.5).is_err());
        assert!(img2img_start(4, f64::NAN).is_err());
    }

    #[test]
    fn lin_comb_checks_its_terms() {
        let a = vec![1.0f32, 2.0];
        let b = vec![3.0f32, 4.0];
        assert_eq!(
            Vec::lin_comb(&[(2.0, &a), (-1.0, &b)]).ok(),
            Some(vec![-1.0, 0.0])
        );
        assert!(Vec::<f32>::lin_comb(&[]).is_err());
        assert!(Vec::lin_comb(&[(1.0, &a), (1.0, &vec![1.0f32])]).is_err());
        assert_eq!(b.clamp(0.0, 3.5).ok(), Some(vec![3.0, 3.5]));
    }
}
