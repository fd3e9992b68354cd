//! DDIM with eta 0 (deterministic), as diffusers' `DDIMScheduler`.

use crate::scheduler::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::scheduler::interface::{
    NoiseSource, Scheduler, SchedulerTensor, add_vp_noise, check_config, check_index, combine,
    unscaled,
};
use crate::scheduler::{alphas, timesteps};
use loopback_core::{Error, Result};

/// DDIM (eta 0): each step predicts the clean sample and re-noises it to the previous
/// timestep's level along the predicted noise.
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    /// The alpha product after the last step: 1 with `set_alpha_to_one`, else `alphas_cumprod[0]`.
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    steps: usize,
    /// `num_train_timesteps / steps`: the distance to the previous timestep, whatever the spacing.
    stride: usize,
    prediction: PredictionType,
    clip: Option<f32>,
}

impl Ddim {
    /// DDIM from a model's scheduler config, with DDIM's defaults for missing keys (`leading`
    /// spacing, `set_alpha_to_one` and `clip_sample` true), set to `steps` steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        check_config(config, steps)?;
        let alphas_cumprod = alphas::alphas_cumprod(config);
        let train = alphas_cumprod.len();
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let timesteps = timesteps::spaced(
            spacing,
            train,
            steps,
            config.steps_offset.unwrap_or(0),
            true,
        );
        // diffusers fails (index error) or misbehaves (-1 indexes the last alpha) on these.
        if let Some(&t) = timesteps
            .iter()
            .find(|&&t| !(0.0..train as f64).contains(&t))
        {
            return Err(Error::setting(
                "steps",
                steps,
                format!(
                    "DDIM with this model's {spacing:?} spacing gets timestep {t}, outside the \
                     training timesteps 0 to {}; choose another number of steps",
                    train - 1
                ),
            ));
        }
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let clip = config
            .clip_sample
            .unwrap_or(true)
            .then(|| config.clip_sample_range.unwrap_or(1.0) as f32);
        Ok(Ddim {
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            steps,
            stride: train / steps,
            prediction: config.prediction(),
            clip,
        })
    }

    /// The alpha product at the timestep of `step_index`.
    fn alpha_at(&self, step_index: usize) -> Result<f32> {
        let i = check_index(step_index, self.timesteps.len())?;
        // The constructor checked that every timestep indexes `alphas_cumprod`.
        Ok(self.alphas_cumprod[self.timesteps[i] as usize])
    }
}

impl<T: SchedulerTensor> Scheduler<T> for Ddim {
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
        _noise: &mut NoiseSource<'_, T>,
    ) -> Result<T> {
        let alpha = self.alpha_at(step_index)?;
        let t = self.timesteps[step_index] as usize;
        let alpha_prev = match t.checked_sub(self.stride) {
            Some(t) => self.alphas_cumprod[t],
            None => self.final_alpha_cumprod,
        };
        let (sqrt_alpha, sqrt_beta) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        // Predicted clean sample x0 and noise eps, each `a * sample + b * model_output`.
        let (x0, eps): ((f32, f32), (f32, f32)) = match self.prediction {
            PredictionType::Epsilon => ((1.0 / sqrt_alpha, -sqrt_beta / sqrt_alpha), (0.0, 1.0)),
            PredictionType::Sample => ((0.0, 1.0), (1.0 / sqrt_beta, -sqrt_alpha / sqrt_beta)),
            PredictionType::VPrediction => ((sqrt_alpha, -sqrt_beta), (sqrt_beta, sqrt_alpha)),
        };
        // prev = sqrt(alpha_prev) * x0 + sqrt(1 - alpha_prev) * eps (eta 0: no noise term).
        let to_x0 = f64::from(alpha_prev.sqrt());
        let to_eps = f64::from((1.0 - alpha_prev - 0.0f32).sqrt());
        let (eps_s, eps_m) = (f64::from(eps.0), f64::from(eps.1));
        match self.clip {
            Some(range) => {
                let x0 = combine(&[(f64::from(x0.0), sample), (f64::from(x0.1), model_output)])?
                    .clamp(-f64::from(range), f64::from(range))?;
                combine(&[
                    (to_x0, &x0),
                    (to_eps * eps_s, sample),
                    (to_eps * eps_m, model_output),
                ])
            }
            None => combine(&[
                (to_x0 * f64::from(x0.0) + to_eps * eps_s, sample),
                (to_x0 * f64::from(x0.1) + to_eps * eps_m, model_output),
            ]),
        }
    }
}
