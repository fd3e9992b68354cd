//! The convolution layers against candle's convolution and against their definitions.

use super::*;
use candle_nn::VarMap;

#[test]
fn matches_candle_convolution() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    // (cin, cout, kernel, stride, padding, height, width)
    let cases = [
        (3, 5, 3, 1, 1, 9, 7),
        (4, 6, 3, 2, 1, 9, 8),
        (4, 6, 3, 2, 0, 10, 7),
        (8, 4, 1, 1, 0, 5, 6),
        (2, 3, 3, 1, 0, 4, 4),
        (64, 32, 3, 1, 1, 40, 33),
        (16, 8, 3, 1, 1, 24, 23),
        (7, 300, 3, 1, 1, 31, 64),
    ];
    for (i, &(cin, cout, k, s, p, h, w)) in cases.iter().enumerate() {
        let conv = Conv2d::new(vb.pp(i.to_string()), cin, cout, k, s, p).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (2, cin, h, w), &Device::Cpu).unwrap();
        let extra = Tensor::randn(0f32, 1.0, (2, cout), &Device::Cpu).unwrap();
        let ours = conv.forward_plus(&xs, Some(&extra)).unwrap();
        let reference = conv
            .candle()
            .unwrap()
            .forward(&xs)
            .unwrap()
            .broadcast_add(&extra.unsqueeze(2).unwrap().unsqueeze(3).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), reference.dims(), "case {i}");
        let diff = crate::test_util::max_abs_diff(&ours, &reference);
        assert!(diff < 1e-4, "case {i}: max abs diff {diff}");
        // Non-contiguous input.
        let t = xs
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        assert!(
            crate::test_util::max_abs_diff(
                &conv.forward(&t).unwrap(),
                &conv.candle().unwrap().forward(&xs).unwrap()
            ) < 1e-4
        );
    }
}

#[test]
fn residual_padded_and_upsampled_forms_match_their_definitions() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let diff = crate::test_util::max_abs_diff;
    let dev = &Device::Cpu;
    for (i, &(cin, cout, h, w)) in [(6, 4, 9, 7), (16, 8, 40, 33), (4, 4, 5, 5)]
        .iter()
        .enumerate()
    {
        let vb = vb.pp(i.to_string());
        let conv = Conv2d::new(vb.pp("conv"), cin, cout, 3, 1, 1).unwrap();
        let shortcut = Conv2d::new(vb.pp("shortcut"), cin, cout, 1, 1, 0).unwrap();
        let xs = Tensor::randn(0f32, 1.0, (2, cin, h, w), dev).unwrap();
        let skip = Tensor::randn(0f32, 1.0, (2, cout, h, w), dev).unwrap();
        let plain = conv.candle().unwrap().forward(&xs).unwrap();

        let ours = conv.forward_residual(&xs, Residual::Tensor(&skip)).unwrap();
        assert!(diff(&ours, &(&plain + &skip).unwrap()) < 1e-4, "case {i}");
        let ours = conv
            .forward_residual(&xs, Residual::Conv(&shortcut, &xs))
            .unwrap();
        let reference = (&plain + shortcut.candle().unwrap().forward(&xs).unwrap()).unwrap();
        assert!(diff(&ours, &reference) < 1e-4, "case {i}");

        let down = Conv2d::new(vb.pp("down"), cin, cout, 3, 2, 0).unwrap();
        let padded = xs
            .pad_with_zeros(3, 0, 1)
            .unwrap()
            .pad_with_zeros(2, 0, 1)
            .unwrap();
        let reference = down.candle().unwrap().forward(&padded).unwrap();
        let ours = down.forward_pad_end(&xs).unwrap();
        assert_eq!(ours.dims(), reference.dims(), "case {i}");
        assert!(diff(&ours, &reference) < 1e-4, "case {i}");

        let up = xs.upsample_nearest2d(2 * h, 2 * w).unwrap();
        let reference = conv.candle().unwrap().forward(&up).unwrap();
        let ours = conv.forward_upsampled(&xs).unwrap();
        assert_eq!(ours.dims(), reference.dims(), "case {i}");
        assert!(diff(&ours, &reference) < 1e-4, "case {i}");
    }
}

#[test]
fn upsampled_bands_cover_the_image() {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let conv = Conv2d::new(vb, 2, 3, 3, 1, 1).unwrap();
    let xs = Tensor::randn(0f32, 1.0, (2, 2, 37, 20), &Device::Cpu).unwrap();
    let reference = conv
        .candle()
        .unwrap()
        .forward(&xs.upsample_nearest2d(74, 40).unwrap())
        .unwrap();
    // 8, 10 and 74 output rows per band (the last: one band).
    for band_bytes in [1, 4 * 2 * 40 * 10, 1 << 20] {
        let ours = conv.upsampled_in_bands(&xs, band_bytes).unwrap();
        let diff = crate::test_util::max_abs_diff(&ours, &reference);
        assert!(diff < 1e-4, "{band_bytes} bytes per band: {diff}");
    }
}

/// A bf16 layer equals the f32 convolution of the bf16-rounded kernel and input (up to
/// the order of the f32 sums), and a layer with bf16 weights widened for the f32 path
/// ([`Compute::Bf16Weights`]) equals the f32 convolution of the rounded kernel and the
/// input as it is, bit for bit; through every form: plain with a per-image term, 1×1,
/// strided, padded at the end (Winograd's sizes included), and with a convolved shortcut.
#[test]
fn bf16_layers_match_f32_on_rounded_operands() {
    use crate::kernels::bf16::round_bf16;
    let dev = &Device::Cpu;
    let rounded = |t: &Tensor| {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = v.into_iter().map(round_bf16).collect();
        Tensor::from_vec(v, t.dims(), dev).unwrap()
    };
    // (cin, cout, kernel, stride, padding, height, width)
    for (i, &(cin, cout, k, s, p, h, w)) in [
        (3, 5, 3, 1, 1, 9, 7),
        (4, 6, 3, 2, 0, 10, 7),
        (40, 33, 1, 1, 0, 5, 6),
        (64, 20, 3, 1, 1, 24, 23),
    ]
    .iter()
    .enumerate()
    {
        let weight = Tensor::randn(0f32, 1.0, (cout, cin, k, k), dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, cout, dev).unwrap();
        let layer = |weight: &Tensor, compute| {
            let tensors = [("weight", weight.clone()), ("bias", bias.clone())]
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect();
            let vb = VarBuilder::from_tensors(tensors, DType::F32, dev);
            Conv2d::with_compute(vb, (cin, cout), k, s, p, compute).unwrap()
        };
        assert!(!layer(&weight, Compute::F32).is_bf16());
        let reference = layer(&rounded(&weight), Compute::F32);
        let xs = Tensor::randn(0f32, 1.0, (2, cin, h, w), dev).unwrap();
        let extra = Tensor::randn(0f32, 1.0, (2, cout), dev).unwrap();
        for compute in [Compute::Bf16, Compute::Bf16Weights] {
            let bf16 = layer(&weight, compute);
            assert!(bf16.is_bf16());
            // The bf16 products round the input too; the widened weights leave it be.
            let (xr, tolerance) = match compute {
                Compute::Bf16 => (rounded(&xs), 1e-5 * (cin * k * k) as f32),
                _ => (xs.clone(), 0.0),
            };
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                assert_eq!(a.dims(), b.dims(), "case {i} {compute:?} {what}");
                let diff = crate::test_util::max_abs_diff(a, b);
                assert!(diff <= tolerance, "case {i} {compute:?} {what}: {diff}");
            };
            close(
                &bf16.forward_plus(&xs, Some(&extra)).unwrap(),
                &reference.forward_plus(&xr, Some(&extra)).unwrap(),
                "plus",
            );
            close(
                &bf16.forward_pad_end(&xs).unwrap(),
                &reference.forward_pad_end(&xr).unwrap(),
                "pad end",
            );
            if s == 1 && 2 * p + 1 == k {
                let res = Residual::Conv(&bf16, &xs);
                let res_ref = Residual::Conv(&reference, &xr);
                close(
                    &bf16.forward_residual(&xs, res).unwrap(),
                    &reference.forward_residual(&xr, res_ref).unwrap(),
                    "residual",
                );
            }
        }
    }
}
