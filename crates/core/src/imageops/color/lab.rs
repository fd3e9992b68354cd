//! OpenCV's bit-exact 8-bit Lab conversions (`cv2.cvtColor` with `COLOR_RGB2LAB` and
//! `COLOR_LAB2RGB`, `imgproc/src/color_lab.cpp`), from its fixed-point tables.
//!
//! The tables are built once, from f32/f64 arithmetic that reproduces OpenCV's softfloat
//! initialisation; [`checksums`] exposes their sums for testing against the known values.

use std::sync::LazyLock;

/// Entries of the sRGB gamma table (one per 8-bit value).
const GAMMA_SIZE: usize = 256;
/// Entries of the cube-root table (`LAB_CBRT_TAB_SIZE_B`: 256·3/2·8).
const CBRT_SIZE: usize = 3072;
/// Entries of the inverse gamma table (`INV_GAMMA_TAB_SIZE`).
const INV_GAMMA_SIZE: usize = 4096;
/// Offset of index 0 in the a/b table (`minABvalue` negated).
const AB_OFFSET: i32 = 8145;
/// Entries of the a/b table: indices −8145 … 28718.
const AB_SIZE: usize = 8145 + 28719;

/// The fixed-point tables of OpenCV's integer Lab path.
struct Tables {
    /// `sRGBGammaTab_b`: linear light × 2040 per 8-bit value.
    gamma: [u16; GAMMA_SIZE],
    /// `LabCbrtTab_b`: f(t) × 32768 for t = i / 2040.
    cbrt: Vec<u16>,
    /// `sRGBInvGammaTab_b`: 8-bit sRGB for linear light i / 4096.
    inv_gamma: Vec<u16>,
    /// `LabToYF_b`: (y, ify) per L byte.
    yf: [(i32, i32); 256],
    /// `abToXZ_b`: the inverse of f for the a/b terms.
    ab: Vec<i32>,
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| Tables {
    gamma: std::array::from_fn(gamma_entry),
    cbrt: (0..CBRT_SIZE).map(cbrt_entry).collect(),
    inv_gamma: (0..INV_GAMMA_SIZE).map(inv_gamma_entry).collect(),
    yf: std::array::from_fn(yf_entry),
    ab: (0..AB_SIZE as i32)
        .map(|i| ab_entry(i - AB_OFFSET))
        .collect(),
});

/// Round half to even of an f32, to an integer (`cvRound` of a softfloat).
fn rne(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// `G[i] = rne(f32(2040·f32(γ(f32(i/255)))))`, γ the sRGB decoding curve in f64.
fn gamma_entry(i: usize) -> u16 {
    let x = f64::from(i as f32 / 255.0f32);
    let linear = if x <= 0.04045 {
        x / 12.92
    } else {
        ((x + 0.055) / 1.055).powf(2.4)
    };
    rne(2040.0f32 * linear as f32) as u16
}

/// `C[i] = rne(32768·f(x))`, `x = f32(f32(1/2040)·i)`, with Lab's `f` (linear below
/// 216/24389, OpenCV's cube root above).
fn cbrt_entry(i: usize) -> u16 {
    let x = (1.0f32 / 2040.0f32) * i as f32;
    let threshold = 216.0f32 / 24389.0f32;
    let v = if x < threshold {
        let scale = 841.0f32 / 108.0f32;
        let bias = 16.0f32 / 116.0f32;
        // mulAdd: one rounding of the exact x·scale + bias.
        f64::from(x).mul_add(f64::from(scale), f64::from(bias)) as f32
    } else {
        cbrt_cv(x)
    };
    rne(32768.0f32 * v) as u16
}

/// Numerator of Turkowski's quartic rational approximation of the cube root on [1/8, 1)
/// (highest power first); the f64 values of the published decimal constants.
const CBRT_NUM: [f64; 5] = [
    45.254_833_975_680_3,
    192.279_836_835_506_1,
    119.165_482_428_558_16,
    13.432_501_390_862_399,
    0.163_616_122_658_575_42,
];

/// Denominator of the same approximation (highest power first, constant term 1).
const CBRT_DEN: [f64; 4] = [
    14.808_840_932_191_346,
    151.971_405_104_443_56,
    168.525_441_410_156_82,
    33.990_594_135_021_56,
];

/// OpenCV's softfloat `cbrt` for positive normal f32: Turkowski's rational approximation of
/// the cube root of the mantissa reduced to [1/8, 1), in f64, with the result's mantissa
/// truncated (not rounded) to 23 bits.
fn cbrt_cv(x: f32) -> f32 {
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    // shx ≡ exponent (mod 3), shx ∈ {−3, −2, −1}, using C's truncating remainder.
    let mut shx = exponent % 3;
    if shx >= 0 {
        shx -= 3;
    }
    let root_exponent = (exponent - shx) / 3;
    let mantissa = f64::from(f32::from_bits((bits & 0x007f_ffff) | (127u32 << 23)));
    let fr = mantissa * 2f64.powi(shx);
    let [n0, n1, n2, n3, n4] = CBRT_NUM;
    let [d0, d1, d2, d3] = CBRT_DEN;
    let num = (((n0 * fr + n1) * fr + n2) * fr + n3) * fr + n4;
    let den = (((d0 * fr + d1) * fr + d2) * fr + d3) * fr + 1.0;
    let root = num / den;
    // Truncate the f64 mantissa to f32's 23 bits; exact in f32 afterwards.
    let truncated = f64::from_bits(root.to_bits() & !((1u64 << 29) - 1)) as f32;
    truncated * 2f32.powi(root_exponent)
}

/// `IG[i] = rne(f32(255·f32(γ⁻¹(i/4096))))`, γ⁻¹ the sRGB encoding curve in f64.
fn inv_gamma_entry(i: usize) -> u16 {
    let x = i as f64 / 4096.0;
    let encoded = if x <= 0.0031308 {
        12.92 * x
    } else {
        1.055 * x.powf(1.0 / 2.4) - 0.055
    };
    rne(255.0f32 * encoded as f32) as u16
}

/// `(y, ify)` for an L byte: Y × 4096 and f(Y) × 16384 (the `LabToYF_b` table).
fn yf_entry(l: usize) -> (i32, i32) {
    let lf = l as f32;
    if l <= 20 {
        let y = rne((2_949_120.0f32 * lf) / 414_613.0f32);
        let f = 16.0f32 / 116.0f32 + (5.0f32 * lf) / 1479.0f32;
        (y, rne(16384.0f32 * f))
    } else {
        let fy = (1_638_400.0f32 * lf) / 29580.0f32 + 262_144.0f32 / 116.0f32;
        let y = rne(fy * fy * fy / 268_435_456.0f32);
        (y, rne(fy))
    }
}

/// The a/b table entry for index `i` (C truncating division).
fn ab_entry(i: i32) -> i32 {
    if i <= 3390 {
        108 * i / 841 - 290
    } else {
        (i * i / 16384) * i / 16384
    }
}

/// Sums of the tables, in the order G, C, IG, YF (y and ify), AB — for comparison with
/// OpenCV's: 162416, 86529539, 720284, 3605472, 626487776.
pub fn checksums() -> [i64; 5] {
    let t = &*TABLES;
    [
        t.gamma.iter().map(|&v| i64::from(v)).sum(),
        t.cbrt.iter().map(|&v| i64::from(v)).sum(),
        t.inv_gamma.iter().map(|&v| i64::from(v)).sum(),
        t.yf.iter().map(|&(y, f)| i64::from(y) + i64::from(f)).sum(),
        t.ab.iter().map(|&v| i64::from(v)).sum(),
    ]
}

/// A Lab converter holding a reference to the shared tables.
#[derive(Clone, Copy)]
pub(crate) struct Lab {
    t: &'static Tables,
}

impl Lab {
    /// The converter (builds the tables on first use).
    pub(crate) fn get() -> Self {
        Lab { t: &TABLES }
    }

    /// `cv2.COLOR_RGB2LAB` of one 8-bit pixel.
    #[inline(always)]
    pub(crate) fn rgb_to_lab(self, [r, g, b]: [u8; 3]) -> [u8; 3] {
        let t = self.t;
        let (r, g, b) = (
            i32::from(t.gamma[usize::from(r)]),
            i32::from(t.gamma[usize::from(g)]),
            i32::from(t.gamma[usize::from(b)]),
        );
        let x = (1777 * r + 1541 * g + 778 * b + 2048) >> 12;
        let y = (871 * r + 2929 * g + 296 * b + 2048) >> 12;
        let z = (73 * r + 448 * g + 3575 * b + 2048) >> 12;
        let fx = i32::from(t.cbrt[x as usize]);
        let fy = i32::from(t.cbrt[y as usize]);
        let fz = i32::from(t.cbrt[z as usize]);
        let l = (296 * fy - 1_336_934 + 16384) >> 15;
        let a = (500 * (fx - fy) + 4_210_688) >> 15;
        let bb = (200 * (fy - fz) + 4_210_688) >> 15;
        [byte(l), byte(a), byte(bb)]
    }

    /// `cv2.COLOR_LAB2RGB` of one 8-bit pixel.
    #[inline(always)]
    pub(crate) fn lab_to_rgb(self, [l, a, b]: [u8; 3]) -> [u8; 3] {
        let t = self.t;
        let (y, ify) = t.yf[usize::from(l)];
        let adiv = ((5 * i32::from(a) * 53687 + 128) >> 13) - 4194;
        let bdiv = ((i32::from(b) * 41943 + 16) >> 9) - 10484;
        let x = t.ab[(ify + adiv + AB_OFFSET) as usize];
        let z = t.ab[(ify - bdiv + AB_OFFSET) as usize];
        let r = (12615 * x - 6296 * y - 2223 * z + 8192) >> 14;
        let g = (-3773 * x + 7684 * y + 185 * z + 8192) >> 14;
        let bl = (217 * x - 836 * y + 4715 * z + 8192) >> 14;
        [self.encode(r), self.encode(g), self.encode(bl)]
    }

    /// Linear light (0–4095, clamped) to an sRGB byte.
    #[inline(always)]
    fn encode(self, v: i32) -> u8 {
        self.t.inv_gamma[v.clamp(0, INV_GAMMA_SIZE as i32 - 1) as usize] as u8
    }
}

/// Clamps to a byte.
#[inline(always)]
fn byte(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbrt_is_accurate_and_truncates() {
        for x in [0.01f32, 0.125, 0.5, 1.0, 0.3] {
            assert!(
                (f64::from(cbrt_cv(x)) - f64::from(x).cbrt()).abs() < 1e-6,
                "{x}"
            );
        }
        assert_eq!(cbrt_entry(324), 17745);
    }

    #[test]
    fn extremes_convert() {
        let lab = Lab::get();
        assert_eq!(lab.rgb_to_lab([0, 0, 0]), [0, 128, 128]);
        assert_eq!(lab.rgb_to_lab([255, 255, 255]), [255, 128, 128]);
        assert_eq!(lab.lab_to_rgb([255, 128, 128]), [255, 255, 255]);
        assert_eq!(lab.lab_to_rgb([0, 128, 128]), [0, 0, 0]);
    }
}
