//! blendmodes 2022 `blendLayers(background, foreground, BlendType.LUMINOSITY)` for two opaque
//! RGB images: the background's colour with the foreground's luminosity (`_setLum`), in f64,
//! truncated to `u8` as blendmodes 2022 does.

/// `v / 255` in f64 for every byte (`imageIntToFloat`), exactly as the division gives it.
const UNIT: [f64; 256] = {
    let mut table = [0.0; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i as f64 / 255.0;
        i += 1;
    }
    table
};

/// `lum(c) = (r·0.299 + g·0.587) + b·0.114`.
#[inline(always)]
fn lum(c: [f64; 3]) -> f64 {
    (c[0] * 0.299 + c[1] * 0.587) + c[2] * 0.114
}

/// One pixel of the luminosity blend of `foreground` over `background`.
///
/// With opaque layers the composite is exactly the blended colour; `NaN` (possible only for
/// a degenerate 0/0 in the clip step, as in numpy) becomes 0, as numpy's cast does on x86-64.
#[inline(always)]
pub fn blend_pixel(background: [u8; 3], foreground: [u8; 3]) -> [u8; 3] {
    let b = background.map(|v| UNIT[usize::from(v)]);
    let f = foreground.map(|v| UNIT[usize::from(v)]);
    let delta = lum(f) - lum(b);
    let mut c = b.map(|v| v + delta);
    let l = lum(c);
    let mn = c[0].min(c[1]).min(c[2]);
    let mx = c[0].max(c[1]).max(c[2]);
    if mn < 0.0 {
        c = c.map(|v| l + ((v - l) * l) / (l - mn));
    }
    if mx > 1.0 {
        c = c.map(|v| l + ((v - l) * (1.0 - l)) / (mx - l));
    }
    c.map(to_byte)
}

/// `(clip(v, 0, 1) · 255).astype(uint8)`: truncation; NaN gives 0.
#[inline(always)]
fn to_byte(v: f64) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_table_is_the_division() {
        for v in 0..=255u8 {
            assert_eq!(
                UNIT[usize::from(v)].to_bits(),
                (f64::from(v) / 255.0).to_bits()
            );
        }
    }

    #[test]
    fn grey_over_grey_takes_the_foreground() {
        assert_eq!(blend_pixel([100, 100, 100], [40, 40, 40]), [40, 40, 40]);
    }

    #[test]
    fn keeps_hue_and_clips_into_range() {
        let out = blend_pixel([255, 0, 0], [255, 255, 255]);
        assert_eq!(out, [255, 254, 254]);
        let out = blend_pixel([0, 0, 255], [0, 0, 0]);
        assert_eq!(out, [0, 0, 0]);
    }
}
