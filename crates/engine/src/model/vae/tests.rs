//! The VAE's own tests: tiled statistics and the fast f32 blocks against the generic path.

use super::*;
use candle_core::Device;

fn vae() -> Vae {
    vae_in(DType::F32)
}

fn vae_in(dtype: DType) -> Vae {
    let dir = crate::test_util::fixtures().join("tiny-sd/vae");
    let cfg: VaeFile =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let path = dir.join("diffusion_pytorch_model.safetensors");
    // SAFETY: a read-only test fixture.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, &Device::Cpu) }.unwrap();
    Vae::new(vb, &cfg).unwrap()
}

#[test]
fn accumulated_statistics_make_the_first_layers_exact() {
    let vae = vae();
    let image = Tensor::randn(0f32, 1.0, (1, 3, 128, 128), &Device::Cpu).unwrap();
    let mut whole = Ctx {
        record: Some(Vec::new()),
        ..Ctx::plain(1 << 28)
    };
    vae.encoder_body(&image, &mut whole).unwrap();
    let exact = whole.record.unwrap();
    let t = Tiling {
        tile: 6,
        halo: 4,
        blend: 2,
        stats: NormStats::Accumulated(1),
    };
    for passes in 1..=3 {
        let acc = vae
            .accumulate_stats(&image, &t, 8, passes, 1 << 28, |x, ctx| {
                vae.encoder_body(x, ctx)
            })
            .unwrap()
            .unwrap();
        assert_eq!(acc.len(), exact.len());
        let errs: Vec<String> = acc
            .iter()
            .zip(&exact)
            .map(|((m, v), (em, ev))| {
                let d = crate::test_util::max_abs_diff;
                format!("{:.1e}/{:.1e}", d(m, em), d(v, ev))
            })
            .collect();
        eprintln!("passes {passes}: {}", errs.join(" "));
        // The first `passes` GroupNorms see exact whole-image statistics.
        for ((m, v), (em, ev)) in acc.iter().zip(&exact).take(passes) {
            let d = crate::test_util::max_abs_diff;
            assert!(
                d(m, em) < 1e-5 && d(v, ev) < 1e-5,
                "passes {passes}: {}",
                errs.join(" ")
            );
        }
    }
}

/// The f32 CPU path (banded, in-place and fused kernels) against candle's generic ops,
/// which other devices and dtypes take: here f64 on the CPU.
#[test]
fn fast_blocks_match_the_generic_path() {
    let (fast, generic) = (vae(), vae_in(DType::F64));
    let d = crate::test_util::max_abs_diff;
    // `pass` on the fast VAE against the same pass on the generic one, in f64.
    let check = |what: &str, input: &Tensor, pass: fn(&Vae, &Tensor) -> Result<Tensor>| {
        let ours = pass(&fast, input).unwrap();
        let reference = input
            .to_dtype(DType::F64)
            .and_then(|x| pass(&generic, &x))
            .and_then(|y| y.to_dtype(DType::F32))
            .unwrap();
        assert!(
            d(&ours, &reference) < 1e-4,
            "{what}: {}",
            d(&ours, &reference)
        );
        ours
    };
    let image = Tensor::randn(0f32, 1.0, (1, 3, 64, 48), &Device::Cpu).unwrap();
    let latents = check("encode", &image, Vae::encode);
    check("decode", &latents, Vae::decode);
}

/// With bf16 products every convolution kernel and attention projection is held packed in
/// bf16 (none of them in f32), and the VAE still encodes and decodes.
#[test]
fn bf16_holds_every_kernel_and_projection_packed() {
    let dir = crate::test_util::fixtures().join("tiny-sd/vae");
    let cfg: VaeFile =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let path = dir.join("diffusion_pytorch_model.safetensors");
    // SAFETY: a read-only test fixture.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }.unwrap();
    let layers = |vae: &Vae| -> Vec<bool> {
        let mut convs = vec![
            &vae.enc_conv_in,
            &vae.enc_conv_out,
            &vae.dec_conv_in,
            &vae.dec_conv_out,
        ];
        convs.extend(vae.quant_conv.iter().chain(&vae.post_quant_conv));
        let resnets = (vae.enc_down.iter().flat_map(|b| &b.resnets))
            .chain(vae.dec_up.iter().flat_map(|b| &b.resnets))
            .chain(
                [&vae.enc_mid, &vae.dec_mid]
                    .into_iter()
                    .flat_map(|m| [&m.resnet0, &m.resnet1]),
            );
        for r in resnets {
            convs.extend([&r.conv1, &r.conv2].into_iter().chain(&r.shortcut));
        }
        convs.extend(vae.enc_down.iter().filter_map(|b| b.down.as_ref()));
        convs.extend(vae.dec_up.iter().filter_map(|b| b.up.as_ref()));
        let mut packed: Vec<bool> = convs.iter().map(|c| c.is_bf16()).collect();
        for a in [&vae.enc_mid.attn, &vae.dec_mid.attn] {
            packed.extend([&a.q, &a.k, &a.v, &a.out].map(|l| l.is_bf16()));
        }
        packed
    };
    let bf16 = Vae::with_compute(vb.clone(), &cfg, Compute::Bf16).unwrap();
    let f32 = Vae::new(vb, &cfg).unwrap();
    let (packed, plain) = (layers(&bf16), layers(&f32));
    assert!(packed.len() > 20 && packed.iter().all(|&p| p), "{packed:?}");
    assert!(plain.iter().all(|&p| !p), "{plain:?}");
    let image = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let (a, b) = (bf16.encode(&image).unwrap(), f32.encode(&image).unwrap());
    assert!(crate::test_util::max_abs_diff(&a, &b) < 0.05);
    let (a, b) = (bf16.decode(&b).unwrap(), f32.decode(&b).unwrap());
    assert!(crate::test_util::max_abs_diff(&a, &b) < 0.2);
}
