//! A 3×3 (or any odd-sized), stride-1 convolution's patch matrix packed into bf16 straight
//! from the image, as the right operand of `kernel · patches`: no f32 patch matrix is built
//! and packed again. Each strip of 16 output pixels (within one output row: the output width
//! is a multiple of 16) takes, for each pair of kernel taps `(c_in, kh, kw)`, two masked loads
//! of 16 input values (zeros in the padding), rounded to bf16 and interleaved.

use super::pack::{PackedRhs, padded_k};
use rayon::prelude::*;

/// The sizes the packing needs: input channels and size, kernel side, the zero rows above
/// and columns left of the input, and the output width.
#[derive(Debug, Clone, Copy)]
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
        PackedRhs::filled(buffer, depth, n, |data| {
            data.par_chunks_mut(strip_len)
                .enumerate()
                .for_each(|(s, strip)| {
                    let p0 = 16 * s;
                    let (y, x0) = (y0 + p0 / self.out_w, p0 % self.out_w);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `supported` checked the features; the strip is whole.
                    unsafe {
                        x86::strip(self, image, strip, y, x0)
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
        let mut pairs = strip.chunks_exact_mut(32);
        let store = |pairs: &mut std::slice::ChunksExactMut<u16>, even: __m512i, odd: __m512i| {
            let (even, odd) = (rounded_high(even), rounded_high(odd));
            let pair = _mm512_mask_blend_epi16(0xaaaa_aaaa, _mm512_srli_epi32::<16>(even), odd);
            if let Some(dst) = pairs.next() {
                // SAFETY: 32 elements.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), pair) };
            }
        };
        let mut pending = None;
        for ci in 0..g.cin {
            for kh in 0..g.k {
                let iy = (y + kh) as isize - g.top as isize;
                let inside = iy >= 0 && iy < g.height as isize;
                let row =
                    (ci * plane) as isize + iy * g.width as isize + x0 as isize - g.left as isize;
                for (kw, &mask) in masks.iter().enumerate().take(g.k) {
                    let v = if inside {
                        let at = image.as_ptr().wrapping_offset(row + kw as isize);
                        // SAFETY: only the lanes inside the image row are read (masked
                        // lanes never fault), and those lie inside `image`.
                        unsafe { _mm512_maskz_loadu_epi32(mask, at.cast()) }
                    } else {
                        _mm512_setzero_si512()
                    };
                    match pending.take() {
                        None => pending = Some(v),
                        Some(even) => store(&mut pairs, even, v),
                    }
                }
            }
        }
        if let Some(even) = pending {
            store(&mut pairs, even, _mm512_setzero_si512());
        }
        for rest in pairs {
            rest.fill(0);
        }
    }
}
