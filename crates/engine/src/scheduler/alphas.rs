//! The training noise schedule: betas and their cumulative alpha products, in float32 as
//! diffusers computes them with torch on the CPU.

use crate::scheduler::config::{BetaSchedule, SchedulerConfig};

/// `alphas_cumprod[t] = prod_{i <= t} (1 - beta_i)` for every training timestep `t`.
///
/// Betas are float32 (torch's `linspace(dtype=float32)`, reproduced with its scalar formula;
/// its vectorised loop can differ by an ulp, which moves sigmas by < 3e-7 relative), `1 - beta`
/// is float32, and the product accumulates in float64 and is rounded to float32 per element, as
/// torch's CPU `cumprod` does.
pub(crate) fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.train_timesteps();
    let start = config.beta_start.unwrap_or(0.0001);
    let end = config.beta_end.unwrap_or(0.02);
    let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
        (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
        (None, None | Some(BetaSchedule::Linear)) => torch_linspace_f32(start, end, n),
        (None, Some(BetaSchedule::ScaledLinear)) => torch_linspace_f32(start.sqrt(), end.sqrt(), n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        (None, Some(BetaSchedule::SquaredCosCapV2)) => cosine_betas(n),
    };
    let mut product = 1.0f64;
    betas
        .iter()
        .map(|&beta| {
            product *= f64::from(1.0f32 - beta);
            product as f32
        })
        .collect()
}

/// `torch.linspace(start, end, n, dtype=torch.float32)` on the CPU, scalar path: the step is
/// computed in float32, the first half counts up from `start` and the second half down from
/// `end`.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform: float64, then float32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// The Karras-style noise level `sqrt((1 - a) / a)` of each alpha product, in float32.
pub(crate) fn sigmas_f32(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}
