//! Heun, as diffusers' `HeunDiscreteScheduler`: Euler's schedule, two UNet calls per step.

use crate::scheduler::config::{PredictionType, SchedulerConfig};
use crate::scheduler::euler::{euler_schedule, x0_coefficients};
use crate::scheduler::interface::{
    NoiseSource, Scheduler, SchedulerTensor, add_sigma_noise, check_index, combine, scale_by_sigma,
    unscaled,
};
use loopback_core::Result;
use loopback_core::settings::ScheduleType;

/// Heun's method: an Euler step to the next sigma, then a correction with the derivative
/// there (the average of both derivatives), except on the step to sigma 0, which stays Euler.
///
/// As in diffusers, the schedule holds every timestep but the first twice (`t0, t1, t1, t2,
/// t2, …`: each step's two UNet calls) and the sigmas likewise (`s0, s1, s1, …, 0`), and each
/// index is one UNet call: the first call of a step at sigma `s_k`, the correction call at
/// `s_k+1` (its input scaled by that sigma).
#[derive(Debug, Clone)]
pub struct Heun<T> {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    steps: usize,
    prediction: PredictionType,
    /// After a first-order call: its derivative, the sample it started from and its `dt`.
    pending: Option<(T, T, f32)>,
}

impl<T> Heun<T> {
    /// Heun from a model's scheduler config, set to `steps` steps on `schedule` (Euler's
    /// schedule, [`euler_schedule`]).
    pub fn new(config: &SchedulerConfig, steps: usize, schedule: ScheduleType) -> Result<Self> {
        let (euler_timesteps, euler_sigmas, _) = euler_schedule(config, steps, schedule)?;
        let mut timesteps = Vec::with_capacity(2 * steps);
        for (i, &t) in euler_timesteps.iter().enumerate() {
            timesteps.push(t);
            if i > 0 {
                timesteps.push(t);
            }
        }
        let n = euler_sigmas.len();
        let mut sigmas = Vec::with_capacity(2 * n);
        for (i, &s) in euler_sigmas.iter().enumerate() {
            sigmas.push(s);
            if i > 0 && i + 1 < n {
                sigmas.push(s);
            }
        }
        Ok(Heun {
            timesteps,
            sigmas,
            steps,
            prediction: config.prediction(),
            pending: None,
        })
    }
}

impl<T: SchedulerTensor> Scheduler<T> for Heun<T> {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn num_inference_steps(&self) -> usize {
        self.steps
    }

    fn order(&self) -> usize {
        2
    }

    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
        f64::from((max * max + 1.0).sqrt())
    }

    fn restart(&mut self, _begin_index: usize) {
        self.pending = None;
    }

    fn add_noise(&self, original: &T, noise: &T, step_index: usize) -> Result<T> {
        let i = check_index(step_index, self.timesteps.len())?;
        add_sigma_noise(original, noise, self.sigmas[i])
    }

    fn scale_model_input(&self, sample: &T, step_index: usize) -> Result<T> {
        let i = check_index(step_index, self.timesteps.len())?;
        scale_by_sigma(sample, self.sigmas[i])
    }

    fn step(
        &mut self,
        model_output: &T,
        step_index: usize,
        sample: &T,
        _noise: &mut NoiseSource<'_, T>,
    ) -> Result<T> {
        let i = check_index(step_index, self.timesteps.len())?;
        match self.pending.take() {
            None => {
                // First order: d = (x − x0) / sigma; prev = x + d·dt.
                let (sigma, sigma_next) = (self.sigmas[i], self.sigmas[i + 1]);
                let (a, b) = x0_coefficients(self.prediction, sigma);
                let inv = 1.0 / f64::from(sigma);
                let derivative = combine(&[((1.0 - a) * inv, sample), (-b * inv, model_output)])?;
                let dt = sigma_next - sigma;
                let next = combine(&[(1.0, sample), (f64::from(dt), &derivative)])?;
                if sigma_next > 0.0 {
                    self.pending = Some((derivative, unscaled(sample)?, dt));
                }
                Ok(next)
            }
            Some((first, start, dt)) => {
                // Correction: the derivative at sigma_next, averaged with the first one.
                let sigma_next = self.sigmas[i];
                let (a, b) = x0_coefficients(self.prediction, sigma_next);
                let inv = 1.0 / f64::from(sigma_next);
                let half = 0.5 * f64::from(dt);
                combine(&[
                    (1.0, &start),
                    (half, &first),
                    (half * (1.0 - a) * inv, sample),
                    (-half * b * inv, model_output),
                ])
            }
        }
    }
}
