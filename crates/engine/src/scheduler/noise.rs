//! Seeded Gaussian noise bit-identical to PyTorch's CPU `torch.randn`.
//!
//! A1111 (with "RNG source: CPU") and most diffusers scripts draw the initial latent noise with
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`. Reproducing a seed
//! therefore means reproducing three things exactly:
//!
//! 1. **The engine**: PyTorch's CPU generator is a standard 32-bit Mersenne Twister (MT19937),
//!    seeded with the low 32 bits of the `u64` seed ([`Mt19937`]).
//! 2. **The uniform draws**: a `float` uniform takes the low 24 bits of one 32-bit draw times
//!    2⁻²⁴; a `double` uniform takes the low 53 bits of a 64-bit value (first draw in the high
//!    word, second in the low word) times 2⁻⁵³.
//! 3. **The normal transform**, which depends on the tensor size:
//!    - `numel >= 16` (the vectorised path, `normal_fill`): every element first receives a float
//!      uniform; then each block of 16 is turned into normals by Box–Muller, pairing element
//!      `j` (radius, from `1 - u`) with element `j + 8` (angle), writing the cosine branch to `j`
//!      and the sine branch to `j + 8`. When `numel` is not a multiple of 16, 16 *fresh*
//!      uniforms are drawn for the last 16 elements, which are then recomputed (so the tail
//!      overlaps the previous block and consumes extra draws).
//!    - `numel < 16` (the scalar path): one element at a time, a `double` Box–Muller pair from
//!      two `double` uniforms; the cosine branch is returned and the sine branch is cached in
//!      the generator for the next scalar draw, even across calls.
//!
//! The vectorised path's `log`, `sin` and `cos` are not the C library's: on x86-64 with AVX2
//! (and on AVX-512 machines, which use the same kernel) PyTorch evaluates them with the
//! Cephes-derived polynomials of its `avx_mathfun.h`, in single precision. This module
//! re-implements that arithmetic in scalar `f32`, operation by operation, so the results match
//! bit for bit on any platform ([`NormalKernel::Avx2`], the default). PyTorch builds without
//! AVX2 (ARM, including Apple silicon, and old x86) use the C library's `logf`/`sinf`/`cosf`
//! instead; [`NormalKernel::Portable`] reproduces that path with Rust's `f32` functions, which
//! is bit-exact only where those call the same C library (glibc on Linux).
//!
//! The scalar path's `double` `log1p`, `sin` and `cos` come from the platform's C library in
//! both PyTorch and Rust; glibc (Linux) results match PyTorch on Linux.

/// The MT19937 state size, in 32-bit words.
const STATE_N: usize = 624;
/// The MT19937 middle word offset.
const STATE_M: usize = 397;
/// The MT19937 twist matrix.
const MATRIX_A: u32 = 0x9908_b0df;

/// A 32-bit Mersenne Twister, as PyTorch's `at::mt19937` (the reference MT19937 of
/// Matsumoto and Nishimura seeded with `init_genrand`).
#[derive(Clone)]
pub struct Mt19937 {
    /// The 624-word state.
    state: [u32; STATE_N],
    /// Index of the next state word to temper; `STATE_N` means "regenerate first".
    next: usize,
}

impl std::fmt::Debug for Mt19937 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mt19937")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Mt19937 {
    /// A generator seeded with the low 32 bits of `seed` (PyTorch ignores the high bits).
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_N];
        state[0] = seed as u32;
        for i in 1..STATE_N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self {
            state,
            next: STATE_N,
        }
    }

    /// The next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.next >= STATE_N {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Refills the whole state (the "twist").
    fn regenerate(&mut self) {
        for i in 0..STATE_N {
            let upper = self.state[i] & 0x8000_0000;
            let lower = self.state[(i + 1) % STATE_N] & 0x7fff_ffff;
            let mixed = upper | lower;
            let twisted = (mixed >> 1) ^ if mixed & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + STATE_M) % STATE_N] ^ twisted;
        }
        self.next = 0;
    }
}

/// Which of PyTorch's CPU kernels to reproduce for tensors of 16 elements or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NormalKernel {
    /// The AVX2 kernel (`normal_fill_AVX2`, with `avx_mathfun.h`'s `log256_ps` and
    /// `sincos256_ps`), used by PyTorch on every x86-64 CPU with AVX2 or AVX-512: the common
    /// case and the default. Bit-exact on every platform (it needs only IEEE `f32` arithmetic,
    /// `sqrt` and a correctly rounded `mul_add`).
    #[default]
    Avx2,
    /// The portable kernel (`normal_fill` with `std::log`, `std::cos`, `std::sin` on `float`),
    /// used by PyTorch on ARM (Apple silicon included) and x86 without AVX2. Bit-exact only where
    /// Rust's `f32::ln`/`sin`/`cos` call the same C library as PyTorch (glibc on Linux).
    Portable,
}

/// PyTorch's CPU random generator (`torch.Generator("cpu")`): an MT19937 engine plus the cached
/// second value of the last scalar Box–Muller pair.
#[derive(Debug, Clone)]
pub struct TorchGenerator {
    /// The engine.
    engine: Mt19937,
    /// The seed last set.
    seed: u64,
    /// The sine branch of the last scalar (`double`) Box–Muller pair, not yet returned.
    next_double_normal: Option<f64>,
    /// The kernel reproduced for tensors of 16 elements or more.
    kernel: NormalKernel,
}

impl TorchGenerator {
    /// A generator as `torch.Generator("cpu").manual_seed(seed)`, reproducing the AVX2 kernel.
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, NormalKernel::default())
    }

    /// A generator as `torch.Generator("cpu").manual_seed(seed)`, reproducing `kernel`.
    pub fn with_kernel(seed: u64, kernel: NormalKernel) -> Self {
        Self {
            engine: Mt19937::new(seed),
            seed,
            next_double_normal: None,
            kernel,
        }
    }

    /// Reseeds, as `manual_seed(seed)`: resets the engine and drops the cached normal value.
    pub fn manual_seed(&mut self, seed: u64) {
        self.engine = Mt19937::new(seed);
        self.seed = seed;
        self.next_double_normal = None;
    }

    /// The seed last set (as `initial_seed()`).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The kernel reproduced for tensors of 16 elements or more.
    pub fn kernel(&self) -> NormalKernel {
        self.kernel
    }

    /// The next 32-bit draw (PyTorch's `random()`).
    pub fn next_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// The next 64-bit draw (PyTorch's `random64()`): the first 32-bit draw is the high word.
    pub fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        (hi << 32) | lo
    }

    /// A `float` uniform in `[0, 1)`: the low 24 bits of one draw times 2⁻²⁴.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// A `double` uniform in `[0, 1)`: the low 53 bits of a 64-bit draw times 2⁻⁵³.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// The values of `torch.randn(shape, generator=self, dtype=torch.float32)` for a contiguous
    /// tensor of `numel` elements, continuing this generator's stream exactly as PyTorch does.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel >= 16 {
            self.randn_vectorised(numel)
        } else {
            (0..numel).map(|_| self.normal_f64() as f32).collect()
        }
    }

    /// One standard normal `double` from the scalar path (`at::normal_distribution<double>`).
    ///
    /// PyTorch returns `value * std + mean`; with `std = 1` and `mean = 0` that is `value + 0`
    /// (which only turns `-0` into `+0`).
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(radius * theta.sin());
        radius * theta.cos() + 0.0
    }

    /// The vectorised path (`normal_fill`) for `numel >= 16`.
    fn randn_vectorised(&mut self, numel: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        let kernel = self.kernel;
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block, kernel);
        }
        if !numel.is_multiple_of(16) {
            let tail = &mut data[numel - 16..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            box_muller_16(tail, kernel);
        }
        data
    }
}

/// `torch.randn` of `numel` elements from a fresh generator seeded with `seed` (AVX2 kernel).
pub fn randn_seeded(seed: u64, numel: usize) -> Vec<f32> {
    TorchGenerator::new(seed).randn(numel)
}

/// Turns 16 uniforms into 16 standard normals in place (`normal_fill_16`): element `j` gives the
/// radius, element `j + 8` the angle; the cosine branch goes to `j`, the sine branch to `j + 8`.
fn box_muller_16(block: &mut [f32], kernel: NormalKernel) {
    for j in 0..8 {
        let u1 = 1.0 - block[j];
        let u2 = block[j + 8];
        let (cos, sin) = match kernel {
            NormalKernel::Avx2 => box_muller_avx2(u1, u2),
            NormalKernel::Portable => box_muller_portable(u1, u2),
        };
        block[j] = cos;
        block[j + 8] = sin;
    }
}

/// One Box–Muller pair as PyTorch's AVX2 kernel computes it. `u1` is in `(0, 1]`.
///
/// The kernel ends with `fmadd(n, std, mean)`; with `std = 1` and `mean = 0` that is `n + 0`
/// (which only turns `-0` into `+0`).
fn box_muller_avx2(u1: f32, u2: f32) -> (f32, f32) {
    let radius = (-2.0 * cephes::log(u1)).sqrt();
    let theta = cephes::TWO_PI * u2;
    let (sin, cos) = cephes::sincos(theta);
    (radius * cos + 0.0, radius * sin + 0.0)
}

/// One Box–Muller pair as PyTorch's portable kernel computes it. `u1` is in `(0, 1]`.
///
/// The angle is computed in `double` (`2.0f * pi<double> * u2`) and rounded to `float`.
fn box_muller_portable(u1: f32, u2: f32) -> (f32, f32) {
    let radius = (-2.0 * u1.ln()).sqrt();
    let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
    (radius * theta.cos() + 0.0, radius * theta.sin() + 0.0)
}

/// Scalar re-implementation of the single-precision Cephes approximations in PyTorch's
/// `avx_mathfun.h` (`log256_ps`, `sincos256_ps`), one lane at a time, in the same order of
/// operations and with the same `f32` constants (decimal → `double` → `float`, as C does), so
/// every result is bit-identical.
///
/// The source writes separate `mul` and `add` intrinsics, but PyTorch's binaries are built by
/// GCC, which contracts each multiplication whose only use is an addition or subtraction into
/// a fused multiply-add (`-ffp-contract=fast`; when both operands of an addition are products,
/// the earlier product is fused). Every such pair is therefore written here as
/// a fused multiply-add (`fma`, one rounding), every other operation as plain `f32` arithmetic (which Rust
/// never contracts). This was established against PyTorch 2.15's wheel: without the fusions
/// about 1% of values differ by one ulp; with them, none.
#[allow(
    clippy::excessive_precision,
    clippy::approx_constant,
    reason = "the constants are written as in avx_mathfun.h and rounded as C rounds them"
)]
mod cephes {
    /// `a·b + c` with one rounding, computed in software (musl's algorithm, the `libm`
    /// crate), never by the C library: without the FMA target feature Rust's `f32::mul_add`
    /// calls the platform's `fmaf`, and MinGW's (Windows) rounds twice, which moved one value
    /// in a thousand by an ulp under Wine.
    use libm::fmaf as fma;

    /// `2π` as `_mm256_set1_ps(2.0f * pi<double>)`.
    pub const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;

    const SQRTHF: f32 = 0.707_106_781_186_547_524_f64 as f32;
    const LOG_P: [f32; 9] = [
        7.037_683_629_2e-2_f64 as f32,
        -1.151_461_031_0e-1_f64 as f32,
        1.167_699_874_0e-1_f64 as f32,
        -1.242_014_084_6e-1_f64 as f32,
        1.424_932_278_7e-1_f64 as f32,
        -1.666_805_766_5e-1_f64 as f32,
        2.000_071_476_5e-1_f64 as f32,
        -2.499_999_399_3e-1_f64 as f32,
        3.333_333_117_4e-1_f64 as f32,
    ];
    const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
    const LOG_Q2: f32 = 0.693_359_375_f64 as f32;

    const MINUS_DP1: f32 = -0.785_156_25_f64 as f32;
    const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
    const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
    const SINCOF: [f32; 3] = [
        -1.951_529_589_1e-4_f64 as f32,
        8.332_160_873_6e-3_f64 as f32,
        -1.666_665_461_1e-1_f64 as f32,
    ];
    const COSCOF: [f32; 3] = [
        2.443_315_711_809_948e-5_f64 as f32,
        -1.388_731_625_493_765e-3_f64 as f32,
        4.166_664_568_298_827e-2_f64 as f32,
    ];
    /// `4 / π`.
    const FOPI: f32 = 1.273_239_544_735_16_f64 as f32;

    /// Natural logarithm of a positive, finite `x` (`log256_ps`, one lane).
    pub fn log(x: f32) -> f32 {
        let x = x.max(f32::MIN_POSITIVE);
        let bits = x.to_bits();
        let exponent = (bits >> 23) as i32 - 0x7f;
        // Mantissa scaled into [0.5, 1).
        let mut m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
        let mut e = exponent as f32 + 1.0;
        let below = m < SQRTHF;
        let tmp = if below { m } else { 0.0 };
        m -= 1.0;
        e -= if below { 1.0 } else { 0.0 };
        m += tmp;

        let z = m * m;
        let mut y = LOG_P[0];
        for &p in &LOG_P[1..] {
            y = fma(y, m, p);
        }
        y *= m;
        y = fma(y, z, e * LOG_Q1);
        y = fma(-z, 0.5, y);
        let r = m + y;
        fma(e, LOG_Q2, r)
    }

    /// Sine and cosine of a finite `x` of moderate size (`sincos256_ps`, one lane).
    pub fn sincos(x: f32) -> (f32, f32) {
        let mut sign_sin = x.to_bits() & 0x8000_0000;
        let ax = x.abs();

        let mut j = (ax * FOPI) as i32;
        j = (j + 1) & !1;
        let yf = j as f32;
        sign_sin ^= ((j & 4) as u32) << 29;
        let sign_cos = ((!(j - 2) & 4) as u32) << 29;
        let sin_poly_first = j & 2 == 0;

        // Extended-precision modular arithmetic: x - j·π/4 in three parts.
        let mut r = fma(yf, MINUS_DP1, ax);
        r = fma(yf, MINUS_DP2, r);
        r = fma(yf, MINUS_DP3, r);

        let z = r * r;
        let mut c = fma(COSCOF[0], z, COSCOF[1]);
        c = fma(c, z, COSCOF[2]);
        c *= z;
        c = fma(c, z, -(z * 0.5));
        c += 1.0;

        let mut s = fma(SINCOF[0], z, SINCOF[1]);
        s = fma(s, z, SINCOF[2]);
        s *= z;
        s = fma(s, r, r);

        // Select as the SIMD code does (masking and adding zeros, which fixes signs of zero).
        let (ysin1, ysin2) = if sin_poly_first { (0.0, s) } else { (c, 0.0) };
        let rest_s = s - ysin2;
        let rest_c = c - ysin1;
        let sin = ysin1 + ysin2;
        let cos = rest_c + rest_s;
        (
            f32::from_bits(sin.to_bits() ^ sign_sin),
            f32::from_bits(cos.to_bits() ^ sign_cos),
        )
    }
}
