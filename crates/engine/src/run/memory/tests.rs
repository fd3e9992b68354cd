use super::*;
use crate::model::arch::Arch;

const KEPT: EncoderWeights = EncoderWeights::Kept;

fn spec(size: u32) -> LoopSpec {
    LoopSpec {
        index: 1,
        width: size,
        height: size,
        denoise: 0.3,
        seed: 1,
        steps: 10,
        estimated: false,
    }
}

#[test]
fn parameter_counts_match_the_published_models() {
    let sd15 = ModelShape::from_arch(Arch::Sd15).unwrap();
    // diffusers' num_parameters() of the published SD 1.5 components.
    assert_eq!(vae_parameters(&sd15.vae), 83_653_863);
    assert_eq!(clip_parameters(&sd15.clip), 123_060_480);
    assert_eq!(unet_parameters(&sd15.unet), 859_520_964);
    let sd21 = ModelShape::from_arch(Arch::Sd21).unwrap();
    assert_eq!(unet_parameters(&sd21.unet), 865_910_724);
    assert_eq!(clip_parameters(&sd21.clip), 340_387_840);
    let sdxl = ModelShape::from_arch(Arch::Sdxl).unwrap();
    assert_eq!(unet_parameters(&sdxl.unet), 2_567_463_684);
    assert_eq!(clip_parameters(&sdxl.clip), 123_060_480);
    assert_eq!(clip_parameters(sdxl.clip2.as_ref().unwrap()), 694_659_840);
    assert_eq!(vae_parameters(&sdxl.vae), 83_653_863);
}

#[test]
fn large_decodes_get_tiled_to_fit() {
    let vae = Arch::Sd15.vae().unwrap();
    let latent = (256, 256);
    let whole = vae_pass_bytes(&vae, VaePass::Decode, DType::F32, 1, latent, None, 1 << 28);
    assert!(whole > 6 << 30, "2048² decode whole: {}", gib(whole));
    let choice = vae_tiling(
        &vae,
        VaePass::Decode,
        DType::F32,
        1,
        latent,
        1 << 28,
        Some(3 << 30),
    );
    assert!(choice.fits && choice.tiling.is_some(), "{choice:?}");
    assert!(choice.bytes < 3 << 30);
    // Measured with bench (random SD weights, f32): 523 / 513 MiB at 512², 1667 /
    // 2082 MiB at 1024²; the estimates stay within ±25 %.
    for (pass, side, measured) in [
        (VaePass::Encode, 64, 523.0),
        (VaePass::Decode, 64, 513.0),
        (VaePass::Encode, 128, 1667.0),
        (VaePass::Decode, 128, 2082.0),
    ] {
        let est = vae_pass_bytes(&vae, pass, DType::F32, 1, (side, side), None, 1 << 28);
        let ratio = est as f64 / (measured * MIB as f64);
        assert!((0.75..=1.25).contains(&ratio), "{pass:?} {side}: {ratio}");
    }
    // Without a limit nothing is tiled.
    let free = vae_tiling(&vae, VaePass::Decode, DType::F32, 1, latent, 1 << 28, None);
    assert!(free.tiling.is_none());
}

#[test]
fn loops_that_cannot_fit_are_refused_with_one_line() {
    let shape = ModelShape::from_arch(Arch::Sd15).unwrap();
    let small = estimate_loop(&shape, &spec(512), DType::F32, 2, Some(24 << 30), KEPT);
    assert!(small.fits, "{small:?}");
    assert!(check_fits(&[small], Some(24 << 30), DType::F32).is_ok());
    let big = estimate_loop(&shape, &spec(4096), DType::F32, 2, Some(4 << 30), KEPT);
    assert!(!big.fits);
    let msg = check_fits(&[big], Some(4 << 30), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(!msg.contains('\n') && msg.contains("4096x4096"), "{msg}");
}

#[test]
fn released_text_encoders_leave_the_heavy_phases() {
    let shape = ModelShape::from_arch(Arch::Sd15).unwrap();
    let text = shape.text_parameters() * 4;
    // CLIP ViT-L/14's text model: 123 M parameters.
    assert!((120e6..126e6).contains(&(text as f64 / 4.0)), "{text}");
    let kept = estimate_loop(&shape, &spec(1024), DType::F32, 2, None, KEPT);
    let freed = estimate_loop(
        &shape,
        &spec(1024),
        DType::F32,
        2,
        None,
        EncoderWeights::Released,
    );
    assert_eq!(kept.weights_bytes, freed.weights_bytes);
    assert_eq!(freed.resident_weights_bytes, kept.weights_bytes - text);
    assert_eq!(freed.peak_bytes, kept.peak_bytes - text);
    // A limit between the two: only the released plan fits, with the same tiling.
    let limit = ((kept.peak_bytes - text / 2) as f64 / HEADROOM) as u64;
    let kept = estimate_loop(&shape, &spec(1024), DType::F32, 2, Some(limit), KEPT);
    assert!(kept.vae_decode_tile.is_some());
    let freed = estimate_loop(
        &shape,
        &spec(1024),
        DType::F32,
        2,
        Some(limit),
        EncoderWeights::Released,
    );
    assert!(freed.fits && freed.vae_decode_tile.is_none(), "{freed:?}");
}

#[test]
fn plans_are_checked_in_one_call() {
    use loopback_core::settings::Size;
    let shape = ModelShape::from_arch(Arch::Sd15).unwrap();
    let plan = |size: u32| Plan {
        final_size: Size::new(size, size),
        loops: vec![spec(512), spec(size)],
        start: Size::new(512, 512),
    };
    let fits = check_plan(&shape, &plan(1024), DType::F32, 2, Some(24 << 30), KEPT).unwrap();
    assert_eq!(
        fits,
        estimate_plan(&shape, &plan(1024), DType::F32, 2, Some(24 << 30), KEPT)
    );
    let free = check_plan(&shape, &plan(4096), DType::F32, 2, None, KEPT).unwrap();
    assert_eq!(free.len(), 2);
    let refusal = check_plan(&shape, &plan(4096), DType::F32, 2, Some(4 << 30), KEPT).unwrap_err();
    let estimates = estimate_plan(&shape, &plan(4096), DType::F32, 2, Some(4 << 30), KEPT);
    let line = check_fits(&estimates, Some(4 << 30), DType::F32)
        .unwrap_err()
        .to_string();
    assert_eq!(refusal.to_string(), line);
    assert_eq!(refusal.estimates, estimates);
    assert!(matches!(Error::from(refusal), Error::Memory(_)));
    assert_eq!((unet_batch(7.0), unet_batch(1.0)), (2, 1));
}

#[test]
fn controlnets_count_their_weights_and_residuals() {
    let sd15 = ModelShape::from_arch(Arch::Sd15).unwrap();
    // diffusers 0.42: the parameters of ControlNetModel(block_out_channels=(320, 640, 1280,
    // 1280), cross_attention_dim=768, attention_head_dim=8), the layout of every SD 1.5
    // ControlNet (e.g. lllyasviel/control_v11f1e_sd15_tile).
    assert_eq!(controlnet_parameters(&sd15.unet), 361_279_120);
    let mut settings = loopback_core::Settings {
        controlnet: "control_v11f1e_sd15_tile".into(),
        ..Default::default()
    };
    settings.tile = loopback_core::settings::Tiling::Off;
    let with = sd15.clone().with_run(&settings);
    let plain = estimate_loop(&sd15, &spec(512), DType::F32, 2, None, KEPT);
    let controlled = estimate_loop(&with, &spec(512), DType::F32, 2, None, KEPT);
    assert_eq!(
        controlled.weights_bytes - plain.weights_bytes,
        361_279_120 * 4
    );
    // The residuals: about a third of the UNet step's activations.
    let extra = controlled.unet_bytes - plain.unet_bytes;
    assert!(
        extra > plain.unet_bytes / 5 && extra < plain.unet_bytes / 2,
        "{extra}"
    );
}

#[test]
fn tiled_loops_stay_within_the_native_loops_memory() {
    let sd15 = ModelShape::from_arch(Arch::Sd15).unwrap();
    let untiled = loopback_core::Settings {
        tile: loopback_core::settings::Tiling::Off,
        ..Default::default()
    };
    let at_1024 = estimate_loop(
        &sd15.clone().with_run(&untiled),
        &spec(1024),
        DType::F32,
        2,
        None,
        KEPT,
    );
    assert_eq!(at_1024.tiles, None);
    // 2048² with automatic tiling (512-pixel tiles overlapping by 128) and the 1024² loop's
    // peak as the limit: the UNet sees one tile, the VAE tiles to fit.
    let limit = (at_1024.peak_bytes as f64 / HEADROOM) as u64;
    let tiled = sd15.with_run(&loopback_core::Settings::default());
    let at_2048 = estimate_loop(&tiled, &spec(2048), DType::F32, 2, Some(limit), KEPT);
    // 256 latent pixels, 64-pixel tiles with a stride of 48: starts 0, 48, 96, 144, 192.
    assert_eq!(at_2048.tiles, Some((5, 5)), "{at_2048:?}");
    assert!(at_2048.fits, "{at_2048:?}");
    assert!(
        at_2048.peak_bytes <= at_1024.peak_bytes,
        "{at_2048:?} {at_1024:?}"
    );
    assert!(at_2048.unet_bytes < at_1024.unet_bytes / 3);
}

#[test]
fn bf16_on_the_cpu_counts_bf16_weights_and_f32_activations() {
    use crate::device::{DeviceSpec, Precision};
    use crate::kernels::compute::Compute;
    let cpu_bf16 = device_dtypes(DeviceSpec::Cpu, Precision::Bf16);
    let packed = Dtypes {
        weights: DType::BF16,
        activations: DType::F32,
    };
    assert_eq!(cpu_bf16, packed);
    // What a model loaded for bf16 on the CPU reports (its `compute` and `dtype`).
    let (compute, dtype) = Compute::for_weights(&candle_core::Device::Cpu, DType::BF16);
    assert_eq!(Dtypes::for_compute(compute, dtype), packed);
    assert_eq!(
        Dtypes::for_compute(Compute::F32, DType::F16),
        DType::F16.into()
    );
    // auto on the CPU: bf16's counts where it becomes bf16 (an AMX CPU), else f32's.
    let cpu_auto = device_dtypes(DeviceSpec::Cpu, Precision::Auto);
    if Precision::Auto.resolve(false) == Precision::Bf16 {
        assert_eq!(cpu_auto, packed);
    } else {
        assert_eq!(cpu_auto, Dtypes::same(DType::F32));
    }
    // Every other precision, and bf16 on a GPU: one dtype, as `device_dtype` says.
    for (device, precision) in [
        (DeviceSpec::Cpu, Precision::F32),
        (DeviceSpec::Cpu, Precision::F16),
        (DeviceSpec::Cuda(0), Precision::Bf16),
        (DeviceSpec::Metal, Precision::Auto),
    ] {
        let dtype = device_dtype(device, precision);
        assert_eq!(device_dtypes(device, precision), Dtypes::same(dtype));
    }

    // SD 1.5 with a ControlNet (built the same way): half the weights of f32, the same
    // activations.
    let settings = loopback_core::Settings {
        controlnet: "control_v11f1e_sd15_tile".into(),
        ..Default::default()
    };
    let shape = ModelShape::from_arch(Arch::Sd15)
        .unwrap()
        .with_run(&settings);
    let f32 = estimate_loop(&shape, &spec(1024), DType::F32, 2, None, KEPT);
    let bf16 = estimate_loop(&shape, &spec(1024), cpu_bf16, 2, None, KEPT);
    assert_eq!(2 * bf16.weights_bytes, f32.weights_bytes);
    assert_eq!(2 * bf16.resident_weights_bytes, f32.resident_weights_bytes);
    assert_eq!(
        (
            bf16.unet_bytes,
            bf16.vae_encode_bytes,
            bf16.vae_decode_bytes
        ),
        (f32.unet_bytes, f32.vae_encode_bytes, f32.vae_decode_bytes)
    );
    assert_eq!(
        f32.peak_bytes - bf16.peak_bytes,
        f32.resident_weights_bytes / 2
    );
    // bf16 on a GPU halves the activations too.
    let gpu = estimate_loop(&shape, &spec(1024), DType::BF16, 2, None, KEPT);
    assert_eq!(gpu.weights_bytes, bf16.weights_bytes);
    assert!(gpu.unet_bytes < bf16.unet_bytes && gpu.peak_bytes < bf16.peak_bytes);
    let released = shape.resident_weight_bytes(cpu_bf16, EncoderWeights::Released);
    assert_eq!(
        2 * released,
        shape.resident_weight_bytes(DType::F32, EncoderWeights::Released)
    );

    // A limit between the two peaks: bf16 fits untiled where f32 has to tile its decode or
    // is refused.
    let limit = ((f32.peak_bytes + bf16.peak_bytes) as f64 / 2.0 / HEADROOM) as u64;
    let f32 = estimate_loop(&shape, &spec(1024), DType::F32, 2, Some(limit), KEPT);
    let bf16 = estimate_loop(&shape, &spec(1024), cpu_bf16, 2, Some(limit), KEPT);
    assert!(bf16.fits && bf16.vae_decode_tile.is_none(), "{bf16:?}");
    assert!(!f32.fits || f32.vae_decode_tile.is_some(), "{f32:?}");
    // Measured with `bench --loop` (random SD 1.5 weights, 512², DDIM 30 × 0.35, CFG 7; the
    // text encoder kept): peak RSS 4809 MiB in f32, 2719 MiB in bf16 on the CPU. The estimates
    // stay within 10 % above.
    let sd15 = ModelShape::from_arch(Arch::Sd15).unwrap();
    for (dtypes, measured) in [(Dtypes::same(DType::F32), 4809.0), (cpu_bf16, 2719.0)] {
        let estimate = estimate_loop(&sd15, &spec(512), dtypes, 2, None, KEPT).peak_bytes;
        let ratio = estimate as f64 / (measured * MIB as f64);
        assert!((0.97..=1.1).contains(&ratio), "{dtypes:?}: {ratio}");
    }
    // The refusal's advice is the CPU's (f32 activations in the machine's memory).
    let tight = estimate_loop(&shape, &spec(4096), cpu_bf16, 2, Some(2 << 30), KEPT);
    let line = check_fits(&[tight], Some(2 << 30), cpu_bf16)
        .unwrap_err()
        .to_string();
    assert!(line.contains("close other programs"), "{line}");
}
