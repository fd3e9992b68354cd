//! Pillow's resampling filters and its fixed-point coefficient tables
//! (`libImaging/Resample.c`: `precompute_coeffs` and `normalize_coeffs_8bpc`, Pillow 9.5), and
//! the portable kernels of one output row of each pass, which the passes (`pass`) and the AVX2
//! versions (`avx2`) share.

use std::f64::consts::PI;

/// Fractional bits of the fixed-point coefficients (`PRECISION_BITS`: 32 − 8 − 2).
pub(crate) const PRECISION_BITS: u32 = 22;

/// The rounding bias every accumulator starts from: one half in fixed point.
pub(crate) const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A resampling filter, as in Pillow's `Image.Resampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `Image.LANCZOS`: a 3-lobed Lanczos window (support 3).
    Lanczos,
    /// `Image.BICUBIC`: the cubic convolution kernel with a = −0.5 (support 2); Pillow's
    /// default filter for `Image.resize`, which A1111 uses for its fill strips.
    Bicubic,
}

impl Filter {
    /// The filter's support radius at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Lanczos => 3.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The filter's weight at `x` (f64, evaluated as Pillow does).
    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Lanczos => lanczos(x),
            Filter::Bicubic => bicubic(x),
        }
    }
}

/// `sin(πx)/(πx)`, with `u = x·π` formed first.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let u = x * PI;
    u.sin() / u
}

/// The Lanczos-3 window: `sinc(x)·sinc(x/3)` on [−3, 3).
fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// The bicubic convolution kernel with a = −0.5.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The fixed-point weights of one resampling axis.
#[derive(Debug, Clone)]
pub(crate) struct Coefficients {
    /// Stride of `weights` per output index.
    pub ksize: usize,
    /// Per output index: the first input index and the number of taps.
    pub bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output index, of which the first `n` are used.
    pub weights: Vec<i32>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the input range
    /// `[in0, in1)` of an axis of `in_size` pixels, resampled to `out_size` pixels.
    pub(crate) fn new(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: Filter) -> Self {
        // The span is an f32 subtraction, as in C.
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut row = vec![0f64; ksize];
        for (xx, out) in weights.chunks_exact_mut(ksize).enumerate() {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            let (xmin, n) = window(center, support, in_size);
            fill_weights(&mut row[..n], xmin, center, 1.0 / filterscale, filter);
            for (k, &w) in out.iter_mut().zip(&row[..n]) {
                *k = to_fixed(w);
            }
            bounds.push((xmin, n));
        }
        Coefficients {
            ksize,
            bounds,
            weights,
        }
    }

    /// The taps of output index `o`: first input index and fixed-point weights.
    #[inline]
    pub(crate) fn taps(&self, o: usize) -> (usize, &[i32]) {
        let (xmin, n) = self.bounds[o];
        let start = o * self.ksize;
        (xmin, &self.weights[start..start + n])
    }

    /// The input rows `[first, last)` that any output index reads.
    pub(crate) fn span(&self) -> (usize, usize) {
        match (self.bounds.first(), self.bounds.last()) {
            (Some(&(first, _)), Some(&(xmin, n))) => (first, xmin + n),
            _ => (0, 0),
        }
    }

    /// Makes every first input index relative to `first`.
    pub(crate) fn shift(&mut self, first: usize) {
        for b in &mut self.bounds {
            b.0 -= first;
        }
    }
}

/// The first input index and the tap count around `center`, rounded as Pillow does
/// (C truncation, then clamped to the axis).
fn window(center: f64, support: f64, in_size: usize) -> (usize, usize) {
    let xmin = ((center - support + 0.5) as i64).max(0);
    let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
    let n = (xmax - xmin).max(0);
    (xmin as usize, n as usize)
}

/// The normalised f64 weights of the taps starting at `xmin`.
fn fill_weights(row: &mut [f64], xmin: usize, center: f64, ss: f64, filter: Filter) {
    let mut total = 0.0;
    for (x, w) in row.iter_mut().enumerate() {
        *w = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
        total += *w;
    }
    if total != 0.0 {
        for w in row.iter_mut() {
            *w /= total;
        }
    }
}

/// A weight in 22-bit fixed point, rounded half away from zero as Pillow does.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// Pillow's `clip8`: the accumulator shifted down and clamped to a byte.
#[inline(always)]
pub(crate) fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One row of the horizontal pass (portable).
pub(super) fn horizontal_row<const C: usize>(row: &[u8], dst: &mut [u8], coeffs: &Coefficients) {
    for (o, px) in dst.chunks_exact_mut(C).enumerate() {
        let (xmin, k) = coeffs.taps(o);
        let taps = &row[xmin * C..(xmin + k.len()) * C];
        let mut acc = [HALF; C];
        for (p, &w) in taps.chunks_exact(C).zip(k) {
            for c in 0..C {
                acc[c] += i32::from(p[c]) * w;
            }
        }
        for c in 0..C {
            px[c] = clip8(acc[c]);
        }
    }
}

/// One row of the vertical pass: the weighted sum of the `k.len()` rows in `rows`, through
/// the i32 accumulators `acc`. Written so that the compiler vectorises it.
#[inline(always)]
pub(super) fn vertical_row(rows: &[u8], stride: usize, k: &[i32], acc: &mut [i32], dst: &mut [u8]) {
    acc.fill(HALF);
    for (row, &w) in rows.chunks_exact(stride).zip(k) {
        for (a, &p) in acc.iter_mut().zip(row) {
            *a += i32::from(p) * w;
        }
    }
    for (d, &a) in dst.iter_mut().zip(acc.iter()) {
        *d = clip8(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (ins, outs) in [(600, 257), (120, 311), (7, 300), (97, 3)] {
            let c = Coefficients::new(ins, 0.0, ins as f32, outs, Filter::Lanczos);
            for o in 0..outs {
                let (_, k) = c.taps(o);
                let s: i32 = k.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= k.len() as i32,
                    "{ins}->{outs} @{o}"
                );
            }
        }
    }

    #[test]
    fn zero_span_mixes_edge_rows() {
        let c = Coefficients::new(61, 0.0, 0.0, 7, Filter::Lanczos);
        let (xmin, k) = c.taps(3);
        assert_eq!((xmin, k.len()), (0, 3));
        let c = Coefficients::new(61, 61.0, 61.0, 7, Filter::Bicubic);
        let (xmin, k) = c.taps(0);
        assert_eq!((xmin, k.len()), (59, 2));
        assert_eq!(k[0] + k[1], 1 << PRECISION_BITS);
    }

    #[test]
    fn clip8_clamps() {
        assert_eq!(clip8(-5), 0);
        assert_eq!(clip8(HALF), 0);
        assert_eq!(clip8(255 << PRECISION_BITS), 255);
        assert_eq!(clip8(i32::MAX), 255);
    }
}
