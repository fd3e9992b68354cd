//! Every path this CPU has against an f64 reference from the same bf16-rounded operands.

use super::*;

/// A deterministic stream of values in [−1, 1) with varied magnitudes.
struct Values(u64);

impl Values {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        let scale = [1.0, 0.25, 3.0, 0.01][(self.0 >> 20) as usize % 4];
        (unit * 2.0 - 1.0) * scale
    }

    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next()).collect()
    }
}

/// The paths this CPU has; prints a line for each it skips.
fn paths() -> Vec<Bf16Isa> {
    Bf16Isa::ALL
        .into_iter()
        .filter(|isa| {
            let ok = isa.available();
            if !ok {
                println!("skipping the {isa} path: not available on this CPU");
            }
            ok
        })
        .collect()
}

/// One product to check.
#[derive(Debug, Clone, Copy)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    /// lhs stored column-major (`lhs_rs = 1`).
    lhs_t: bool,
    /// rhs stored column-major (`rhs_rs = 1`).
    rhs_t: bool,
    /// Extra elements at the end of each dst row.
    dst_pad: usize,
    accumulate: bool,
    parallel: bool,
}

/// Builds a view of an `rows × cols` matrix stored with padding, row- or column-major.
fn view(
    values: &mut Values,
    rows: usize,
    cols: usize,
    transposed: bool,
) -> (Vec<f32>, usize, usize) {
    if transposed {
        let cs = rows + 2;
        (values.vec(cs * cols.max(1)), 1, cs)
    } else {
        let rs = cols + 3;
        (values.vec(rs * rows.max(1)), rs, 1)
    }
}

fn check_case(isa: Bf16Isa, case: Case, seed: u64) {
    let Case { m, n, k, .. } = case;
    let mut values = Values(seed);
    let (lhs, lhs_rs, lhs_cs) = view(&mut values, m, k, case.lhs_t);
    let (rhs, rhs_rs, rhs_cs) = view(&mut values, k, n, case.rhs_t);
    let dst_rs = n + case.dst_pad;
    let dst0 = values.vec(dst_rs * m.max(1));
    let mut dst = dst0.clone();
    let lhs_v = (&lhs[..], lhs_rs, lhs_cs);
    let rhs_v = (&rhs[..], rhs_rs, rhs_cs);
    let dims = (m, n, k);
    gemm_bf16_with(
        isa,
        dims,
        &mut dst,
        dst_rs,
        Lhs::View(lhs_v),
        Rhs::View(rhs_v),
        case.accumulate,
        case.parallel,
    );
    for i in 0..m {
        for j in 0..dst_rs {
            let got = dst[i * dst_rs + j];
            let before = dst0[i * dst_rs + j];
            if j >= n {
                assert_eq!(
                    got.to_bits(),
                    before.to_bits(),
                    "{isa} {case:?}: padding written"
                );
                continue;
            }
            let (mut exact, mut bound) = (0f64, 0f64);
            for p in 0..k {
                let a = f64::from(round_bf16(lhs[i * lhs_rs + p * lhs_cs]));
                let b = f64::from(round_bf16(rhs[p * rhs_rs + j * rhs_cs]));
                exact += a * b;
                bound += (a * b).abs();
            }
            if case.accumulate {
                exact += f64::from(before);
                bound += f64::from(before).abs();
            }
            let err = (f64::from(got) - exact).abs();
            assert!(
                err <= 1e-5 * bound,
                "{isa} {case:?}: [{i}][{j}] = {got}, expected {exact} (error {err:e}, Σ|ab| {bound:e})"
            );
        }
    }
    // Operands packed beforehand give the same numbers, bit for bit.
    let packed = PackedRhs::new(k, n, rhs_v);
    assert!(packed.bytes() >= 2 * k * n);
    let packed_lhs = PackedLhs::new(m, k, lhs_v);
    assert!(packed_lhs.bytes() >= 2 * m * k);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let operands = [
        ("rhs packed", Lhs::View(lhs_v), Rhs::Packed(&packed)),
        ("lhs packed", Lhs::Packed(&packed_lhs), Rhs::View(rhs_v)),
        (
            "both packed",
            Lhs::Packed(&packed_lhs),
            Rhs::Packed(&packed),
        ),
    ];
    for (what, a, b) in operands {
        let mut other = dst0.clone();
        let (acc, par) = (case.accumulate, case.parallel);
        gemm_bf16_with(isa, dims, &mut other, dst_rs, a, b, acc, par);
        assert_eq!(bits(&dst), bits(&other), "{isa} {case:?}: {what} differs");
    }
    // The fast paths sum in the same order on one thread or many.
    if isa != Bf16Isa::Emulated {
        let mut dst_other = dst0;
        gemm_bf16_with(
            isa,
            dims,
            &mut dst_other,
            dst_rs,
            Lhs::View(lhs_v),
            Rhs::View(rhs_v),
            case.accumulate,
            !case.parallel,
        );
        assert_eq!(
            bits(&dst),
            bits(&dst_other),
            "{isa} {case:?}: parallel differs"
        );
    }
}

#[test]
fn bf16_products_match_the_f64_reference() {
    let shapes = [
        (1, 1, 1),
        (33, 17, 35),
        (16, 16, 32),
        (5, 40, 7),
        (32, 64, 64),
        (47, 49, 3),
        (70, 50, 600),
        (300, 530, 40),
        (130, 20, 97),
        (40, 40, 50),
        (24, 88, 66),
    ];
    let mut seed = 1;
    for isa in paths() {
        for &(m, n, k) in &shapes {
            for variant in 0..4 {
                seed += 1;
                let case = Case {
                    m,
                    n,
                    k,
                    lhs_t: variant & 1 == 1,
                    rhs_t: variant & 2 == 2,
                    dst_pad: [0, 3][variant % 2],
                    accumulate: variant == 1 || variant == 2,
                    parallel: variant >= 2,
                };
                check_case(isa, case, seed);
            }
        }
    }
}

#[test]
fn bf16_empty_dimensions() {
    for isa in paths() {
        for accumulate in [false, true] {
            // k = 0: C is zeroed, or left alone when accumulating.
            let mut dst = vec![2.5f32; 12];
            gemm_bf16_with(
                isa,
                (3, 4, 0),
                &mut dst,
                4,
                Lhs::View((&[], 0, 1)),
                Rhs::View((&[], 4, 1)),
                accumulate,
                true,
            );
            let want = if accumulate { 2.5 } else { 0.0 };
            assert!(dst.iter().all(|&v| v == want), "{isa}: k = 0 gave {dst:?}");
            let packed = PackedRhs::new(0, 4, (&[], 4, 1));
            let mut dst = vec![2.5f32; 12];
            gemm_bf16_with(
                isa,
                (3, 4, 0),
                &mut dst,
                4,
                Lhs::View((&[], 0, 1)),
                Rhs::Packed(&packed),
                accumulate,
                false,
            );
            assert!(
                dst.iter().all(|&v| v == want),
                "{isa}: packed k = 0 gave {dst:?}"
            );
        }
        // m = 0 or n = 0: nothing to do.
        gemm_bf16_with(
            isa,
            (0, 4, 3),
            &mut [],
            4,
            Lhs::View((&[], 3, 1)),
            Rhs::View((&[0.0; 12], 4, 1)),
            false,
            true,
        );
        gemm_bf16_with(
            isa,
            (4, 0, 3),
            &mut [],
            0,
            Lhs::View((&[0.0; 12], 3, 1)),
            Rhs::View((&[], 0, 1)),
            false,
            true,
        );
    }
}

#[test]
fn bf16_nan_propagates() {
    let (m, n, k) = (20, 18, 40);
    let mut values = Values(99);
    let mut lhs = values.vec(m * k);
    let rhs = values.vec(k * n);
    lhs[3 * k + 17] = f32::NAN;
    for isa in paths() {
        let mut dst = vec![0f32; m * n];
        gemm_bf16_with(
            isa,
            (m, n, k),
            &mut dst,
            n,
            Lhs::View((&lhs, k, 1)),
            Rhs::View((&rhs, n, 1)),
            false,
            false,
        );
        for (i, row) in dst.chunks(n).enumerate() {
            assert!(
                row.iter().all(|v| v.is_nan() == (i == 3)),
                "{isa}: row {i} {row:?}"
            );
        }
    }
}

#[test]
fn bf16_rounding_is_nearest_even() {
    let cases: [(u32, u16); 12] = [
        (0x3f80_0000, 0x3f80), // 1
        (0x3f80_8000, 0x3f80), // 1 + 2⁻⁸: tie, to even (down)
        (0x3f81_8000, 0x3f82), // tie, to even (up)
        (0x3f80_8001, 0x3f81), // just above the tie
        (0x3f80_7fff, 0x3f80), // just below the tie
        (0xbf81_8000, 0xbf82), // negative tie
        (0x7f7f_ffff, 0x7f80), // f32::MAX rounds to infinity
        (0x7f80_0000, 0x7f80), // infinity
        (0xff80_0000, 0xff80), // −infinity
        (0x0000_8000, 0x0000), // subnormal tie, to even (zero)
        (0x0001_8000, 0x0002), // subnormal tie, to even (up)
        (0x8000_0000, 0x8000), // −0
    ];
    for (input, want) in cases {
        assert_eq!(bf16_bits(f32::from_bits(input)), want, "{input:#010x}");
    }
    for nan in [
        0x7fc0_0000u32,
        0x7f80_0001,
        0xffff_ffff,
        0x7fbf_ffff,
        0xff80_0001,
    ] {
        let bits = bf16_bits(f32::from_bits(nan));
        assert!(
            round_bf16(f32::from_bits(nan)).is_nan(),
            "{nan:#010x} → {bits:#06x}"
        );
        assert_eq!(
            bits & 0x8000,
            (nan >> 16) as u16 & 0x8000,
            "sign of {nan:#010x}"
        );
    }
    // Random finite values: the nearer of the two neighbours, ties to the even one.
    let mut state = 12345u64;
    for _ in 0..200_000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let bits = (state >> 32) as u32;
        let x = f32::from_bits(bits);
        if !x.is_finite() {
            continue;
        }
        let lo = bits & 0xffff_0000;
        let (below, above) = (
            f32::from_bits(lo),
            f32::from_bits(lo.wrapping_add(0x1_0000)),
        );
        let (dl, da) = (
            (f64::from(x) - f64::from(below)).abs(),
            if above.is_finite() {
                (f64::from(above) - f64::from(x)).abs()
            } else {
                f64::INFINITY
            },
        );
        let got = bf16_bits(x);
        if above.is_infinite() && bits & 0xffff >= 0x8000 {
            // Overflows past the largest bf16 (RNE on the bit pattern).
            assert_eq!(
                u32::from(got) << 16,
                lo.wrapping_add(0x1_0000),
                "{bits:#010x}"
            );
            continue;
        }
        let want = if dl < da || (dl == da && (lo >> 16) & 1 == 0) {
            lo
        } else {
            lo + 0x1_0000
        };
        assert_eq!(u32::from(got) << 16, want, "{bits:#010x}");
    }
}

#[test]
fn bf16_packing_rounds_like_bf16_bits() {
    let specials = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        1e-40,
        -1e-45,
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        0.0,
        -0.0,
    ];
    let (k, n) = (37, 45);
    let mut values = Values(7);
    let mut rhs = values.vec(k * n);
    for (i, &s) in specials.iter().enumerate() {
        rhs[i * 97 % (k * n)] = s;
    }
    for (rs, cs, data) in [(n, 1, rhs.clone()), (1, k, transpose(&rhs, k, n))] {
        let packed = PackedRhs::new(k, n, (&data, rs, cs));
        let mut unpacked = vec![0f32; k * n];
        packed.unpack(&mut unpacked, true);
        let mut rounded = vec![0f32; k * n];
        pack::rounded_matrix(&mut rounded, n, (&data, rs, cs), true);
        for (i, (u, r)) in unpacked.iter().zip(&rounded).enumerate() {
            assert_eq!(u.to_bits(), r.to_bits(), "element {i}");
        }
    }
    // The left operand's row tiles, contiguous rows and strided.
    let (m, k) = (19, 70);
    let kp = pack::padded_k(k);
    let mut lhs = values.vec(m * k);
    for (i, &s) in specials.iter().enumerate() {
        lhs[i * 61 % (m * k)] = s;
    }
    for (rs, cs, data) in [(k, 1, lhs.clone()), (1, m, transpose(&lhs, m, k))] {
        let mut tiles = vec![0xffffu16; m.div_ceil(16) * 16 * kp];
        pack::pack_lhs(&mut tiles, 0..m, (m, k), (0, kp / 32), (&data, rs, cs));
        for r in 0..m.div_ceil(16) * 16 {
            for p in 0..kp {
                let got = tiles[(r / 16) * 16 * kp + (p / 32) * 512 + (r % 16) * 32 + p % 32];
                let want = if r < m && p < k {
                    bf16_bits(lhs[r * k + p])
                } else {
                    0
                };
                assert_eq!(got, want, "row {r}, k {p}");
            }
        }
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| values[(i % rows) * cols + i / rows])
        .collect()
}

#[test]
fn bf16_isa_names_and_environment() {
    for isa in Bf16Isa::ALL {
        assert_eq!(Bf16Isa::from_name(isa.name()), Some(isa));
        assert_eq!(isa_named(isa.name()).is_some(), isa.available());
    }
    assert_eq!(Bf16Isa::from_name("AMX"), Some(Bf16Isa::Amx));
    assert_eq!(isa_named("sse"), None);
    assert!(Bf16Isa::Emulated.available());
    let best = isa::best();
    println!("bf16 path on this CPU: {best}");
    assert_eq!(isa::chosen(None), best);
    assert_eq!(isa::chosen(Some("nonsense")), best);
    assert_eq!(isa::chosen(Some("emulated")), Bf16Isa::Emulated);
    // A request can lower the path, never raise it.
    for requested in Bf16Isa::ALL {
        let chosen = isa::chosen(Some(requested.name()));
        assert!(chosen.available());
        if requested.rank() >= best.rank() && requested.available() {
            assert_eq!(chosen, requested);
        } else {
            assert_eq!(chosen, best);
        }
    }
    assert!(isa().available());
}

/// The probabilities packed straight from scores are `exp_row`'s, rounded to bf16, in the
/// left operand's layout with zero padding, and their normalisers agree.
#[test]
fn bf16_softmax_packing_matches_exp_row() {
    for (rows, n, seed) in [(37, 77, 5), (16, 64, 6), (3, 300, 7), (20, 1, 8)] {
        let mut values = Values(seed);
        let scores: Vec<f32> = values.vec(rows * n).iter().map(|v| v * 20.0).collect();
        let scale = 0.37;
        let mut expected = scores.clone();
        let mut expected_norms = vec![0f32; rows];
        for (row, norm) in expected.chunks_mut(n).zip(&mut expected_norms) {
            *norm = crate::kernels::fastmath::exp_row(row, scale);
        }
        // The same scores in rows 5 values longer (padding the kernel must not read).
        let stride = n + 5;
        let mut strided = vec![f32::NAN; rows * stride];
        for (dst, src) in strided.chunks_mut(stride).zip(scores.chunks(n)) {
            dst[..n].copy_from_slice(src);
        }
        let mut packed = PackedLhs::default();
        let mut norms = vec![0f32; rows];
        packed.repack_softmax(&mut strided, (rows, n, stride), scale, &mut norms);
        assert_eq!((packed.m(), packed.k()), (rows, n));
        for (got, want) in norms.iter().zip(&expected_norms) {
            assert!(
                (got - want).abs() <= 1e-5 * want,
                "norm {got} against {want}"
            );
        }
        let mut unpacked = vec![0f32; rows * n];
        packed.unpack(&mut unpacked, false);
        for (got, want) in unpacked.iter().zip(&expected) {
            // One bf16 rounding (2⁻⁹ relative) of an exp within 1e-5 of exp_row's.
            assert!(
                (got - want).abs() <= want * (1.0 / 256.0) + 1e-30,
                "probability {got} against {want}"
            );
        }
        // Past the rows and columns, zeros (the products read whole tiles).
        let kp = n.div_ceil(32) * 32;
        let data = packed.data();
        for r in 0..rows.div_ceil(16) * 16 {
            for kk in 0..kp {
                let v = data[r / 16 * 16 * kp + kk / 32 * 512 + r % 16 * 32 + kk % 32];
                if r >= rows || kk >= n {
                    assert_eq!(v, 0, "padding at row {r}, column {kk}");
                }
            }
        }
    }
}
