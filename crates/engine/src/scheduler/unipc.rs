//! UniPC, as diffusers' `UniPCMultistepScheduler` with its defaults: the `bh2` variant,
//! predicting the clean sample, order 2 (UniP predictor, UniC corrector), on DPM-Solver's
//! schedule.

use crate::scheduler::config::{PredictionType, SchedulerConfig};
use crate::scheduler::dpm_solver::{alpha_sigma, dpm_schedule, lambda};
use crate::scheduler::interface::{
    NoiseSource, Scheduler, SchedulerTensor, add_vp_noise, check_index, combine, data_prediction,
    unscaled,
};
use loopback_core::Result;
use loopback_core::settings::ScheduleType;

/// The solver's order (diffusers' `solver_order` default).
const ORDER: usize = 2;

/// UniPC: each step first corrects the current sample with the new model output (UniC, from
/// the second step run), then predicts the next one (UniP), second order once two outputs
/// exist, first order on the last step.
#[derive(Debug, Clone)]
pub struct UniPc<T> {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    steps: usize,
    prediction: PredictionType,
    /// The predicted clean samples of the last steps, oldest first (at most [`ORDER`]).
    outputs: Vec<(T, usize)>,
    /// The sample the last predictor started from.
    last_sample: Option<T>,
    /// The last predictor's order.
    this_order: usize,
}

impl<T> UniPc<T> {
    /// UniPC from a model's scheduler config, set to `steps` steps on `schedule` (DPM-Solver's
    /// schedule, [`dpm_schedule`]).
    pub fn new(config: &SchedulerConfig, steps: usize, schedule: ScheduleType) -> Result<Self> {
        let (timesteps, sigmas) = dpm_schedule(config, steps, schedule)?;
        Ok(UniPc {
            timesteps,
            sigmas,
            steps,
            prediction: config.prediction(),
            outputs: Vec::new(),
            last_sample: None,
            this_order: 1,
        })
    }

    /// `lambda` at sigma index `i`.
    fn lambda_at(&self, i: usize) -> f32 {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        lambda(alpha, sigma)
    }
}

/// `h·φ` terms of the bh2 variant for a step of log-SNR size `h`: `(expm1(−h), b1, b2)` with
/// `b1 = hφ₂/B(h)` and `b2 = 2·hφ₃/B(h)`, `B(h) = expm1(−h)` (diffusers' `b` vector).
fn phi_terms(h: f32) -> (f32, f32, f32) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let h_phi_2 = h_phi_1 / hh - 1.0;
    let h_phi_3 = h_phi_2 / hh - 0.5;
    (h_phi_1, h_phi_2 / h_phi_1, h_phi_3 * 2.0 / h_phi_1)
}

/// Solves `[[1, 1], [rk, 1]]·ρ = [b1, b2]` with partial pivoting (as LAPACK's `gesv`).
fn solve2(rk: f32, b1: f32, b2: f32) -> (f32, f32) {
    if rk.abs() > 1.0 {
        // Rows swapped: [[rk, 1], [1, 1]]·ρ = [b2, b1].
        let l = 1.0 / rk;
        let u22 = 1.0 - l;
        let y2 = b1 - l * b2;
        let rho2 = y2 / u22;
        ((b2 - rho2) / rk, rho2)
    } else {
        let u22 = 1.0 - rk;
        let y2 = b2 - rk * b1;
        let rho2 = y2 / u22;
        (b1 - rho2, rho2)
    }
}

impl<T: SchedulerTensor> Scheduler<T> for UniPc<T> {
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
        self.outputs.clear();
        self.last_sample = None;
        self.this_order = 1;
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
        _noise: &mut NoiseSource<'_, T>,
    ) -> Result<T> {
        let i = check_index(step_index, self.timesteps.len())?;
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        // The predicted clean sample m.
        let m = data_prediction(self.prediction, sample, model_output, (alpha_s, sigma_s))?;
        // UniC: correct the sample the model just saw, from the last predictor's start.
        let corrected = match (self.last_sample.take(), self.outputs.last()) {
            (Some(last), Some((m0, j))) if i > 0 && *j + 1 == i => {
                let lambda_s0 = self.lambda_at(i - 1);
                let h = self.lambda_at(i) - lambda_s0;
                let (h_phi_1, b1, b2) = phi_terms(h);
                let (alpha_t, sigma_t) = (alpha_s, sigma_s);
                let (_, sigma_s0) = alpha_sigma(self.sigmas[i - 1]);
                let base = f64::from(alpha_t * h_phi_1);
                let to_sample = f64::from(sigma_t / sigma_s0);
                // x = (σ/σ₀)·x_last − base·m0 − base·(ρ1·D1 + ρt·(m − m0)),
                // D1 = (m1 − m0)/rk at order 2; ρt = 0.5 at order 1.
                let corrected = match (self.this_order, self.outputs.len()) {
                    (2, 2) => {
                        let (m1, j1) = &self.outputs[0];
                        let rk = (self.lambda_at(*j1) - lambda_s0) / h;
                        let (rho1, rho_t) = solve2(rk, b1, b2);
                        let c1 = base * f64::from(rho1) / f64::from(rk);
                        let ct = base * f64::from(rho_t);
                        combine(&[
                            (to_sample, &last),
                            (-base + c1 + ct, m0),
                            (-c1, m1),
                            (-ct, &m),
                        ])?
                    }
                    _ => {
                        let ct = base * 0.5;
                        combine(&[(to_sample, &last), (-base + ct, m0), (-ct, &m)])?
                    }
                };
                Some(corrected)
            }
            _ => None,
        };
        let sample = corrected.as_ref().unwrap_or(sample);
        // The new output joins the history.
        if self.outputs.len() == ORDER {
            self.outputs.remove(0);
        }
        let order = ORDER
            .min(self.timesteps.len() - i)
            .min(self.outputs.len() + 1);
        self.outputs.push((m, i));
        self.this_order = order;
        self.last_sample = Some(combine(&[(1.0, sample)])?);
        // UniP: predict the next sample.
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let lambda_s0 = self.lambda_at(i);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let h_phi_1 = (-h).exp_m1();
        let to_sample = f64::from(sigma_t / sigma_s);
        let base = f64::from(alpha_t * h_phi_1);
        let m0 = &self.outputs[self.outputs.len() - 1].0;
        if order == 2 && self.outputs.len() == 2 {
            // D1 = (m1 − m0)/rk, rk = (λ_s1 − λ_s0)/h, weighted 0.5.
            let (m1, j1) = &self.outputs[0];
            let rk = (self.lambda_at(*j1) - lambda_s0) / h;
            let c = base * 0.5 / f64::from(rk);
            combine(&[(to_sample, sample), (-base + c, m0), (-c, m1)])
        } else {
            combine(&[(to_sample, sample), (-base, m0)])
        }
    }
}
