//! Euler and Euler ancestral, as diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler`, with A1111's schedule types (diffusers'
//! `use_karras_sigmas`, `use_exponential_sigmas`, and `trailing` spacing for SGM Uniform).

use crate::scheduler::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::scheduler::interface::{
    NoiseSource, Scheduler, SchedulerTensor, add_sigma_noise, check_config, check_index, combine,
    scale_by_sigma,
};
use crate::scheduler::{alphas, sigmas, timesteps};
use loopback_core::settings::ScheduleType;
use loopback_core::{Error, Result};

/// Euler: a step along the derivative `(x − x0) / sigma` to the next sigma; ancestral: an
/// Euler step down to `sigma_down`, then fresh noise of `sigma_up`.
#[derive(Debug, Clone)]
pub struct Euler {
    ancestral: bool,
    timesteps: Vec<f64>,
    /// One per timestep plus a final 0 (float32, as diffusers).
    sigmas: Vec<f32>,
    steps: usize,
    prediction: PredictionType,
    init_noise_sigma: f32,
}

impl Euler {
    /// Euler (or, `ancestral`, Euler a) from a model's scheduler config, with its defaults for
    /// missing keys (`linspace` spacing), set to `steps` steps on `schedule`
    /// ([`euler_schedule`]).
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        schedule: ScheduleType,
        ancestral: bool,
    ) -> Result<Self> {
        let (timesteps, sigmas, spacing) = euler_schedule(config, steps, schedule)?;
        let prediction = config.prediction();
        let max = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        };
        Ok(Euler {
            ancestral,
            timesteps,
            sigmas,
            steps,
            prediction,
            init_noise_sigma,
        })
    }

    /// The sigma at `step_index` and the one after it.
    fn sigma_pair(&self, step_index: usize) -> Result<(f32, f32)> {
        let i = check_index(step_index, self.timesteps.len())?;
        Ok((self.sigmas[i], self.sigmas[i + 1]))
    }
}

impl<T: SchedulerTensor> Scheduler<T> for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn num_inference_steps(&self) -> usize {
        self.steps
    }

    fn init_noise_sigma(&self) -> f64 {
        f64::from(self.init_noise_sigma)
    }

    fn restart(&mut self, _begin_index: usize) {}

    fn add_noise(&self, original: &T, noise: &T, step_index: usize) -> Result<T> {
        let (sigma, _) = self.sigma_pair(step_index)?;
        add_sigma_noise(original, noise, sigma)
    }

    fn scale_model_input(&self, sample: &T, step_index: usize) -> Result<T> {
        let (sigma, _) = self.sigma_pair(step_index)?;
        scale_by_sigma(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &T,
        step_index: usize,
        sample: &T,
        noise: &mut NoiseSource<'_, T>,
    ) -> Result<T> {
        let (sigma, sigma_to) = self.sigma_pair(step_index)?;
        // Predicted clean sample x0 = a * sample + b * model_output.
        let (a, b) = x0_coefficients(self.prediction, sigma);
        if !self.ancestral {
            // prev = sample + (sample - x0) / sigma * (sigma_to - sigma)
            let slope = f64::from(sigma_to - sigma) / f64::from(sigma);
            return combine(&[
                (1.0 + slope * (1.0 - a), sample),
                (-slope * b, model_output),
            ]);
        }
        let sigma_up =
            (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        // prev = sample + (sample - x0) / sigma * (sigma_down - sigma) + noise * sigma_up
        let slope = f64::from(sigma_down - sigma) / f64::from(sigma);
        let drawn = noise(model_output)?;
        combine(&[
            (1.0 + slope * (1.0 - a), sample),
            (-slope * b, model_output),
            (f64::from(sigma_up), &drawn),
        ])
    }
}

/// Euler's (and Heun's) schedule from a model's scheduler config: the timesteps, the sigmas
/// (one per timestep plus a final 0, float32) and the spacing used. `sample` prediction is
/// refused, as diffusers does.
///
/// Karras and exponential sigmas run between the first and the last of the spaced sigmas (not
/// the whole training range, as DPM-Solver's do), and their timesteps are the fractional
/// training timesteps of those sigmas, in float32, as in diffusers.
pub(crate) fn euler_schedule(
    config: &SchedulerConfig,
    steps: usize,
    schedule: ScheduleType,
) -> Result<(Vec<f64>, Vec<f32>, TimestepSpacing)> {
    check_config(config, steps)?;
    let prediction = config.prediction();
    if prediction == PredictionType::Sample {
        return Err(Error::Metadata(
            "scheduler config: Euler and Heun do not support prediction_type \"sample\"".into(),
        ));
    }
    let alphas_cumprod = alphas::alphas_cumprod(config);
    let spacing = match schedule {
        ScheduleType::SgmUniform => TimestepSpacing::Trailing,
        _ => config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
    };
    let mut timesteps = timesteps::spaced(
        spacing,
        alphas_cumprod.len(),
        steps,
        config.steps_offset.unwrap_or(0),
        false,
    );
    let train_sigmas = alphas::sigmas_f32(&alphas_cumprod);
    let spaced: Vec<f64> = timesteps
        .iter()
        .map(|&t| sigmas::interp(t, &train_sigmas))
        .collect();
    let converted = match (spaced.first(), spaced.last(), schedule) {
        (Some(&max), Some(&min), ScheduleType::Karras) => Some(sigmas::karras(min, max, steps)),
        (Some(&max), Some(&min), ScheduleType::Exponential) => {
            Some(sigmas::exponential(min, max, steps))
        }
        _ => None,
    };
    let mut sigmas: Vec<f32> = match converted {
        Some(converted) => {
            let log_sigmas: Vec<f32> = train_sigmas
                .iter()
                .map(|&s| f64::from(s).ln() as f32)
                .collect();
            timesteps = converted
                .iter()
                .map(|&s| f64::from(sigmas::sigma_to_t(s, &log_sigmas) as f32))
                .collect();
            converted.iter().map(|&s| s as f32).collect()
        }
        None => spaced.iter().map(|&s| s as f32).collect(),
    };
    sigmas.push(0.0);
    Ok((timesteps, sigmas, spacing))
}

/// The predicted clean sample `x0 = a·sample + b·model_output` at noise level `sigma`
/// (epsilon or v-prediction; diffusers' formulas).
pub(crate) fn x0_coefficients(prediction: PredictionType, sigma: f32) -> (f64, f64) {
    match prediction {
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            (1.0 / f64::from(s2), f64::from(-sigma / s2.sqrt()))
        }
        _ => (1.0, -f64::from(sigma)),
    }
}
