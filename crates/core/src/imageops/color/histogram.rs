//! scikit-image 0.21 `exposure.match_histograms` on `uint8` data (`_match_cumulative_cdf`),
//! one channel at a time, as a 256-entry lookup table.

/// A 256-bin histogram of one 8-bit channel.
pub type Histogram = [u64; 256];

/// The lookup table that maps a source channel with histogram `source` onto the distribution
/// of `template`, exactly as `_match_cumulative_cdf` does: each source value's quantile
/// `cumsum(source)[v] / N_s` is interpolated (numpy `interp`) in the template's quantiles over
/// its present values, and the result truncated to `u8`.
///
/// Values absent from the source map to themselves (they never occur). An empty template
/// gives the identity (numpy would raise).
pub fn match_lut(source: &Histogram, template: &Histogram) -> [u8; 256] {
    let mut lut: [u8; 256] = std::array::from_fn(|v| v as u8);
    let (values, quantiles) = template_quantiles(template);
    let n_source: u64 = source.iter().sum();
    if values.is_empty() || n_source == 0 {
        return lut;
    }
    let mut cumulative = 0u64;
    for (v, &count) in source.iter().enumerate() {
        cumulative += count;
        if count > 0 {
            let q = cumulative as f64 / n_source as f64;
            lut[v] = interp(q, &quantiles, &values) as u8;
        }
    }
    lut
}

/// The template's present values (ascending, as f64) and their cumulative quantiles.
fn template_quantiles(template: &Histogram) -> (Vec<f64>, Vec<f64>) {
    let total: u64 = template.iter().sum();
    let mut values = Vec::with_capacity(256);
    let mut quantiles = Vec::with_capacity(256);
    let mut cumulative = 0u64;
    for (v, &count) in template.iter().enumerate() {
        if count > 0 {
            cumulative += count;
            values.push(v as f64);
            quantiles.push(cumulative as f64 / total as f64);
        }
    }
    (values, quantiles)
}

/// numpy's `interp(x, xp, fp)` (numpy 1.26 `arr_interp`) for strictly increasing `xp`,
/// non-empty.
fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let last = xp.len() - 1;
    if x > xp[last] {
        return fp[last];
    }
    if x < xp[0] {
        return fp[0];
    }
    // j: the last index with xp[j] <= x.
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == last || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let y = slope * (x - xp[j]) + fp[j];
    if y.is_nan() {
        let y = slope * (x - xp[j + 1]) + fp[j + 1];
        if y.is_nan() && fp[j] == fp[j + 1] {
            return fp[j];
        }
        return y;
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u8]) -> Histogram {
        let mut h = [0u64; 256];
        for &v in values {
            h[usize::from(v)] += 1;
        }
        h
    }

    #[test]
    fn identical_histograms_give_identity_on_present_values() {
        let h = hist(&[3, 3, 7, 9, 200, 200, 200]);
        let lut = match_lut(&h, &h);
        for v in [3u8, 7, 9, 200] {
            assert_eq!(lut[usize::from(v)], v);
        }
    }

    #[test]
    fn interpolates_between_template_values() {
        // Source quantiles 0.5, 1.0; template values 10 (q 0.25) and 20 (q 1.0).
        let lut = match_lut(&hist(&[0, 1]), &hist(&[10, 20, 20, 20]));
        // q = 0.5: 10 + (20 − 10)/(0.75)·0.25 = 13.33 → 13.
        assert_eq!(lut[0], 13);
        assert_eq!(lut[1], 20);
    }

    #[test]
    fn below_first_quantile_takes_first_value() {
        let lut = match_lut(&hist(&[0, 1, 2, 3]), &hist(&[50, 60]));
        assert_eq!(lut[0], 50);
        assert_eq!(lut[3], 60);
    }

    #[test]
    fn empty_template_is_identity() {
        let lut = match_lut(&hist(&[1, 2]), &[0; 256]);
        assert_eq!(lut[2], 2);
    }
}
