//! `loopback-scaler bench`: time UNet steps, VAE encode and decode at a given size, and report
//! seconds and peak memory as JSON. Without `--model`, the networks get random weights of the
//! chosen architecture (timing does not depend on the values).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use loopback_scaler::engine::arch::Arch;
use loopback_scaler::engine::device::{self, DeviceSpec};
use loopback_scaler::engine::model::SdModel;
use loopback_scaler::engine::model::config::{UNetFile, VaeFile};
use loopback_scaler::engine::model::unet::UNet;
use loopback_scaler::engine::model::vae::Vae;
use serde_json::json;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Architecture for random weights (ignored with --model).
    #[arg(long, value_enum, default_value = "sd15")]
    arch: Arch,
    /// Image size in pixels (square, multiple of 8).
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// UNet batch (2 = one classifier-free-guidance step).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Timed UNet steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Also time VAE encode and decode.
    #[arg(long)]
    vae: bool,
    /// A diffusers folder to time instead of random weights.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Where to run: auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
}

/// Peak resident memory of this process in MiB (Linux; `None` elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Builds a network with random weights as plain tensors. A `VarMap` alone would hand out
/// trainable variables, and candle then keeps every activation of a forward pass alive for
/// backpropagation (at 512² that is 12 GB more than inference needs): so the variables are
/// created once, detached, and the network is built again from the detached tensors.
fn with_random_weights<T>(
    dtype: DType,
    device: &Device,
    build: impl Fn(VarBuilder) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let map = VarMap::new();
    drop(build(VarBuilder::from_varmap(&map, dtype, device))?);
    let tensors: HashMap<String, Tensor> = map
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("random weights: poisoned lock"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_detached_tensor()))
        .collect();
    build(VarBuilder::from_tensors(tensors, dtype, device))
}

/// Times `f` once to warm up, then `n` times; returns the seconds of each timed call.
fn time<F: FnMut() -> anyhow::Result<()>>(n: usize, mut f: F) -> anyhow::Result<Vec<f64>> {
    f()?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn summary(times: &[f64]) -> serde_json::Value {
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    json!({ "mean_s": mean, "min_s": min, "runs": times })
}

/// Runs `bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size.is_multiple_of(8) && args.size >= 64,
        "--size must be a multiple of 8, at least 64"
    );
    let (device, dtype) = device::select(args.device)?;
    let load = Instant::now();
    let (unet, unet_file, vae, name) = match &args.model {
        Some(path) => {
            let model = SdModel::load(path, &device, dtype)?;
            let files = model.files.clone();
            (
                model.unet,
                files.unet,
                Some(model.vae),
                path.display().to_string(),
            )
        }
        None => {
            let unet_file: UNetFile = args.arch.unet()?;
            let unet = with_random_weights(dtype, &device, |vb| {
                Ok(UNet::new(vb, &unet_file, "built-in".as_ref())?)
            })?;
            let vae_file: VaeFile = args.arch.vae()?;
            let vae = if args.vae {
                Some(with_random_weights(dtype, &device, |vb| {
                    Ok(Vae::new(vb, &vae_file)?)
                })?)
            } else {
                None
            };
            (
                unet,
                unet_file,
                vae,
                format!("{:?} (random weights)", args.arch),
            )
        }
    };
    let load_s = load.elapsed().as_secs_f64();

    let latent = args.size / 8;
    let x = Tensor::randn(0f32, 1.0, (args.batch, 4, latent, latent), &device)?.to_dtype(dtype)?;
    let context = Tensor::randn(
        0f32,
        1.0,
        (args.batch, 77, unet_file.cross_attention_dim),
        &device,
    )?
    .to_dtype(dtype)?;
    let unet_times = time(args.steps, || {
        let out = unet.forward(&x, 500.0, &context)?;
        device.synchronize()?;
        drop(out);
        Ok(())
    })?;
    let mut report = json!({
        "model": name,
        "device": device::describe(&device),
        "dtype": format!("{dtype:?}"),
        "size": args.size,
        "batch": args.batch,
        "threads": candle_core::utils::get_num_threads(),
        "load_s": load_s,
        "unet_step": summary(&unet_times),
    });
    if let Some(vae) = &vae {
        let image =
            Tensor::randn(0f32, 1.0, (1, 3, args.size, args.size), &device)?.to_dtype(dtype)?;
        let latents = Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device)?.to_dtype(dtype)?;
        let encode = time(1, || {
            vae.encode(&image)?;
            Ok(())
        })?;
        let decode = time(1, || {
            vae.decode(&latents)?;
            Ok(())
        })?;
        report["vae_encode"] = summary(&encode);
        report["vae_decode"] = summary(&decode);
    }
    report["peak_rss_mib"] = json!(peak_rss_mib());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
