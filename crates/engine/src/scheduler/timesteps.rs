//! Inference timesteps for each spacing, with NumPy's float64 arithmetic (`linspace`,
//! `arange`, round-half-to-even) so that the values equal diffusers' exactly.

use crate::scheduler::config::TimestepSpacing;

/// `np.linspace(start, stop, num)`: `i * step + start`, the last value set to `stop`.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// `np.linspace(start, stop, num, endpoint=False)`: `i * step + start`, `step = (stop −
/// start) / num`.
pub(crate) fn np_linspace_open(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / num.max(1) as f64;
    (0..num).map(|i| i as f64 * step + start).collect()
}

/// `np.arange(start, 0, -step)` for a float step: the length is `ceil(-start / -step)`, the
/// values are `start + i * ((start - step) - start)`.
fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let delta = (start - step) - start;
    (0..len as usize)
        .map(|i| match i {
            0 => start,
            1 => start - step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// The timesteps of `set_timesteps(steps)`, largest first, for DDIM and Euler ancestral.
///
/// `linspace` is rounded for DDIM (`round_linspace`) and kept as float32 for Euler ancestral,
/// as in diffusers.
pub(crate) fn spaced(
    spacing: TimestepSpacing,
    train_steps: usize,
    steps: usize,
    steps_offset: usize,
    round_linspace: bool,
) -> Vec<f64> {
    let mut timesteps: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (train_steps - 1) as f64, steps)
            .into_iter()
            .map(|t| {
                if round_linspace {
                    t.round_ties_even()
                } else {
                    f64::from(t as f32)
                }
            })
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train_steps / steps;
            (0..steps)
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            np_arange_down(train_steps as f64, train_steps as f64 / steps as f64)
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    };
    if spacing != TimestepSpacing::Trailing {
        timesteps.reverse();
    }
    timesteps
}

/// The timesteps of DPM-Solver's (and UniPC's) `set_timesteps(steps)` without Karras or
/// exponential sigmas, largest first: like [`spaced`], but `linspace` and `leading` spread
/// `steps + 1` points and drop the last (0), and every value is an integer.
pub(crate) fn dpm_spaced(
    spacing: TimestepSpacing,
    train_steps: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<f64> = np_linspace(0.0, (train_steps - 1) as f64, steps + 1)
                .into_iter()
                .map(|t| t.round_ties_even())
                .collect();
            t.reverse();
            t.truncate(steps);
            t
        }
        TimestepSpacing::Leading => {
            let ratio = train_steps / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => spaced(spacing, train_steps, steps, steps_offset, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_can_have_one_more_step_as_in_numpy() {
        let t = spaced(TimestepSpacing::Trailing, 1000, 61, 0, true);
        assert_eq!(t.len(), 62);
        assert_eq!(t[0], 999.0);
        let t = spaced(TimestepSpacing::Trailing, 1000, 30, 0, true);
        assert_eq!(t.len(), 30);
    }

    #[test]
    fn dpm_spacing_spreads_one_more_point() {
        let t = dpm_spaced(TimestepSpacing::Leading, 1000, 10, 1);
        assert_eq!(t[..3], [901.0, 811.0, 721.0]);
        assert_eq!(t[9], 91.0);
        let t = dpm_spaced(TimestepSpacing::Linspace, 1000, 4, 0);
        assert_eq!(t, vec![999.0, 749.0, 500.0, 250.0]);
    }

    #[test]
    fn leading_adds_the_offset() {
        let t = spaced(TimestepSpacing::Leading, 1000, 4, 1, true);
        assert_eq!(t, vec![751.0, 501.0, 251.0, 1.0]);
    }
}
