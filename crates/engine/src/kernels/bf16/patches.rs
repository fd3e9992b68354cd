//! A 3×3 (or any odd-sized), stride-1 convolution's patch matrix packed into bf16 straight
//! from the image, as the right operand of `kernel · patches`: no f32 patch matrix is built
//! and packed again. Each strip of 16 output pixels (within one output row: the output width
//! is a multiple of 16) takes, for each pair of kernel taps `(c_in, kh, kw)`, two masked loads
//! of 16 input values (zeros in the padding), rounded to bf16 and interleaved: with
//! `vcvtne2ps2bf16` and one permutation where the CPU has AVX512-BF16 (which, unlike the other
//! packings, flushes subnormal inputs, |x| < 1.2e-38, to zero), with integer rounding otherwise.

use super::pack::{PackedRhs, padded_k};
use super::scalar::TILE;
use rayon::prelude::*;
use std::ops::Range;

/// The sizes the packing needs: input channels and size, kernel side, the zero rows above
/// and columns left of the input, and the output width.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only x86 packs directly.
pub(crate) struct Patches {
    pub(crate) cin: usize,
    pub(crate) height: usize,
    pub(crate) width: usize,
    pub(crate) k: usize,
    pub(crate) top: usize,
    pub(crate) left: usize,
    pub(crate) out_w: usize,
}

impl Patches {
    /// Whether this CPU and these sizes take the direct packing (stride 1 is the caller's).
    pub(crate) fn supported(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.out_w.is_multiple_of(16)
                && self.out_w > 0
                && self.k <= 8
                && super::simd::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The patch matrix of output rows `y0..y0 + rows` (`(c_in·k·k) × (rows·out_w)`), packed
    /// into `buffer` (reused when long enough), strips on candle's threads.
    pub(crate) fn pack(
        &self,
        buffer: Vec<u16>,
        image: &[f32],
        y0: usize,
        rows: usize,
    ) -> PackedRhs {
        let depth = self.cin * self.k * self.k;
        let n = rows * self.out_w;
        assert!(self.supported(), "direct patch packing unsupported here");
        assert!(image.len() >= self.cin * self.height * self.width);
        let strip_len = 16 * padded_k(depth);
        let native = self.native();
        PackedRhs::filled(buffer, depth, n, |data| {
            data.par_chunks_mut(strip_len)
                .enumerate()
                .for_each(|(s, strip)| {
                    self.strip(image, strip, y0 * self.out_w + 16 * s, 0..depth, native)
                });
        })
    }

    /// Strips of the patch matrix of one image for the k chunks `chunks` (of 32), the
    /// operand of a product's k block: strip `s` (`chunks.len()` packed tiles) holds output
    /// pixels `p0 + 16s..` (`p0` a multiple of 16), `strips` of them one after another.
    pub(crate) fn pack_panel(
        &self,
        image: &[f32],
        buffer: &mut [u16],
        (p0, strips): (usize, usize),
        chunks: Range<usize>,
    ) {
        assert!(self.supported(), "direct patch packing unsupported here");
        assert!(image.len() >= self.cin * self.height * self.width);
        assert!(p0.is_multiple_of(16), "panel from pixel {p0}");
        let len = chunks.len() * TILE;
        let native = self.native();
        let taps = 32 * chunks.start..32 * chunks.end;
        for (s, strip) in buffer[..strips * len].chunks_exact_mut(len).enumerate() {
            self.strip(image, strip, p0 + 16 * s, taps.clone(), native);
        }
    }

    /// Whether the rounding may use `vcvtne2ps2bf16`.
    fn native(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            super::native_conversion()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The strip of the 16 output pixels from pixel `p` (a multiple of 16) of the image, taps
    /// `taps` (from an even one), zeros after the last.
    fn strip(&self, image: &[f32], strip: &mut [u16], p: usize, taps: Range<usize>, native: bool) {
        let at = (p / self.out_w, p % self.out_w);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported` checked the features (and `native` AVX512-BF16); the callers
        // checked the image's length, and `at` is inside the output.
        unsafe {
            if native {
                x86::strip_native(self, image, strip, at, taps)
            } else {
                x86::strip(self, image, strip, at, taps)
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (image, strip, at, taps, native);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd::rounded_high;
    use super::Patches;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The strip of output pixels `(y, x0..x0 + 16)`: pair `p` holds taps `2p` and `2p + 1`
    /// of each of the 16 pixels, interleaved; zero past the taps.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512BW; `image` holds the whole input; `strip` is one strip;
    /// `g.k` ≤ 8.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn strip(
        g: &Patches,
        image: &[f32],
        strip: &mut [u16],
        at: (usize, usize),
        taps: Range<usize>,
    ) {
        // SAFETY: the caller's guarantees.
        unsafe { strip_with::<false>(g, image, strip, at, taps) }
    }

    /// [`strip`] rounding with AVX512-BF16's `vcvtne2ps2bf16`.
    ///
    /// # Safety
    /// As [`strip`], and the CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn strip_native(
        g: &Patches,
        image: &[f32],
        strip: &mut [u16],
        at: (usize, usize),
        taps: Range<usize>,
    ) {
        // SAFETY: the caller's guarantees.
        unsafe { strip_with::<true>(g, image, strip, at, taps) }
    }

    /// Taps `even` and `odd` of 16 pixels (f32 bits) as 16 interleaved bf16 pairs.
    #[inline(always)]
    unsafe fn pairs<const NATIVE: bool>(even: __m512i, odd: __m512i) -> __m512i {
        // SAFETY: the caller has AVX512F and AVX512BW, and AVX512-BF16 when `NATIVE`; the
        // vector types are plain bit containers of the same size.
        unsafe {
            if NATIVE {
                // Words 0–15 are `even`'s bf16, 16–31 `odd`'s; interleave them.
                let both = _mm512_cvtne2ps_pbh(_mm512_castsi512_ps(odd), _mm512_castsi512_ps(even));
                let order = _mm512_set_epi16(
                    31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                    5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
                );
                return _mm512_permutexvar_epi16(
                    order,
                    std::mem::transmute::<__m512bh, __m512i>(both),
                );
            }
            let (even, odd) = (rounded_high(even), rounded_high(odd));
            _mm512_mask_blend_epi16(0xaaaa_aaaa, _mm512_srli_epi32::<16>(even), odd)
        }
    }

    /// The body of both (no closures around intrinsics: they would not inherit the callers'
    /// target features): taps `taps` (from an even one) into `strip`, zeros past the last.
    #[inline(always)]
    unsafe fn strip_with<const NATIVE: bool>(
        g: &Patches,
        image: &[f32],
        strip: &mut [u16],
        (y, x0): (usize, usize),
        taps: Range<usize>,
    ) {
        let plane = g.height * g.width;
        // The lanes of each column tap inside the image row: lane `l` reads column
        // `x0 + kw + l − left`, inside for `l` in `left − x0 − kw .. width + left − x0 − kw`.
        let mut masks = [0u16; 8];
        for (kw, mask) in masks.iter_mut().enumerate().take(g.k) {
            let shift = (x0 + kw) as isize - g.left as isize;
            let lo = (-shift).clamp(0, 16) as u32;
            let hi = (g.width as isize - shift).clamp(0, 16) as u32;
            let below = |n: u32| ((1u32 << n) - 1) as u16;
            *mask = below(hi) & !below(lo);
        }
        let taps = taps.start..taps.end.min(g.cin * g.k * g.k);
        let mut pairs_out = strip.chunks_exact_mut(32);
        // The tap `(ci, kh, kw)` the walk is at, and where its image row starts.
        let (mut ci, mut kh, mut kw) = (
            taps.start / (g.k * g.k),
            taps.start / g.k % g.k,
            taps.start % g.k,
        );
        let row_of = |ci: usize, kh: usize| {
            let iy = (y + kh) as isize - g.top as isize;
            let inside = iy >= 0 && iy < g.height as isize;
            let row = (ci * plane) as isize + iy * g.width as isize + x0 as isize - g.left as isize;
            (inside, row)
        };
        let (mut inside, mut row) = row_of(ci, kh);
        // SAFETY (block): the caller has the features; loads read only the lanes inside the
        // image row (masked lanes never fault), which lie inside `image`; stores write whole
        // 32-element pairs of the strip.
        unsafe {
            let mut pending: Option<__m512i> = None;
            for _ in taps {
                let v = if inside {
                    let at = image.as_ptr().wrapping_offset(row + kw as isize);
                    _mm512_maskz_loadu_epi32(masks[kw], at.cast())
                } else {
                    _mm512_setzero_si512()
                };
                match pending.take() {
                    None => pending = Some(v),
                    Some(even) => {
                        if let Some(dst) = pairs_out.next() {
                            let pair = pairs::<NATIVE>(even, v);
                            _mm512_storeu_si512(dst.as_mut_ptr().cast(), pair);
                        }
                    }
                }
                kw += 1;
                if kw == g.k {
                    kw = 0;
                    kh += 1;
                    if kh == g.k {
                        kh = 0;
                        ci += 1;
                    }
                    (inside, row) = row_of(ci, kh);
                }
            }
            if let (Some(even), Some(dst)) = (pending, pairs_out.next()) {
                let pair = pairs::<NATIVE>(even, _mm512_setzero_si512());
                _mm512_storeu_si512(dst.as_mut_ptr().cast(), pair);
            }
        }
        for rest in pairs_out {
            rest.fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panel of strips packed for a range of k chunks holds the same bits as those chunks
    /// of the whole patch matrix packed at once: from the first chunk and from a later one,
    /// through the last (partly padded) chunk, from a later row of the image.
    #[test]
    fn panels_equal_chunks_of_the_whole_patch_matrix() {
        let g = Patches {
            cin: 7,
            height: 6,
            width: 32,
            k: 3,
            top: 1,
            left: 1,
            out_w: 32,
        };
        if !g.supported() {
            println!("skipping: no direct patch packing on this CPU");
            return;
        }
        let image: Vec<f32> = (0..g.cin * g.height * g.width)
            .map(|i| ((i * 7919 % 1009) as f32 / 504.5) - 1.0)
            .collect();
        let depth = g.cin * g.k * g.k;
        let whole = g.pack(Vec::new(), &image, 0, g.height);
        let (kp, data) = (padded_k(depth), whole.data());
        let chunks = kp / 32;
        for range in [0..1, 1..chunks, 0..chunks] {
            // Strips 3.. (from pixel 48: row 1, column 16) onwards, four of them.
            let (first, strips) = (3, 4);
            let len = range.len() * TILE;
            let mut panel = vec![0xffff_u16; strips * len];
            g.pack_panel(&image, &mut panel, (16 * first, strips), range.clone());
            for s in 0..strips {
                let from = (first + s) * 16 * kp + range.start * TILE;
                assert_eq!(
                    panel[s * len..][..len],
                    data[from..][..len],
                    "strip {s}, chunks {range:?}"
                );
            }
        }
    }
}
