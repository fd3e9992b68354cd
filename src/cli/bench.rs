//! `loopback-scaler bench`: time UNet steps, VAE encode and decode at a given size, and report
//! seconds and peak memory as JSON. Without `--model`, the networks get random weights of the
//! chosen architecture (timing does not depend on the values). `--loop` times one whole
//! img2img loop instead (`bench_loop.rs`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use loopback_core::settings::{Sampler, ScheduleType};
use loopback_engine::device;
use loopback_engine::kernels::compute::Compute;
use loopback_engine::model::SdModel;
use loopback_engine::model::arch::Arch;
use loopback_engine::model::unet::AddedCond;
use loopback_engine::model::vae::{TileMode, Tiling, Vae, VaeOptions};
use loopback_engine::run::memory::{self, VaePass};
use serde_json::json;

use super::bench_loop::{LoopBench, mib};

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
    /// Also time VAE encode and decode (batch 1), with the peak memory each adds.
    #[arg(long)]
    vae: bool,
    /// Time only the VAE (no UNet is built).
    #[arg(long, conflicts_with = "model")]
    vae_only: bool,
    /// Which VAE passes to time.
    #[arg(long, default_value = "both", value_parser = ["encode", "decode", "both"])]
    vae_pass: String,
    /// VAE tiling: auto (the memory planner decides), never, or a tile side in latent pixels.
    #[arg(long, default_value = "auto", value_name = "auto|never|N")]
    vae_tile: String,
    /// Memory the automatic VAE tiling may plan for (e.g. 3G); default: what is available.
    #[arg(long, value_name = "SIZE", value_parser = memory::parse_bytes)]
    memory_limit: Option<u64>,
    /// Time each UNet step with a ControlNet (random weights of the architecture's) run before
    /// it and its residuals added, as a ControlNet loop runs.
    #[arg(long)]
    controlnet: bool,
    /// A diffusers folder to time instead of random weights.
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    #[command(flatten)]
    pub(super) target: super::target::Target,
    /// Time one whole img2img loop at --size instead (prompt encoding, VAE encode, the
    /// denoising steps, VAE decode; CFG 7, --sampler, default DDIM) on --model's folder.
    #[arg(long = "loop", requires = "model", conflicts_with_all = ["vae", "vae_only"])]
    whole_loop: bool,
    /// Scheduled steps of --loop (it runs the last steps × denoise of them).
    #[arg(long, default_value_t = 30, requires = "whole_loop")]
    loop_steps: usize,
    /// Denoising strength of --loop.
    #[arg(long, default_value_t = 0.35, requires = "whole_loop")]
    denoise: f64,
    /// The sampler of --loop.
    #[arg(long, value_enum, default_value = "ddim", requires = "whole_loop")]
    sampler: Sampler,
    /// The schedule type of --loop.
    #[arg(long, value_enum, default_value = "automatic", requires = "whole_loop")]
    schedule: ScheduleType,
}

/// Peak resident memory of this process in MiB (Linux; `None` elsewhere).
fn peak_rss_mib() -> Option<f64> {
    memory::process_peak_rss().map(mib)
}

fn tile_mode(text: &str) -> anyhow::Result<TileMode> {
    Ok(match text {
        "auto" => TileMode::Auto,
        "never" => TileMode::Never,
        n => TileMode::Always(n.parse().ok().filter(|&n: &usize| n >= 4).ok_or_else(|| {
            anyhow::anyhow!("--vae-tile: {n:?} is not auto, never or a tile side ≥ 4")
        })?),
    })
}

/// Runs one VAE pass once and reports its time, tiling, the planner's estimate and the peak
/// resident memory it added (Linux: the peak is reset before the pass).
fn vae_pass(
    vae: &Vae,
    pass: VaePass,
    input: &Tensor,
    latent: (usize, usize),
    dtype: DType,
    device: &Device,
) -> anyhow::Result<serde_json::Value> {
    let options = vae.options();
    let mode = match pass {
        VaePass::Encode => options.encode,
        VaePass::Decode => options.decode,
    };
    let limit = options.memory_limit.or_else(memory::available_bytes);
    let make = |tile| match pass {
        VaePass::Encode => Tiling::encode(tile),
        VaePass::Decode => Tiling::decode(tile),
    };
    let tiling = match mode {
        TileMode::Never => None,
        TileMode::Always(tile) => Some(make(tile)),
        TileMode::Auto => {
            memory::vae_tiling(
                vae.config(),
                pass,
                dtype,
                1,
                latent,
                options.score_budget,
                limit,
            )
            .tiling
        }
    };
    let estimate = memory::vae_pass_bytes(
        vae.config(),
        pass,
        dtype,
        1,
        latent,
        tiling.as_ref(),
        options.score_budget,
    );
    let before = memory::process_rss().unwrap_or(0);
    let reset = memory::reset_peak_rss();
    let start = Instant::now();
    let out = match pass {
        VaePass::Encode => vae.encode_mean_with(input, tiling.as_ref())?,
        VaePass::Decode => vae.decode_with(input, tiling.as_ref())?,
    };
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let peak = memory::process_peak_rss().unwrap_or(0);
    drop(out);
    Ok(json!({
        "seconds": seconds,
        "tile": tiling.map(|t| t.tile),
        "rss_before_mib": mib(before),
        "peak_increase_mib": reset.then(|| mib(peak.saturating_sub(before))),
        "estimate_mib": mib(estimate),
    }))
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
    if let (true, Some(model)) = (args.whole_loop, &args.model) {
        let report = super::bench_loop::run(&LoopBench {
            model,
            size: u32::try_from(args.size)?,
            steps: args.loop_steps,
            denoise: args.denoise,
            sampler: args.sampler,
            schedule: args.schedule,
            device: args.target.device,
            precision: args.target.precision,
        })?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let tile = tile_mode(&args.vae_tile)?;
    let (device, weights_dtype) = device::select_with(args.target.device, args.target.precision)?;
    // The tensors' dtype (bf16 on the CPU holds bf16 weights and computes on f32 tensors).
    let (compute, dtype) = Compute::for_weights(&device, weights_dtype);
    let load = Instant::now();
    let (unet, unet_file, vae, name) = match &args.model {
        Some(path) => {
            let model = SdModel::load(path, &device, weights_dtype)?;
            let files = model.files.clone();
            (
                Some(model.unet),
                files.unet,
                Some(model.vae),
                path.display().to_string(),
            )
        }
        None => {
            let nets = args.arch.random_networks(
                !args.vae_only,
                args.vae || args.vae_only,
                weights_dtype,
                &device,
            )?;
            (
                nets.unet,
                args.arch.unet()?,
                nets.vae,
                format!("{:?} (random weights)", args.arch),
            )
        }
    };
    let load_s = load.elapsed().as_secs_f64();

    let latent = args.size / 8;
    let mut report = json!({
        "model": name,
        "device": device::describe(&device),
        "dtype": format!("{dtype:?}"),
        "compute": format!("{compute:?}"),
        "size": args.size,
        "batch": args.batch,
        "threads": candle_core::utils::get_num_threads(),
        "load_s": load_s,
    });
    if let Some(unet) = &unet {
        let x =
            Tensor::randn(0f32, 1.0, (args.batch, 4, latent, latent), &device)?.to_dtype(dtype)?;
        let context = Tensor::randn(
            0f32,
            1.0,
            (args.batch, 77, unet_file.cross_attention_dim),
            &device,
        )?
        .to_dtype(dtype)?;
        // SDXL: a pooled embedding and the size ids of the benchmarked image.
        let added = match unet_file.text_time("built-in".as_ref())? {
            Some(tt) => Some(AddedCond {
                text_embeds: Tensor::randn(
                    0f32,
                    1.0,
                    (args.batch, tt.input_dim - 6 * tt.time_embed_dim),
                    &device,
                )?
                .to_dtype(dtype)?,
                time_ids: Tensor::new(
                    &[
                        args.size as f32,
                        args.size as f32,
                        0.0,
                        0.0,
                        args.size as f32,
                        args.size as f32,
                    ],
                    &device,
                )?
                .unsqueeze(0)?
                .repeat((args.batch, 1))?,
            }),
            None => None,
        };
        let controlnet = if args.controlnet {
            Some(loopback_engine::model::arch::random_controlnet(
                &unet_file, dtype, &device,
            )?)
        } else {
            None
        };
        let hint = Tensor::rand(0f32, 1.0, (args.batch, 3, args.size, args.size), &device)?
            .to_dtype(dtype)?;
        // As in a run's sampling loop, the passes keep the kernels' scratch buffers and take
        // every block from the heap.
        let scratch = loopback_engine::kernels::ScratchHold::new();
        let heap = loopback_engine::allocator::HeapOnly::begin();
        let unet_times = time(args.steps, || {
            let residuals = match &controlnet {
                Some(net) => Some(net.forward(&x, 500.0, &context, added.as_ref(), &hint)?),
                None => None,
            };
            let out =
                unet.forward_controlled(&x, 500.0, &context, added.as_ref(), residuals.as_ref())?;
            device.synchronize()?;
            drop(out);
            Ok(())
        })?;
        drop((scratch, heap));
        report["controlnet"] = json!(args.controlnet);
        report["unet_step"] = summary(&unet_times);
        report["unet_peak_rss_mib"] = json!(peak_rss_mib());
    }
    if let Some(vae) = &vae {
        vae.set_options(VaeOptions {
            encode: tile,
            decode: tile,
            memory_limit: args.memory_limit,
            ..VaeOptions::default()
        });
        if args.vae_pass != "decode" {
            let image =
                Tensor::randn(0f32, 1.0, (1, 3, args.size, args.size), &device)?.to_dtype(dtype)?;
            report["vae_encode"] = vae_pass(
                vae,
                VaePass::Encode,
                &image,
                (latent, latent),
                dtype,
                &device,
            )?;
        }
        if args.vae_pass != "encode" {
            let latents =
                Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &device)?.to_dtype(dtype)?;
            report["vae_decode"] = vae_pass(
                vae,
                VaePass::Decode,
                &latents,
                (latent, latent),
                dtype,
                &device,
            )?;
        }
    }
    // With VAE passes, the peak since the last pass began (each resets it).
    report["peak_rss_mib"] = json!(peak_rss_mib());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
