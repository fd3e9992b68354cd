//! DPM++ SDE, as k-diffusion's `sample_dpmpp_sde` (A1111) and diffusers'
//! `DPMSolverSDEScheduler`: a second-order single-step solver with fresh noise, two UNet calls
//! per step (the second at the midpoint in log sigma), Euler's schedule.
//!
//! **Its noise is not bit-identical to A1111's or diffusers'.** Both draw it from a torchsde
//! Brownian tree (seeded apart from the image noise), which this engine does not reproduce.
//! The noise here is a Brownian motion in sigma all the same: per step, the increment from
//! sigma to the midpoint and the one from the midpoint to the next sigma are independent
//! normals from the run's generator, and the second call's noise is their sum, normalised —
//! so each noise is standard normal and the two of a step are correlated as a Brownian tree's
//! are (`sqrt(|σ − σ_mid| / |σ − σ_next|)`). Results match in distribution, not pixel for
//! pixel (`docs/samplers.md`).

use crate::scheduler::config::{PredictionType, SchedulerConfig};
use crate::scheduler::euler::{euler_schedule, x0_coefficients};
use crate::scheduler::interface::{
    NoiseSource, Scheduler, SchedulerTensor, add_sigma_noise, check_index, combine, scale_by_sigma,
    unscaled,
};
use crate::scheduler::{alphas, sigmas};
use loopback_core::Result;
use loopback_core::settings::ScheduleType;

/// What the first call of a step leaves for the second.
#[derive(Debug, Clone)]
struct Midpoint<T> {
    /// The sample the step started from.
    start: T,
    /// The normalised noise of the first half (sigma → midpoint).
    first_noise: T,
    /// The step's sigma, midpoint sigma and next sigma.
    sigma: f32,
    mid: f32,
    next: f32,
}

/// DPM++ SDE (eta 1, s_noise 1, midpoint ratio 1/2).
#[derive(Debug, Clone)]
pub struct DpmSde<T> {
    /// `t0, mid0, t1, mid1, …, t_{n−1}`: each step's two calls, the last step's one.
    timesteps: Vec<f64>,
    /// `s0, s1, s1, …, s_{n−1}, s_{n−1}, 0`, as diffusers lays them out.
    sigmas: Vec<f32>,
    /// The midpoint sigma of each step.
    mids: Vec<f32>,
    steps: usize,
    prediction: PredictionType,
    pending: Option<Midpoint<T>>,
}

impl<T> DpmSde<T> {
    /// DPM++ SDE from a model's scheduler config, set to `steps` steps on `schedule`
    /// (Euler's schedule, [`euler_schedule`]); the midpoint of each step is the geometric mean
    /// of its sigmas (the middle in `t = −ln σ`), its timestep the training timestep of that
    /// sigma.
    pub fn new(config: &SchedulerConfig, steps: usize, schedule: ScheduleType) -> Result<Self> {
        let (base_timesteps, base_sigmas, _) = euler_schedule(config, steps, schedule)?;
        let train_sigmas = alphas::sigmas_f32(&alphas::alphas_cumprod(config));
        let log_sigmas: Vec<f32> = train_sigmas
            .iter()
            .map(|&s| f64::from(s).ln() as f32)
            .collect();
        let mids: Vec<f32> = base_sigmas
            .windows(2)
            .map(|w| (f64::from(w[0]) * f64::from(w[1])).sqrt() as f32)
            .collect();
        let mut timesteps = Vec::with_capacity(2 * steps);
        for (i, &t) in base_timesteps.iter().enumerate() {
            timesteps.push(t);
            if i + 1 < base_timesteps.len() {
                let mid = sigmas::sigma_to_t(f64::from(mids[i]), &log_sigmas);
                timesteps.push(f64::from(mid as f32));
            }
        }
        let n = base_sigmas.len();
        let mut sigmas = Vec::with_capacity(2 * n);
        for (i, &s) in base_sigmas.iter().enumerate() {
            sigmas.push(s);
            if i > 0 && i + 1 < n {
                sigmas.push(s);
            }
        }
        Ok(DpmSde {
            timesteps,
            sigmas,
            mids,
            steps,
            prediction: config.prediction(),
            pending: None,
        })
    }
}

/// `t = −ln σ`.
fn t_of(sigma: f32) -> f64 {
    -f64::from(sigma).ln()
}

/// The ancestral split of a move from `from` to `to` (eta 1): `(sigma_down, sigma_up)`.
fn ancestral(from: f32, to: f32) -> (f32, f32) {
    let up = to.min((to * to * (from * from - to * to) / (from * from)).sqrt());
    ((to * to - up * up).sqrt(), up)
}

/// One DPM-Solver++ move from `sigma` to `to` with the clean-sample estimate `x0 = a·x_pred +
/// b·eps`: `(σ_down/σ)·x − expm1(t − t_down)·x0 + σ_up·noise`, as coefficients on
/// `(x, x_pred, eps, noise)`.
fn dpm_move(sigma: f32, to: f32, a: f64, b: f64) -> (f64, f64, f64, f64) {
    let (down, up) = ancestral(sigma, to);
    let ratio = f64::from(down) / f64::from(sigma);
    let e = (t_of(sigma) - t_of(down)).exp_m1();
    (ratio, -e * a, -e * b, f64::from(up))
}

impl<T: SchedulerTensor> Scheduler<T> for DpmSde<T> {
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
        // The second call of a step runs at the midpoint sigma.
        let sigma = match &self.pending {
            Some(m) => m.mid,
            None => self.sigmas[i],
        };
        scale_by_sigma(sample, sigma)
    }

    fn step(
        &mut self,
        model_output: &T,
        step_index: usize,
        sample: &T,
        noise: &mut NoiseSource<'_, T>,
    ) -> Result<T> {
        let i = check_index(step_index, self.timesteps.len())?;
        match self.pending.take() {
            None => {
                let (sigma, next) = (self.sigmas[i], self.sigmas[i + 1]);
                let (a, b) = x0_coefficients(self.prediction, sigma);
                if next == 0.0 {
                    // The last step: Euler to sigma 0.
                    let slope = f64::from(next - sigma) / f64::from(sigma);
                    return combine(&[
                        (1.0 + slope * (1.0 - a), sample),
                        (-slope * b, model_output),
                    ]);
                }
                // First half: to the midpoint, with the noise of that half.
                let mid = self.mids[i / 2];
                let first_noise = noise(model_output)?;
                let (r, xa, eb, up) = dpm_move(sigma, mid, a, b);
                let x2 = combine(&[(r + xa, sample), (eb, model_output), (up, &first_noise)])?;
                self.pending = Some(Midpoint {
                    start: unscaled(sample)?,
                    first_noise,
                    sigma,
                    mid,
                    next,
                });
                Ok(x2)
            }
            Some(m) => {
                // Second half: from the start to the next sigma with the midpoint's estimate;
                // the noise over the whole step is the first half's plus a fresh second half.
                let (a, b) = x0_coefficients(self.prediction, m.mid);
                let (r, xa, eb, up) = dpm_move(m.sigma, m.next, a, b);
                let second = noise(model_output)?;
                let whole = f64::from(m.sigma - m.next).abs();
                let w1 = (f64::from(m.sigma - m.mid).abs() / whole).sqrt();
                let w2 = (f64::from(m.mid - m.next).abs() / whole).sqrt();
                combine(&[
                    (r, &m.start),
                    (xa, sample),
                    (eb, model_output),
                    (up * w1, &m.first_noise),
                    (up * w2, &second),
                ])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::noise::TorchGenerator;

    /// With a zero model output from a zero sample, a step's two results are its noises times
    /// their sigma_up: each standard normal, correlated as Brownian increments.
    #[test]
    fn the_noise_is_a_brownian_motion_in_sigma() {
        let config = SchedulerConfig::default();
        let mut s = DpmSde::<Vec<f32>>::new(&config, 10, ScheduleType::Karras).unwrap();
        let n = 200_000;
        let zeros = vec![0.0f32; n];
        let mut generator = TorchGenerator::new(7);
        let mut draw = |like: &Vec<f32>| Ok(generator.randn(like.len()));
        let x2 = s.step(&zeros, 0, &zeros, &mut draw).unwrap();
        let x = s.step(&zeros, 1, &zeros, &mut draw).unwrap();
        let (sigma, mid, next) = (s.sigmas[0], s.mids[0], s.sigmas[1]);
        let (_, up1) = ancestral(sigma, mid);
        let (_, up2) = ancestral(sigma, next);
        let stats = |v: &[f32], scale: f32| {
            let z: Vec<f64> = v.iter().map(|&x| f64::from(x / scale)).collect();
            let mean = z.iter().sum::<f64>() / z.len() as f64;
            let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / z.len() as f64;
            (z, mean, var)
        };
        let (z1, m1, v1) = stats(&x2, up1);
        let (z, m, v) = stats(&x, up2);
        for (mean, var) in [(m1, v1), (m, v)] {
            assert!(
                mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
                "{mean} {var}"
            );
        }
        let corr = z1.iter().zip(&z).map(|(a, b)| a * b).sum::<f64>() / n as f64;
        let want = (f64::from(sigma - mid) / f64::from(sigma - next)).sqrt();
        assert!(
            (corr - want).abs() < 0.01,
            "correlation {corr}, Brownian {want}"
        );
    }

    #[test]
    fn midpoints_sit_between_the_sigmas() {
        let config = SchedulerConfig::default();
        let s = DpmSde::<Vec<f32>>::new(&config, 4, ScheduleType::Karras).unwrap();
        assert_eq!(s.timesteps.len(), 7);
        assert_eq!(s.sigmas.len(), 8);
        for k in 0..3 {
            let (t, mid, t_next) = (
                s.timesteps[2 * k],
                s.timesteps[2 * k + 1],
                s.timesteps[2 * k + 2],
            );
            assert!(t > mid && mid > t_next, "{t} {mid} {t_next}");
        }
    }
}
