//! DPM-Solver++ 2M, as diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`, on A1111's schedule types:
//! `use_karras_sigmas=True`, `use_exponential_sigmas=True`, the config's spacing, or
//! `trailing` spacing (SGM Uniform).

use crate::scheduler::config::TimestepSpacing;
use crate::scheduler::config::{
    BetaSchedule, FinalSigmas, PredictionType, SchedulerConfig, SolverType,
};
use crate::scheduler::interface::{
    NoiseSource, Scheduler, SchedulerTensor, add_vp_noise, check_config, check_index, combine,
    data_prediction, unscaled,
};
use crate::scheduler::{alphas, sigmas, timesteps};
use loopback_core::Result;
use loopback_core::settings::ScheduleType;

/// DPM-Solver++ (2M): a multistep solver in log-SNR time on the predicted clean sample, using
/// the previous step's prediction for second order.
#[derive(Debug, Clone)]
pub struct DpmSolverMultistep<T> {
    timesteps: Vec<f64>,
    /// One per timestep plus the final sigma (float32, as diffusers).
    sigmas: Vec<f32>,
    steps: usize,
    prediction: PredictionType,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    /// `algorithm_type="sde-dpmsolver++"` (DPM++ 2M SDE): fresh noise every step.
    sde: bool,
    /// The previous step's predicted clean sample.
    previous: Option<T>,
}

/// `(alpha_t, sigma_t)` of a Karras sigma, `alpha_t = 1 / sqrt(sigma² + 1)`, in float32.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// The half log-SNR `lambda = ln(alpha_t) - ln(sigma_t)` (infinite at sigma 0).
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl<T> DpmSolverMultistep<T> {
    /// DPM++ 2M from a model's scheduler config, set to `steps` steps on `schedule`
    /// ([`dpm_schedule`]). `final_sigmas_type`, `lower_order_final`, `euler_at_final`,
    /// `solver_type` are read with diffusers' defaults.
    /// With `sde`, the SDE variant (`algorithm_type="sde-dpmsolver++"`, DPM++ 2M SDE), which
    /// draws one noise per step (the last step's is multiplied by 0, as in diffusers).
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        schedule: ScheduleType,
        sde: bool,
    ) -> Result<Self> {
        let (timesteps, sigmas) = dpm_schedule(config, steps, schedule)?;
        let final_sigmas = config.final_sigmas_type.unwrap_or(FinalSigmas::Zero);
        Ok(DpmSolverMultistep {
            timesteps,
            sigmas,
            steps,
            prediction: config.prediction(),
            solver_type: config.solver_type.unwrap_or(SolverType::Midpoint),
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_zero: final_sigmas == FinalSigmas::Zero,
            sde,
            previous: None,
        })
    }

    /// Whether the step at `index` must be first order although a previous output exists.
    fn first_order_final(&self, index: usize) -> bool {
        let len = self.timesteps.len();
        index + 1 == len
            && (self.euler_at_final || (self.lower_order_final && len < 15) || self.final_zero)
    }
}

impl<T: SchedulerTensor> Scheduler<T> for DpmSolverMultistep<T> {
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
        1.0
    }

    fn restart(&mut self, _begin_index: usize) {
        self.previous = None;
    }

    fn add_noise(&self, original: &T, noise: &T, step_index: usize) -> Result<T> {
        let i = check_index(step_index, self.timesteps.len())?;
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        add_vp_noise(original, noise, alpha, sigma)
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
        let i = check_index(step_index, self.timesteps.len())?;
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        // The predicted clean sample (`convert_model_output`).
        let x0 = data_prediction(self.prediction, sample, model_output, (alpha_s0, sigma_s0))?;
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let previous = match self.previous.take() {
            Some(previous) if i > 0 && !self.first_order_final(i) => Some(previous),
            _ => None,
        };
        // The second-order term's 1 / r0, r0 = (lambda_s0 - lambda_s1) / h.
        let inv_r0 = || {
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            1.0 / ((lambda_s0 - lambda(alpha_s1, sigma_s1)) / h)
        };
        let next = if self.sde {
            // x_t = (sigma_t / sigma_s) e^-h x + alpha_t (1 - e^-2h) (D0 + D1 / 2)
            //       + sigma_t sqrt(1 - e^-2h) z, with D1 = (m0 - m1) / r0 at second order.
            let drawn = noise(model_output)?;
            let to_sample = f64::from(sigma_t / sigma_s0 * (-h).exp());
            let a = alpha_t * (1.0 - (-2.0 * h).exp());
            let z = f64::from(sigma_t * (1.0 - (-2.0 * h).exp()).sqrt());
            match previous {
                None => combine(&[(to_sample, sample), (f64::from(a), &x0), (z, &drawn)])?,
                Some(m1) => {
                    let d1_coef = match self.solver_type {
                        SolverType::Midpoint => 0.5 * a,
                        SolverType::Heun => alpha_t * ((1.0 - (-2.0 * h).exp()) / (-2.0 * h) + 1.0),
                    };
                    let d1 = f64::from(d1_coef) * f64::from(inv_r0());
                    combine(&[
                        (to_sample, sample),
                        (f64::from(a) + d1, &x0),
                        (-d1, &m1),
                        (z, &drawn),
                    ])?
                }
            }
        } else {
            let to_sample = f64::from(sigma_t / sigma_s0);
            let em1 = alpha_t * ((-h).exp() - 1.0);
            match previous {
                // First order: x_t = (sigma_t / sigma_s) x - alpha_t (e^-h - 1) x0.
                None => combine(&[(to_sample, sample), (-f64::from(em1), &x0)])?,
                // Second order, with D1 = (m0 - m1) / r0.
                Some(m1) => {
                    let d1_coef = match self.solver_type {
                        SolverType::Midpoint => -(0.5 * em1),
                        SolverType::Heun => alpha_t * (((-h).exp() - 1.0) / h + 1.0),
                    };
                    let d1 = f64::from(d1_coef) * f64::from(inv_r0());
                    combine(&[(to_sample, sample), (-f64::from(em1) + d1, &x0), (-d1, &m1)])?
                }
            }
        };
        self.previous = Some(x0);
        Ok(next)
    }
}

/// DPM-Solver's (and UniPC's) schedule from a model's scheduler config: the timesteps and the
/// sigmas (one per timestep plus the final one, float32).
///
/// Karras and exponential sigmas span the whole training range (`sigma_min`, `sigma_max` from
/// the config when it has them); their timesteps are the training timesteps of those sigmas,
/// rounded (Karras) or truncated (exponential: diffusers casts without rounding). Otherwise the
/// timesteps follow the config's spacing (SGM Uniform: `trailing`) and the sigmas are
/// interpolated. The final sigma is 0, or the smallest training sigma with
/// `final_sigmas_type = "sigma_min"`.
pub(crate) fn dpm_schedule(
    config: &SchedulerConfig,
    steps: usize,
    schedule: ScheduleType,
) -> Result<(Vec<f64>, Vec<f32>)> {
    check_config(config, steps)?;
    let alphas_cumprod = alphas::alphas_cumprod(config);
    let train_sigmas = alphas::sigmas_f32(&alphas_cumprod);
    let log_sigmas: Vec<f32> = train_sigmas
        .iter()
        .map(|&s| f64::from(s).ln() as f32)
        .collect();
    let (first, last) = match (train_sigmas.first(), train_sigmas.last()) {
        (Some(&first), Some(&last)) => (first, last),
        _ => (0.0, 0.0), // unreachable: check_config asks for 2+ training timesteps
    };
    let sigma_min = config.sigma_min.unwrap_or(f64::from(first));
    let sigma_max = config.sigma_max.unwrap_or(f64::from(last));
    let to_timesteps = |sigmas: &[f64], round: bool| -> Vec<f64> {
        sigmas
            .iter()
            .map(|&sigma| {
                let t = sigmas::sigma_to_t(sigma, &log_sigmas);
                // `.round()` where diffusers rounds, then the cast to int64 truncates.
                (if round { t.round_ties_even() } else { t }).trunc()
            })
            .collect()
    };
    let (timesteps, inference_sigmas) = match schedule {
        ScheduleType::Karras => {
            let karras = sigmas::karras(sigma_min, sigma_max, steps);
            // Rounded unless cosine, where torch's cast truncates.
            let round = config.beta_schedule != Some(BetaSchedule::SquaredCosCapV2);
            (to_timesteps(&karras, round), karras)
        }
        ScheduleType::Exponential => {
            let exponential = sigmas::exponential(sigma_min, sigma_max, steps);
            (to_timesteps(&exponential, false), exponential)
        }
        _ => {
            let spacing = match schedule {
                ScheduleType::SgmUniform => TimestepSpacing::Trailing,
                _ => config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            };
            let timesteps = timesteps::dpm_spaced(
                spacing,
                alphas_cumprod.len(),
                steps,
                config.steps_offset.unwrap_or(0),
            );
            let sigmas = timesteps
                .iter()
                .map(|&t| sigmas::interp(t, &train_sigmas))
                .collect();
            (timesteps, sigmas)
        }
    };
    let final_sigmas = config.final_sigmas_type.unwrap_or(FinalSigmas::Zero);
    let mut sigmas: Vec<f32> = inference_sigmas.iter().map(|&s| s as f32).collect();
    sigmas.push(match final_sigmas {
        FinalSigmas::Zero => 0.0,
        FinalSigmas::SigmaMin => first,
    });
    Ok((timesteps, sigmas))
}
