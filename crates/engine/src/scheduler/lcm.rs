//! LCM (latent consistency models), as diffusers' `LCMScheduler`: for LCM-LoRAs and LCM
//! fine-tunes, 4–8 steps at CFG 1–2.

use crate::scheduler::config::{PredictionType, SchedulerConfig};
use crate::scheduler::interface::{
    NoiseSource, Scheduler, SchedulerTensor, add_vp_noise, check_config, check_index, combine,
    unscaled,
};
use crate::scheduler::{alphas, timesteps};
use loopback_core::{Error, Result};

/// The data standard deviation of the boundary conditions.
const SIGMA_DATA: f32 = 0.5;

/// LCM: each step predicts the clean sample, applies the consistency boundary condition, and
/// (except at the last step) re-noises it to the next timestep with fresh noise.
#[derive(Debug, Clone)]
pub struct Lcm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    steps: usize,
    prediction: PredictionType,
    timestep_scaling: f32,
}

impl Lcm {
    /// LCM from a model's scheduler config, set to `steps` steps: the timesteps are `steps`
    /// evenly picked (`floor(linspace(0, n, steps, endpoint=False))`) from the distillation
    /// schedule `k·i − 1`, `i = n … 1`, `k = num_train_timesteps / original_inference_steps`
    /// (`n = original_inference_steps`, 50 by default), as `set_timesteps` does without an
    /// img2img strength (what the img2img pipeline calls).
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        check_config(config, steps)?;
        let alphas_cumprod = alphas::alphas_cumprod(config);
        let original = config.original_inference_steps.unwrap_or(50);
        let train = alphas_cumprod.len();
        if original == 0 || original > train || steps > original {
            return Err(Error::setting(
                "steps",
                steps,
                format!("LCM takes at most {original} steps (its distillation schedule)"),
            ));
        }
        let k = train / original;
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        let timesteps = timesteps::np_linspace_open(0.0, original as f64, steps)
            .into_iter()
            .map(|x| origin[(x.floor() as usize).min(original - 1)] as f64)
            .collect();
        Ok(Lcm {
            alphas_cumprod,
            timesteps,
            steps,
            prediction: config.prediction(),
            timestep_scaling: config.timestep_scaling.unwrap_or(10.0) as f32,
        })
    }

    /// The alpha product at the timestep of `step_index`.
    fn alpha_at(&self, step_index: usize) -> Result<f32> {
        let i = check_index(step_index, self.timesteps.len())?;
        Ok(self.alphas_cumprod[self.timesteps[i] as usize])
    }
}

impl<T: SchedulerTensor> Scheduler<T> for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &[]
    }

    fn num_inference_steps(&self) -> usize {
        self.steps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn restart(&mut self, _begin_index: usize) {}

    fn add_noise(&self, original: &T, noise: &T, step_index: usize) -> Result<T> {
        let alpha = self.alpha_at(step_index)?;
        add_vp_noise(original, noise, alpha.sqrt(), (1.0 - alpha).sqrt())
    }

    fn scale_model_input(&self, sample: &T, step_index: usize) -> Result<T> {
        check_index(step_index, self.timesteps.len())?;
        unscaled(sample)
    }

    fn step(
        &mut self,
        model_output: &T,
        step_index: usize,
        sample: &T,
        noise: &mut NoiseSource<'_, T>,
    ) -> Result<T> {
        let alpha_t = self.alpha_at(step_index)?;
        let last = step_index + 1 >= self.timesteps.len();
        let alpha_prev = if last {
            alpha_t
        } else {
            self.alpha_at(step_index + 1)?
        };
        let beta_t = 1.0 - alpha_t;
        // The boundary conditions at the scaled timestep (float32, as diffusers).
        let scaled = self.timesteps[step_index] as f32 * self.timestep_scaling;
        let c_skip = SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA);
        let c_out = scaled / (scaled * scaled + SIGMA_DATA * SIGMA_DATA).sqrt();
        // The predicted clean sample x0 = a·sample + b·model_output.
        let (a, b) = match self.prediction {
            PredictionType::Epsilon => (1.0 / alpha_t.sqrt(), -beta_t.sqrt() / alpha_t.sqrt()),
            PredictionType::VPrediction => (alpha_t.sqrt(), -beta_t.sqrt()),
            PredictionType::Sample => (0.0, 1.0),
        };
        // denoised = c_out·x0 + c_skip·sample
        let (ds, dm) = (
            f64::from(c_out) * f64::from(a) + f64::from(c_skip),
            f64::from(c_out) * f64::from(b),
        );
        if last {
            return combine(&[(ds, sample), (dm, model_output)]);
        }
        let drawn = noise(model_output)?;
        let (keep, fresh) = (alpha_prev.sqrt(), (1.0 - alpha_prev).sqrt());
        combine(&[
            (f64::from(keep) * ds, sample),
            (f64::from(keep) * dm, model_output),
            (f64::from(fresh), &drawn),
        ])
    }
}
