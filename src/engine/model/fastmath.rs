//! Vectorisable `exp` and the row softmax and SiLU built on it, for the f32 CPU paths.
//!
//! candle's CPU softmax and SiLU call the C library's scalar `expf` once per element; the
//! UNet's attention at 512² evaluates over a billion of them per step. Here `exp` is a
//! branch-free Cephes-style polynomial (relative error about 2e-7, the same order as `expf`'s
//! rounding) written so the compiler vectorises the loops, compiled twice: for AVX2 + FMA
//! (chosen at run time when the CPU has them) and for the baseline target.

/// `e^x` for `x` in about [−87, 88] (clamped outside), vectorisable.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    p * scale
}

/// Lanes kept apart in reductions so they vectorise (8 = one AVX register of f32).
const LANES: usize = 8;

#[inline(always)]
fn softmax_row_generic(row: &mut [f32], scale: f32) {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in maxes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for m in maxes {
        max = if m > max { m } else { max };
    }
    let shift = max * scale;
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, v) in sums.iter_mut().zip(chunk.iter_mut()) {
            *v = exp(*v * scale - shift);
            *s += *v;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v * scale - shift);
        sum += *v;
    }
    sum += sums.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn silu_generic(dst: &mut [f32], src: &[f32], scale: f32, shift: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        let y = s * scale + shift;
        *d = y / (1.0 + exp(-y));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(row: &mut [f32], scale: f32) {
    softmax_row_generic(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_avx2(dst: &mut [f32], src: &[f32], scale: f32, shift: f32) {
    silu_generic(dst, src, scale, shift)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// In place: `row ← softmax(row · scale)`.
pub fn softmax_row(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { softmax_row_avx2(row, scale) };
        return;
    }
    softmax_row_generic(row, scale)
}

/// `dst ← silu(src · scale + shift)`, element by element (`dst` and `src` of equal length).
pub fn affine_silu(dst: &mut [f32], src: &[f32], scale: f32, shift: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { silu_avx2(dst, src, scale, shift) };
        return;
    }
    silu_generic(dst, src, scale, shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let ours = f64::from(exp(x));
            let exact = f64::from(x).exp();
            worst = worst.max(((ours - exact) / exact).abs());
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    #[test]
    fn softmax_and_silu_match_the_definitions() {
        for len in [1, 7, 8, 9, 100, 4099] {
            let src: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let mut ours = src.clone();
            softmax_row(&mut ours, 0.7);
            let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let exps: Vec<f64> = src
                .iter()
                .map(|&v| (f64::from(v - max) * 0.7).exp())
                .collect();
            let sum: f64 = exps.iter().sum();
            for (o, e) in ours.iter().zip(&exps) {
                assert!((f64::from(*o) - e / sum).abs() < 1e-6, "len {len}");
            }
            let mut silu = vec![0f32; len];
            affine_silu(&mut silu, &src, 1.5, -0.25);
            for (o, &s) in silu.iter().zip(&src) {
                let y = f64::from(s) * 1.5 - 0.25;
                assert!((f64::from(*o) - y / (1.0 + (-y).exp())).abs() < 1e-5);
            }
        }
    }
}
