//! Noise levels (sigmas) at inference timesteps: NumPy's `interp`, Karras et al.'s schedule and
//! diffusers' `_sigma_to_t`, with the float32/float64 mix diffusers uses.

use crate::scheduler::timesteps::np_linspace;

/// `np.interp(x, arange(len(fp)), fp)` in float64: exact at integers, linear in between, held
/// at the ends.
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let Some(&last) = fp.last() else {
        return f64::NAN;
    };
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    let j = x.floor() as usize;
    if j + 1 >= fp.len() {
        return f64::from(last);
    }
    if j as f64 == x {
        return f64::from(fp[j]);
    }
    // NumPy's slope divides by the x step, 1 here.
    let (y0, y1) = (f64::from(fp[j]), f64::from(fp[j + 1]));
    (y1 - y0) * (x - j as f64) + y0
}

/// Karras et al. (2022)'s sigmas, `rho = 7`, from `max` down to `min` in `steps` values
/// (float64, as `_convert_to_karras`).
pub(crate) fn karras(min: f64, max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv_rho = min.powf(1.0 / RHO);
    let max_inv_rho = max.powf(1.0 / RHO);
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// Sigmas evenly spaced in log from `max` down to `min` in `steps` values (float64, as
/// `_convert_to_exponential`: `exp(linspace(ln max, ln min, steps))`).
pub(crate) fn exponential(min: f64, max: f64, steps: usize) -> Vec<f64> {
    np_linspace(max.ln(), min.ln(), steps)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is `sigma`, by
/// linear interpolation in log sigma.
///
/// `log_sigmas` is `np.log` of the float32 training sigmas (float32, ascending). With NumPy 1.x
/// (the fixtures' 1.26) the float64 `log(sigma)` meets float32 arrays and is rounded to float32
/// for the search and the weight; only the final mix is float64. NumPy 2 keeps it float64,
/// which can move a truncated `squaredcos_cap_v2` timestep by one.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln() as f32;
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    // argmax of the cumulative count of `log_sigma >= log_sigmas[i]`: the last such i, else 0.
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    f64::from(1.0 - w) * low_idx as f64 + f64::from(w) * high_idx as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_is_exact_at_integers_and_linear_between() {
        let fp = [1.0f32, 3.0, 7.0];
        assert_eq!(interp(1.0, &fp), 3.0);
        assert_eq!(interp(1.5, &fp), 5.0);
        assert_eq!(interp(5.0, &fp), 7.0);
        assert_eq!(interp(-1.0, &fp), 1.0);
    }

    #[test]
    fn karras_runs_from_max_to_min() {
        let s = karras(0.03, 14.6, 5);
        assert_eq!(s.len(), 5);
        assert!((s[0] - 14.6).abs() < 1e-12 && (s[4] - 0.03).abs() < 1e-12);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let log_sigmas: Vec<f32> = (0..10).map(|i| (i as f32 + 1.0).ln()).collect();
        assert_eq!(sigma_to_t(1.0, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(10.0, &log_sigmas), 9.0);
        let t = sigma_to_t(4.5, &log_sigmas);
        assert!(t > 3.0 && t < 4.0);
    }
}
