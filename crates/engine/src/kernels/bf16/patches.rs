//! A 3×3 (or any odd-sized), stride-1 convolution's patch matrix packed into bf16 straight
//! from the image, as the right operand of `kernel · patches`: no f32 patch matrix is built
//! and packed again. Each strip of 16 output pixels (within one output row: the output width
//! is a multiple of 16) takes, for each pair of kernel taps `(c_in, kh, kw)`, two masked loads
//! of 16 input values (zeros in the padding), rounded to bf16 and interleaved: with
//! `vcvtne2ps2bf16` and one permutation where the CPU has AVX512-BF16 (which, unlike the other
//! packings, flushes subnormal inputs, |x| < 1.2e-38, to zero), with integer rounding otherwise.

use super::pack::{PackedRhs, padded_k};
use rayon::prelude::*;

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
        #[cfg(target_arch = "x86_64")]
        let native = super::native_conversion();
        PackedRhs::filled(buffer, depth, n, |data| {
            data.par_chunks_mut(strip_len)
                .enumerate()
                .for_each(|(s, strip)| {
                    let p0 = 16 * s;
                    let (y, x0) = (y0 + p0 / self.out_w, p0 % self.out_w);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `supported` checked the features (and `native` AVX512-BF16);
                    // the strip is whole.
                    unsafe {
                        if native {
                            x86::strip_native(self, image, strip, y, x0)
                        } else {
                            x86::strip(self, image, strip, y, x0)
                        }
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (strip, y, x0);
                });
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd::rounded_high;
    use super::Patches;
    use std::arch::x86_64::*;

    /// The strip of output pixels `(y, x0..x0 + 16)`: pair `p` holds taps `2p` and `2p + 1`
    /// of each of the 16 pixels, interleaved; zero past the taps.
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512BW; `image` holds the whole input; `strip` is one strip;
    /// `g.k` ≤ 8.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn strip(g: &Patches, image: &[f32], strip: &mut [u16], y: usize, x0: usize) {
        // SAFETY: the caller's guarantees.
        unsafe { strip_with::<false>(g, image, strip, y, x0) }
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
        y: usize,
        x0: usize,
    ) {
        // SAFETY: the caller's guarantees.
        unsafe { strip_with::<true>(g, image, strip, y, x0) }
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
    /// target features).
    #[inline(always)]
    unsafe fn strip_with<const NATIVE: bool>(
        g: &Patches,
        image: &[f32],
        strip: &mut [u16],
        y: usize,
        x0: usize,
    ) {
        let plane = g.height * g.width;
        // The lanes of each column tap inside the image row.
        let mut masks = [0u16; 8];
        for (kw, mask) in masks.iter_mut().enumerate().take(g.k) {
            for lane in 0..16 {
                let ix = (x0 + kw + lane) as isize - g.left as isize;
                if ix >= 0 && ix < g.width as isize {
                    *mask |= 1 << lane;
                }
            }
        }
        let mut pairs_out = strip.chunks_exact_mut(32);
        // SAFETY (block): the caller has the features; loads read only the lanes inside the
        // image row (masked lanes never fault), which lie inside `image`; stores write whole
        // 32-element pairs of the strip.
        unsafe {
            let mut pending: Option<__m512i> = None;
            for ci in 0..g.cin {
                for kh in 0..g.k {
                    let iy = (y + kh) as isize - g.top as isize;
                    let inside = iy >= 0 && iy < g.height as isize;
                    let row = (ci * plane) as isize + iy * g.width as isize + x0 as isize
                        - g.left as isize;
                    for (kw, &mask) in masks.iter().enumerate().take(g.k) {
                        let v = if inside {
                            let at = image.as_ptr().wrapping_offset(row + kw as isize);
                            _mm512_maskz_loadu_epi32(mask, at.cast())
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
                    }
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
