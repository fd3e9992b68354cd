//! Image operations on 8-bit `image` buffers: Pillow-exact filters and enhancements, the
//! finishing chain, Pillow-compatible Lanczos resizing with A1111's resize modes, and A1111's
//! colour correction. All of them are pure functions of their inputs.

pub mod color;
pub mod enhance;
pub mod filter;
pub mod finish;
pub mod resize;
