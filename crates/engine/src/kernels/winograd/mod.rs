//! Winograd convolution for 3×3 kernels with stride 1 and padding 1 (f32, CPU), in two
//! tile sizes: F(2×2, 3×3) and F(4×4, 3×3).
//!
//! Each m×m block of output pixels comes from a t×t input tile `d` (t = m + 2) and the 3×3
//! kernel `g` as `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Summed over input channels, the
//! element-wise products become t² matrix products `M_ξ = U_ξ · V_ξ` (`U_ξ`: c_out × c_in
//! transformed kernels, `V_ξ`: c_in × tiles transformed inputs). Multiplications per output
//! pixel and input channel: 9 for direct convolution, 4 for F(2×2) (2.25× fewer), 2.25 for
//! F(4×4) (4× fewer) — and those matrix products dominate a UNet step.
//!
//! F(2×2)'s transforms use only ±1 and ½, so it differs from direct convolution by rounding
//! only. F(4×4)'s use the points 0, ±1, ±2 and lose more precision: about 4e-6 of the
//! output's scale against an f64 direct convolution, where F(2×2) stays below 2e-6 (see the
//! tests) — far below f16 rounding (5e-4), and below the diffusers parity tolerances. Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks" (2015).

use rayon::prelude::*;

use std::sync::Mutex;

use crate::kernels::fastmath::dispatch;
use crate::kernels::gemm::gemm_f32;

/// Tiles transformed together, one per vector lane.
const LANES: usize = 16;

/// Where the tiles of a batch lie: the input's channels and size, tiles per row and per
/// image.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    cin: usize,
    h: usize,
    w: usize,
    tiles_w: usize,
    per_image: usize,
}

/// `mat · x · matᵀ` for [`LANES`] independent T×T matrices `x` at once, lane by lane (the
/// transforms `Bᵀ d B` and `Aᵀ M A`; zeros of the constant `mat` are skipped).
#[inline(always)]
fn sandwich<const R: usize, const T: usize>(
    mat: &[[f32; T]; R],
    x: &[[[f32; LANES]; T]; T],
) -> [[[f32; LANES]; R]; R] {
    let mut left = [[[0f32; LANES]; T]; R];
    for i in 0..R {
        for k in 0..T {
            let coefficient = mat[i][k];
            if coefficient == 0.0 {
                continue;
            }
            for j in 0..T {
                for l in 0..LANES {
                    left[i][j][l] += coefficient * x[k][j][l];
                }
            }
        }
    }
    let mut out = [[[0f32; LANES]; R]; R];
    for i in 0..R {
        for j in 0..R {
            for k in 0..T {
                let coefficient = mat[j][k];
                if coefficient == 0.0 {
                    continue;
                }
                for l in 0..LANES {
                    out[i][j][l] += left[i][k][l] * coefficient;
                }
            }
        }
    }
    out
}

/// Bytes of transformed input (and of products) handled at once: below the allocator's
/// mmap threshold (`engine/allocator.rs`), so the buffers are reused, not mapped afresh.
const CHUNK_BYTES: usize = 30 << 20;

/// F(4×4) is worth it from this many tiles in a batch of images on, F(2×2) from
/// [`MIN_TILES_F2`] (below, transforming the kernels costs more than the products save).
/// Measured on SD 1.5's 1280 → 1280 convolutions, batch 2, 2-core Zen 3 (`examples/conv_bf16`,
/// best of three alternating runs): at 16² (32 F(4×4) tiles) F(2×2) took 53 ms and F(4×4)
/// 58 ms; at 8² (32 F(2×2) tiles) F(2×2) took 23 ms and the direct product 28 ms.
pub const MIN_TILES_F4: usize = 64;

/// See [`MIN_TILES_F4`].
pub const MIN_TILES_F2: usize = 32;

/// The Winograd variant for a 3×3 stride-1 convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// F(2×2, 3×3): 4×4 input tiles.
    F2,
    /// F(4×4, 3×3): 6×6 input tiles.
    F4,
}

impl Variant {
    /// The largest variant with enough tiles ([`MIN_TILES_F4`], [`MIN_TILES_F2`]) on `batch`
    /// images of `h × w`, if any.
    pub fn for_images(batch: usize, h: usize, w: usize) -> Option<Variant> {
        if batch * h.div_ceil(4) * w.div_ceil(4) >= MIN_TILES_F4 {
            Some(Variant::F4)
        } else if batch * h.div_ceil(2) * w.div_ceil(2) >= MIN_TILES_F2 {
            Some(Variant::F2)
        } else {
            None
        }
    }

    /// Side of the input tile (t).
    fn tile(self) -> usize {
        match self {
            Variant::F2 => 4,
            Variant::F4 => 6,
        }
    }

    /// Output channels whose transformed kernels are made and used together: as many as fit
    /// in [`KERNEL_BLOCK_BYTES`], a multiple of 16 (at least 16), at most all of them.
    fn kernel_block(self, cin: usize, cout: usize) -> usize {
        let per_channel = self.tile() * self.tile() * cin * 4;
        let fit = (KERNEL_BLOCK_BYTES / per_channel.max(1)) / 16 * 16;
        fit.max(16).min(cout)
    }

    /// Adds the convolution of `batch` images (`batch × cin × h × w`) with the OIHW 3×3
    /// kernel `w` (`cout × cin × 3 × 3`, f32 or bf16) to `out` (`batch × cout × h × w`,
    /// already holding the bias). The tiles of all images share each matrix product, and the
    /// t² products run side by side, each on one thread.
    pub fn convolve(
        self,
        images: &[f32],
        dims: (usize, usize, usize, usize),
        w: Kernel,
        cout: usize,
        out: &mut [f32],
    ) {
        let block = self.kernel_block(dims.1, cout);
        self.convolve_blocked(images, dims, w, cout, out, block);
    }

    /// [`Variant::convolve`] with the kernels transformed `block` output channels at a time.
    fn convolve_blocked(
        self,
        images: &[f32],
        dims: (usize, usize, usize, usize),
        w: Kernel,
        cout: usize,
        out: &mut [f32],
        block: usize,
    ) {
        match self {
            Variant::F2 => f2::convolve_batch(images, dims, w, cout, out, block),
            Variant::F4 => f4::convolve_batch(images, dims, w, cout, out, block),
        }
    }
}

/// A layer's OIHW 3×3 kernel (`cout × cin × 3 × 3`) as the kernel transform reads it.
#[derive(Debug, Clone, Copy)]
pub enum Kernel<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 bits ([`crate::kernels::widened::Bf16Weights`]), widened one output channel at a
    /// time as that channel's kernels are transformed: a layer never holds its whole kernel
    /// in f32 (SD 1.5's 2560 → 1280 one would take 118 MB; `--precision bf16` on a CPU
    /// without bf16 instructions), and the values reach the transform from the cache.
    Bf16(&'a [u16]),
}

impl<'a> Kernel<'a> {
    /// The kernels of output channels `co..co + rows` (each `per_channel` values).
    fn channels(self, co: usize, rows: usize, per_channel: usize) -> Kernel<'a> {
        let range = co * per_channel..(co + rows) * per_channel;
        match self {
            Kernel::F32(w) => Kernel::F32(&w[range]),
            Kernel::Bf16(bits) => Kernel::Bf16(&bits[range]),
        }
    }
}

/// Bytes of transformed kernels made at once (a block of output channels, all input
/// channels, t² points), transformed just before the t² matrix products that read them.
/// Transforming all of a layer's kernels first needed up to 210 MB (SD 1.5's 2560 → 1280
/// channels in F(2×2)); with blocks of this size that convolution took 0.10 s instead of
/// 0.16 s (512², 2-core Zen 3). Smaller blocks are slower: each block's products pack the
/// transformed inputs again (4 MB blocks: 0.23 s).
const KERNEL_BLOCK_BYTES: usize = 64 << 20;

/// The buffers of the convolution running now: transformed inputs `V`, products `M` and a
/// block of transformed kernels `U`. Reused from one convolution to the next (a fresh zeroed
/// set per convolution cost 60 MB of memset each time) and freed by [`release_scratch`].
static WORKSPACE: Mutex<[Vec<f32>; 3]> = Mutex::new([Vec::new(), Vec::new(), Vec::new()]);

/// Runs `f` on buffers of `lens` floats (`V`, `M`, `U`), taken from [`WORKSPACE`] (or fresh
/// when another thread holds it). Their contents are left over from earlier convolutions:
/// `f` must write before it reads.
fn with_workspace<R>(
    lens: [usize; 3],
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    match WORKSPACE.try_lock() {
        Ok(mut guard) => {
            let [v, m, u] = &mut *guard;
            crate::kernels::scratch::grow_scratch(v, lens[0]);
            crate::kernels::scratch::grow_scratch(m, lens[1]);
            crate::kernels::scratch::grow_scratch(u, lens[2]);
            f(&mut v[..lens[0]], &mut m[..lens[1]], &mut u[..lens[2]])
        }
        Err(_) => f(
            &mut vec![0f32; lens[0]],
            &mut vec![0f32; lens[1]],
            &mut vec![0f32; lens[2]],
        ),
    }
}

/// Frees the buffers of the transforms (see [`WORKSPACE`]); for the end of a network pass.
pub fn release_scratch() {
    if let Ok(mut buffers) = WORKSPACE.lock() {
        *buffers = [Vec::new(), Vec::new(), Vec::new()];
    }
}

/// Floats held in [`WORKSPACE`] now.
#[cfg(test)]
pub(crate) fn workspace_floats() -> usize {
    WORKSPACE.lock().map_or(0, |b| b.iter().map(Vec::len).sum())
}

/// Defines a module with `transform_kernel` and `convolve_batch` for output tiles `$m`×`$m`
/// (input tiles `$t`×`$t`) and the transform matrices `Bᵀ`, `G` and `Aᵀ`. The matrices are
/// constants, so the compiler folds their zeros and ones out of the unrolled products.
macro_rules! variant {
    ($name:ident, $m:literal, $t:literal, $bt:expr, $g:expr, $at:expr) => {
        mod $name {
            use super::*;

            const M: usize = $m;
            const T: usize = $t;
            const BT: [[f32; T]; T] = $bt;
            const G: [[f32; 3]; T] = $g;
            const AT: [[f32; T]; M] = $at;

            /// `U = G g Gᵀ` for the output channels whose OIHW kernels are `w`, into `u`
            /// laid out `[c_out][ξ][c_in]` (so `U_ξ` is a matrix with row stride t²·c_in).
            fn transform_kernels(w: Kernel, cin: usize, u: &mut [f32]) {
                let u = u.par_chunks_mut(T * T * cin);
                match w {
                    Kernel::F32(w) => u
                        .zip(w.par_chunks(9 * cin))
                        .for_each(|(out, g)| transform_row(out, g, cin)),
                    Kernel::Bf16(bits) => u.zip(bits.par_chunks(9 * cin)).for_each_init(
                        || vec![0f32; 9 * cin],
                        |g, (out, bits)| {
                            crate::kernels::widened::widen(g, bits);
                            transform_row(out, g, cin)
                        },
                    ),
                }
            }

            dispatch! {
                /// `U = G g Gᵀ` for one output channel: `g` its `cin` 3×3 kernels, `out`
                /// laid out `[ξ][c_in]`.
                pub fn transform_row(out: &mut [f32], g: &[f32], cin: usize) -> () = transform_row_generic
            }

            /// [`transform_row`], 16 input channels at a time so the lanes vectorise (the
            /// last block zero-filled to 16).
            #[inline(always)]
            fn transform_row_generic(out: &mut [f32], w: &[f32], cin: usize) {
                const L: usize = 16;
                let mut ci = 0;
                while ci < cin {
                    let lanes = L.min(cin - ci);
                    let mut g = [[0f32; L]; 9];
                    if lanes == L {
                        let block: &[f32; 9 * L] = w[ci * 9..][..9 * L].try_into().unwrap();
                        for lane in 0..L {
                            for (k, gk) in g.iter_mut().enumerate() {
                                gk[lane] = block[lane * 9 + k];
                            }
                        }
                    } else {
                        for lane in 0..lanes {
                            for (k, gk) in g.iter_mut().enumerate() {
                                gk[lane] = w[(ci + lane) * 9 + k];
                            }
                        }
                    }
                    // G g: T × 3.
                    let mut gg = [[[0f32; L]; 3]; T];
                    for i in 0..T {
                        for j in 0..3 {
                            for lane in 0..L {
                                gg[i][j][lane] = G[i][0] * g[j][lane]
                                    + G[i][1] * g[3 + j][lane]
                                    + G[i][2] * g[6 + j][lane];
                            }
                        }
                    }
                    // (G g) Gᵀ: T × T.
                    for i in 0..T {
                        for j in 0..T {
                            let mut r = [0f32; L];
                            for lane in 0..L {
                                r[lane] = gg[i][0][lane] * G[j][0]
                                    + gg[i][1][lane] * G[j][1]
                                    + gg[i][2][lane] * G[j][2];
                            }
                            let dst = &mut out[(i * T + j) * cin + ci..][..lanes];
                            if lanes == L {
                                let dst: &mut [f32; L] = dst.try_into().unwrap();
                                *dst = r;
                            } else {
                                dst.copy_from_slice(&r[..lanes]);
                            }
                        }
                    }
                    ci += L;
                }
            }

            dispatch! {
                /// `V[ξ][j] = (Bᵀ d B)_ξ` of input channel `ci` for the `n` tiles from `t0`
                /// on (`vc`: that channel's `t² × n` block).
                pub fn input_channel(vc: &mut [f32], images: &[f32], geo: Geometry, ci: usize, t0: usize, n: usize) -> () = input_channel_generic
            }

            /// [`input_channel`], 16 tiles at a time so the transform's lanes vectorise.
            #[inline(always)]
            fn input_channel_generic(
                vc: &mut [f32],
                images: &[f32],
                geo: Geometry,
                ci: usize,
                t0: usize,
                n: usize,
            ) {
                let (h, w) = (geo.h, geo.w);
                let mut j0 = 0;
                while j0 < n {
                    let lanes = LANES.min(n - j0);
                    let mut d = [[[0f32; LANES]; T]; T];
                    for l in 0..lanes {
                        let g = t0 + j0 + l;
                        let (b, t) = (g / geo.per_image, g % geo.per_image);
                        let channel = &images[(b * geo.cin + ci) * h * w..][..h * w];
                        let (ty, tx) = (t / geo.tiles_w, t % geo.tiles_w);
                        for (r, d_row) in d.iter_mut().enumerate() {
                            let y = (M * ty + r) as isize - 1;
                            if y < 0 || y >= h as isize {
                                continue;
                            }
                            let src = &channel[y as usize * w..][..w];
                            for (c, value) in d_row.iter_mut().enumerate() {
                                let x = (M * tx + c) as isize - 1;
                                if x >= 0 && x < w as isize {
                                    value[l] = src[x as usize];
                                }
                            }
                        }
                    }
                    let transformed = sandwich(&BT, &d);
                    for (i, row) in transformed.iter().enumerate() {
                        for (j, lane) in row.iter().enumerate() {
                            vc[(i * T + j) * n + j0..][..lanes].copy_from_slice(&lane[..lanes]);
                        }
                    }
                    j0 += lanes;
                }
            }

            dispatch! {
                /// Adds `Y = Aᵀ M A` of output plane `index` (image `index / cout`, channel
                /// `index % cout`), for the tiles of that image among the `n` from `t0` on.
                pub fn output_plane(plane: &mut [f32], m: &[f32], geo: Geometry, cout: usize, index: usize, t0: usize, n: usize) -> () = output_plane_generic
            }

            /// [`output_plane`], 16 tiles at a time so the transform's lanes vectorise.
            #[inline(always)]
            fn output_plane_generic(
                plane: &mut [f32],
                m: &[f32],
                geo: Geometry,
                cout: usize,
                index: usize,
                t0: usize,
                n: usize,
            ) {
                let (b, co) = (index / cout, index % cout);
                let (h, w) = (geo.h, geo.w);
                let first = (b * geo.per_image).max(t0);
                let last = ((b + 1) * geo.per_image).min(t0 + n);
                let mut g0 = first;
                while g0 < last {
                    let lanes = LANES.min(last - g0);
                    let j0 = g0 - t0;
                    let mut tile = [[[0f32; LANES]; T]; T];
                    for (i, row) in tile.iter_mut().enumerate() {
                        for (j, lane) in row.iter_mut().enumerate() {
                            let xi = i * T + j;
                            lane[..lanes]
                                .copy_from_slice(&m[(xi * cout + co) * n + j0..][..lanes]);
                        }
                    }
                    let y = sandwich(&AT, &tile);
                    for l in 0..lanes {
                        let t = g0 + l - b * geo.per_image;
                        let (ty, tx) = (t / geo.tiles_w, t % geo.tiles_w);
                        for (dy, y_row) in y.iter().enumerate() {
                            let oy = M * ty + dy;
                            if oy >= h {
                                continue;
                            }
                            for (dx, value) in y_row.iter().enumerate() {
                                let ox = M * tx + dx;
                                if ox < w {
                                    plane[oy * w + ox] += value[l];
                                }
                            }
                        }
                    }
                    g0 += lanes;
                }
            }

            pub(super) fn convolve_batch(
                images: &[f32],
                (batch, cin, h, w): (usize, usize, usize, usize),
                kernel: Kernel,
                cout: usize,
                out: &mut [f32],
                block: usize,
            ) {
                let tiles_w = w.div_ceil(M);
                let geo = Geometry {
                    cin,
                    h,
                    w,
                    tiles_w,
                    per_image: h.div_ceil(M) * tiles_w,
                };
                let tiles = batch * geo.per_image;
                let per_tile = T * T * 4 * cin.max(cout);
                let chunk = (CHUNK_BYTES / per_tile).clamp(1, tiles);
                let block = block.clamp(1, cout.max(1));
                let lens = [cin * T * T * chunk, cout * T * T * chunk, block * T * T * cin];
                // With one block for all output channels, its kernels are transformed once
                // for every chunk of tiles; with several, each chunk transforms them again
                // (only layers with many channels on large images have both).
                let one_block = block >= cout;
                with_workspace(lens, |v, m, u| {
                    if one_block {
                        transform_kernels(kernel.channels(0, cout, 9 * cin), cin, u);
                    }
                    let mut t0 = 0;
                    while t0 < tiles {
                        let n = chunk.min(tiles - t0);
                        // V[ci][ξ][j] for input channel ci and tile t0 + j.
                        v[..cin * T * T * n]
                            .par_chunks_mut(T * T * n)
                            .enumerate()
                            .for_each(|(ci, vc)| input_channel(vc, images, geo, ci, t0, n));
                        let m = &mut m[..T * T * cout * n];
                        for co in (0..cout).step_by(block) {
                            let rows = block.min(cout - co);
                            // U for output channels co.., then M_ξ = U_ξ · V_ξ for those rows
                            // and every ξ at once, one single-threaded gemm each, written as
                            // M[ξ][co][j].
                            let u = &mut u[..rows * T * T * cin];
                            if !one_block {
                                transform_kernels(kernel.channels(co, rows, 9 * cin), cin, u);
                            }
                            let u = &*u;
                            m.par_chunks_mut(cout * n).enumerate().for_each(|(xi, mx)| {
                                gemm_f32(
                                    (rows, n, cin),
                                    &mut mx[co * n..],
                                    n,
                                    (&u[xi * cin..], T * T * cin, 1),
                                    (&v[xi * n..], T * T * n, 1),
                                    false,
                                    false,
                                );
                            });
                        }
                        // Y = Aᵀ M A, added into the output plane of each (image, co).
                        let m = &*m;
                        out.par_chunks_mut(h * w)
                            .enumerate()
                            .for_each(|(i, plane)| {
                                output_plane(plane, m, geo, cout, i, t0, n)
                            });
                        t0 += n;
                    }
                })
            }
        }
    };
}

variant!(
    f2,
    2,
    4,
    [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ],
    [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ],
    [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]]
);

variant!(
    f4,
    4,
    6,
    [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ]
);

#[cfg(test)]
mod tests;
