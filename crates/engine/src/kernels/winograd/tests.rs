//! Both variants against a direct convolution in f64, and bf16 kernels against f32 ones.

use super::*;
use crate::kernels::bf16::{bf16_bits, round_bf16};

/// Direct 3×3 convolution with padding 1, in f64.
fn direct(image: &[f32], (cin, h, w): (usize, usize, usize), k: &[f32], cout: usize) -> Vec<f64> {
    let mut out = vec![0f64; cout * h * w];
    for co in 0..cout {
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f64;
                for ci in 0..cin {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (y as isize + ky - 1, x as isize + kx - 1);
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let pixel = image[(ci * h + iy as usize) * w + ix as usize];
                            let weight = k[((co * cin + ci) * 3 + ky as usize) * 3 + kx as usize];
                            acc += f64::from(pixel) * f64::from(weight);
                        }
                    }
                }
                out[(co * h + y) * w + x] = acc;
            }
        }
    }
    out
}

#[test]
fn both_variants_match_direct_convolution() {
    use crate::test_util::uniform;
    // Odd sizes exercise partial tiles at the right and bottom edges.
    for &(cin, cout, h, w) in &[(5, 7, 13, 11), (32, 16, 24, 29), (64, 8, 16, 16)] {
        // Two images: the batch shares the matrix products.
        let image = uniform(2 * cin * h * w, 12345 + cin as u32);
        let kernel: Vec<f32> = uniform(cout * cin * 9, 54321 + cout as u32)
            .into_iter()
            .map(|v| v / 3.0)
            .collect();
        let (first, second) = image.split_at(cin * h * w);
        let mut reference = direct(first, (cin, h, w), &kernel, cout);
        reference.extend(direct(second, (cin, h, w), &kernel, cout));
        let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
        for variant in [Variant::F2, Variant::F4] {
            let dims = (2, cin, h, w);
            let mut out = vec![0f32; 2 * cout * h * w];
            variant.convolve(&image, dims, Kernel::F32(&kernel), cout, &mut out);
            // The kernels transformed a few output channels at a time (the last block
            // shorter) give the same sums.
            let mut blocked = vec![0f32; 2 * cout * h * w];
            variant.convolve_blocked(&image, dims, Kernel::F32(&kernel), cout, &mut blocked, 3);
            assert_eq!(out, blocked);
            // bf16 bits widened channel by channel give the f32 convolution of the
            // rounded kernel, bit for bit, in one block or several.
            let bits: Vec<u16> = kernel.iter().map(|&v| bf16_bits(v)).collect();
            let rounded: Vec<f32> = kernel.iter().map(|&v| round_bf16(v)).collect();
            let mut expected = vec![0f32; 2 * cout * h * w];
            variant.convolve(&image, dims, Kernel::F32(&rounded), cout, &mut expected);
            for block in [cout, 3] {
                let mut got = vec![0f32; 2 * cout * h * w];
                variant.convolve_blocked(&image, dims, Kernel::Bf16(&bits), cout, &mut got, block);
                assert_eq!(got, expected, "{variant:?} bf16, blocks of {block}");
            }
            let worst = out
                .iter()
                .zip(&reference)
                .fold(0f64, |m, (o, r)| m.max((f64::from(*o) - r).abs()));
            let tolerance = match variant {
                Variant::F2 => 2e-6,
                Variant::F4 => 1e-5,
            };
            assert!(
                worst / scale < tolerance,
                "{variant:?} {cin}->{cout} {h}x{w}: max abs diff {worst} (scale {scale})"
            );
        }
    }
}
