//! Vectorisable `exp` and the row softmax and SiLU built on it, for the f32 CPU paths.
//!
//! candle's CPU softmax and SiLU call the C library's scalar `expf` once per element; the
//! UNet's attention at 512² evaluates over a billion of them per step. Here `exp` is a
//! branch-free Cephes-style polynomial (relative error about 2e-7, the same order as `expf`'s
//! rounding; SiLU and GELU use it), and the softmax's a cheaper base-2 one (3e-6, see
//! [`EXP2_POLY`]), written so the compiler vectorises the loops, compiled three times: for
//! AVX-512, for AVX2 + FMA, and for the baseline target; the best one the CPU has is chosen at
//! run time.

/// `a · b + c`: one fused multiply-add in the copies compiled with FMA (`FMA`), a multiply
/// and an add in the others (where `mul_add` would call the C library's `fmaf`). Rust never
/// fuses `a * b + c` by itself: without this the AVX2 copy of the softmax's polynomial was
/// twice the instructions (measured: the level-0 attention's `exp` took a third of it).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// `2^k` for the integer `k` that `rounded` (`k + ROUND`, for `k` in [−126, 127]) holds in
/// its low mantissa bits: built from those bits, with no float-to-int conversion, whose
/// saturating semantics would stop vectorisation.
#[inline(always)]
fn pow2_of_rounded(rounded: f32) -> f32 {
    let k_int = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(k_int.wrapping_add(127) << 23)
}

/// `e^x` for `x` in about [−87, 88] (clamped outside), vectorisable.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let rounded = madd::<FMA>(x, LOG2E, ROUND);
    let k = rounded - ROUND;
    let r = madd::<FMA>(-k, LN2_LO, madd::<FMA>(-k, LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = madd::<FMA>(p, r, c);
    }
    let p = madd::<FMA>(p * r, r, r) + 1.0;
    p * pow2_of_rounded(rounded)
}

/// The coefficients, highest degree first, of the degree-4 polynomial for `2^f` on [−½, ½]
/// that every softmax `exp` here and in the bf16 kernels uses (fitted for relative error by
/// `tools/dev/fit_exp2.py 4`: at most 2.8e-6, 2.9e-6 once evaluated in f32). Degree 5 (1.8e-7)
/// cost a sixth more: the softmax is bound by the multiply-add pipes, and on a Zen 3 core the
/// fused f32 attention over 16384 keys went from 2.125 to 2.087 ns per query–key pair (the
/// `exp` 0.324 → 0.272 ns), with every parity test against diffusers passing unchanged.
// The fitted coefficient of f is close to ln 2 but deliberately not it.
#[allow(clippy::approx_constant)]
pub(crate) const EXP2_POLY: [f32; 5] = [
    0.009_582_818_5,
    0.055_906_37,
    0.240_240_99,
    0.693_124_2,
    1.0,
];

/// `2^t` for `t ≤ 0` (the softmax's exponents once the row's maximum is taken off; below
/// −126, where `2^t` is under 1.2e-38 and adds nothing to a softmax, it is taken as −126; NaN
/// stays NaN), vectorisable: `t = k + f` with `k` the nearest integer and `f` in [−½, ½],
/// `2^f` by [`EXP2_POLY`], `2^k` from its bits.
/// Fewer operations than [`exp`] (no range reduction by ln 2, no upper clamp).
#[inline(always)]
fn exp2_nonpositive<const FMA: bool>(t: f32) -> f32 {
    let t = if t < -126.0 { -126.0 } else { t };
    let rounded = t + ROUND;
    let f = t - (rounded - ROUND);
    let [first, rest @ ..] = EXP2_POLY;
    let mut p = first;
    for c in rest {
        p = madd::<FMA>(p, f, c);
    }
    p * pow2_of_rounded(rounded)
}

/// Lanes kept apart in reductions so they vectorise: 16 = one AVX-512 register of f32, and
/// two AVX2 registers.
const LANES: usize = 16;

/// The largest value of `row` (−∞ when empty; NaNs ignored).
#[inline(always)]
fn row_max_generic(row: &[f32]) -> f32 {
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
    max
}

/// `row ← exp(row · scale − max · scale)` for a `max` at least the row's largest value;
/// returns `Σ row`.
#[inline(always)]
fn exp_below_generic<const FMA: bool>(row: &mut [f32], scale: f32, max: f32) -> f32 {
    // e^(x · scale) = 2^(x · scale · log2 e).
    let factor = scale * std::f32::consts::LOG2_E;
    let shift = max * factor;
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, v) in sums.iter_mut().zip(chunk.iter_mut()) {
            *v = exp2_nonpositive::<FMA>(madd::<FMA>(*v, factor, -shift));
            *s += *v;
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp2_nonpositive::<FMA>(madd::<FMA>(*v, factor, -shift));
        sum += *v;
    }
    sum + sums.iter().sum::<f32>()
}

#[inline(always)]
fn silu_generic<const FMA: bool>(dst: &mut [f32], src: &[f32], scale: f32, shift: f32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        let y = madd::<FMA>(s, scale, shift);
        *d = y / (1.0 + exp::<FMA>(-y));
    }
}

#[inline(always)]
fn silu_in_place_generic<const FMA: bool>(buf: &mut [f32], scale: f32, shift: f32) {
    for v in buf.iter_mut() {
        let y = madd::<FMA>(*v, scale, shift);
        *v = y / (1.0 + exp::<FMA>(-y));
    }
}

/// `erf(x)`, vectorisable: Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7 in exact
/// arithmetic, below 5e-7 in f32), with the odd symmetry applied through the sign bit.
#[inline(always)]
fn erf<const FMA: bool>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let sign = x.to_bits() & 0x8000_0000;
    let a = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let t = 1.0 / madd::<FMA>(P, a, 1.0);
    let mut poly = A[4];
    for c in [A[3], A[2], A[1], A[0]] {
        poly = madd::<FMA>(poly, t, c);
    }
    let y = madd::<FMA>(-(poly * t), exp::<FMA>(-a * a), 1.0);
    f32::from_bits(y.to_bits() | sign)
}

/// `dst[i] ← hidden[i] · gelu(gate[i])` with the exact (erf) GELU.
#[inline(always)]
fn geglu_generic<const FMA: bool>(dst: &mut [f32], hidden: &[f32], gate: &[f32]) {
    for ((d, &h), &g) in dst.iter_mut().zip(hidden).zip(gate) {
        *d = h * (0.5 * g * (1.0 + erf::<FMA>(g * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

/// The instruction sets the kernels are compiled for, best first (x86-64 only: elsewhere
/// the generic code is the one copy).
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

/// The best instruction set this CPU has (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") {
            Isa::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    })
}

/// Defines `$name`, which runs the generic `$generic` compiled for the best instruction set
/// the CPU has (each copy compiled with its `target_feature`s so the loops vectorise). A
/// generic written `$generic::<FMA>` takes a `const FMA: bool` (see [`madd`]): true in the
/// copies with fused multiply-adds.
macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $generic:ident::<FMA>) => {
        $crate::kernels::fastmath::dispatch!(@copies $(#[$doc])* $name($($arg: $ty),*) -> $ret,
            [$generic::<true>],
            // AArch64 always has fused multiply-adds; other baselines may not.
            [$generic::<{ cfg!(target_arch = "aarch64") }>]);
    };
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $generic:ident) => {
        $crate::kernels::fastmath::dispatch!(@copies $(#[$doc])* $name($($arg: $ty),*) -> $ret,
            [$generic], [$generic]);
    };
    (@copies $(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty,
        [$($fused:tt)*], [$($baseline:tt)*]) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $($fused)*($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $($fused)*($($arg),*)
                }
                use $crate::kernels::fastmath::Isa;
                match $crate::kernels::fastmath::isa() {
                    // SAFETY: the CPU has the features each copy is compiled for (checked
                    // by `isa`).
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $($baseline)*($($arg),*)
        }
    };
}
pub(crate) use dispatch;

dispatch! {
    /// The largest value of `row` (−∞ when it is empty; NaNs are skipped).
    pub fn row_max(row: &[f32]) -> f32 = row_max_generic
}

dispatch! {
    /// In place: `row ← exp(row · scale − max · scale)`, for `max` at least the row's
    /// largest value and `scale > 0` (so every exponent is ≤ 0); returns `Σ row`.
    pub fn exp_below(row: &mut [f32], scale: f32, max: f32) -> f32 = exp_below_generic::<FMA>
}

/// In place: `row ← exp(row · scale − max(row) · scale)`, the softmax before its
/// normalisation; returns the normalising factor `1 / Σ row`. Callers that multiply the row
/// by a matrix next can apply the factor to the (much smaller) product instead of to every
/// score.
pub fn exp_row(row: &mut [f32], scale: f32) -> f32 {
    1.0 / exp_below(row, scale, row_max(row))
}

dispatch! {
    /// `dst ← silu(src · scale + shift)`, element by element (`dst` and `src` of equal
    /// length).
    pub fn affine_silu(dst: &mut [f32], src: &[f32], scale: f32, shift: f32) -> () = silu_generic::<FMA>
}

dispatch! {
    /// In place: `buf ← silu(buf · scale + shift)`.
    pub fn affine_silu_in_place(buf: &mut [f32], scale: f32, shift: f32) -> () = silu_in_place_generic::<FMA>
}

dispatch! {
    /// `dst ← hidden · gelu(gate)`, element by element, with the exact (erf) GELU as
    /// PyTorch's default (the GEGLU of the UNet's feed-forward); all three of equal length.
    pub fn geglu(dst: &mut [f32], hidden: &[f32], gate: &[f32]) -> () = geglu_generic::<FMA>
}

/// In place: `row ← softmax(row · scale)`.
pub fn softmax_row(row: &mut [f32], scale: f32) {
    let inv = exp_row(row, scale);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function of one f32 in both of its builds: separate multiplies and adds, and fused.
    type Pair = [(&'static str, fn(f32) -> f32); 2];

    /// `$f::<true>` as the dispatched copies run it: compiled with FMA, so each multiply-add
    /// is the instruction. Without the feature `mul_add` calls the C library's `fmaf`, which
    /// MinGW (the Windows build) does not round exactly. Where the CPU lacks FMA (and off
    /// x86-64, where it is native), `$f::<true>` as it is.
    macro_rules! fused {
        ($f:ident) => {{
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "fma")]
            fn with_fma(x: f32) -> f32 {
                $f::<true>(x)
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has FMA.
                (|x| unsafe { with_fma(x) }) as fn(f32) -> f32
            } else {
                $f::<true>
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                $f::<true> as fn(f32) -> f32
            }
        }};
    }

    #[test]
    fn exp_is_accurate() {
        let builds: Pair = [("mul+add", exp::<false>), ("fused", fused!(exp))];
        for (build, exp) in builds {
            let mut worst = 0f64;
            let mut x = -87.0f32;
            while x < 88.0 {
                let ours = f64::from(exp(x));
                let exact = f64::from(x).exp();
                worst = worst.max(((ours - exact) / exact).abs());
                x += 0.001_37;
            }
            assert!(worst < 4e-7, "{build}: worst relative error {worst}");
        }
    }

    #[test]
    fn exp2_is_accurate() {
        let builds: Pair = [
            ("mul+add", exp2_nonpositive::<false>),
            ("fused", fused!(exp2_nonpositive)),
        ];
        for (build, exp2) in builds {
            let mut worst = 0f64;
            let mut t = -126.0f32;
            while t <= 0.0 {
                let ours = f64::from(exp2(t));
                let exact = f64::from(t).exp2();
                worst = worst.max(((ours - exact) / exact).abs());
                t += 0.000_917;
            }
            assert!(worst < 3.2e-6, "{build}: worst relative error {worst}");
            assert_eq!(exp2(0.0), 1.0, "{build}");
            assert_eq!(exp2(-1000.0), 2f32.powi(-126), "{build}");
            assert!(exp2(f32::NAN).is_nan(), "{build}");
        }
    }

    #[test]
    fn erf_and_geglu_are_accurate() {
        let builds: Pair = [("mul+add", erf::<false>), ("fused", fused!(erf))];
        for (build, erf) in builds {
            let mut worst = 0f64;
            let mut x = -6.0f32;
            while x < 6.0 {
                let exact = libm::erf(f64::from(x));
                worst = worst.max((f64::from(erf(x)) - exact).abs());
                x += 0.000_73;
            }
            assert!(worst < 5e-7, "{build}: worst absolute error {worst}");
        }
        let gate: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let hidden: Vec<f32> = gate.iter().map(|g| 1.5 - g).collect();
        let mut out = vec![0f32; gate.len()];
        geglu(&mut out, &hidden, &gate);
        for ((o, &h), &g) in out.iter().zip(&hidden).zip(&gate) {
            let (h, g) = (f64::from(h), f64::from(g));
            let exact = h * 0.5 * g * (1.0 + libm::erf(g / std::f64::consts::SQRT_2));
            // erf's absolute error, scaled by h·g/2, plus rounding.
            let bound = 5e-7 * (1.0 + (h * g).abs());
            assert!((f64::from(*o) - exact).abs() < bound, "gate {g}");
        }
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
            let mut in_place = src.clone();
            affine_silu_in_place(&mut in_place, 1.5, -0.25);
            assert_eq!(in_place, silu);
            for (o, &s) in silu.iter().zip(&src) {
                let y = f64::from(s) * 1.5 - 0.25;
                assert!((f64::from(*o) - y / (1.0 + (-y).exp())).abs() < 1e-5);
            }
        }
    }
}
