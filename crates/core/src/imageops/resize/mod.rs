//! Pillow-compatible resizing (Pillow 9.5 `Image.resize`, `libImaging/Resample.c`) and A1111's
//! three resize modes.
//!
//! The arithmetic is Pillow's: f64 filter weights normalised per output pixel, converted to
//! 22-bit fixed point; two separable passes with i32 accumulators, the horizontal pass first
//! (Pillow ≤ 12) over only the rows the vertical pass reads, each pass clipped to `u8`. Images
//! with alpha are premultiplied around the resize, as Pillow's `RGBa`/`La` modes do. The
//! results are bit-exact with Pillow 9.5.
//!
//! - `resample`: [`lanczos`] and [`resize_box`], Pillow's `Image.resize`;
//! - `kernel`: the filters, the fixed-point coefficients and the portable row kernels;
//! - `pass`: the two separable passes; `avx2`: their AVX2 kernels;
//! - `modes`: [`resize_image`], A1111's resize modes on top of the resampler;
//! - `area`: [`area_downscale`], shrinking by area averaging (OpenCV's `INTER_AREA`).

mod area;
mod avx2;
mod kernel;
mod modes;
mod pass;
mod resample;

pub use area::area_downscale;
pub use kernel::Filter;
pub use modes::resize_image;
pub use resample::{lanczos, resize_box};
