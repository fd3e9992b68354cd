//! `loopback-scaler plan`: print the loop plan as a table or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use loopback_core::io::load_image;
use loopback_core::plan::{self, Plan, PlanInput};
use loopback_core::settings::{Choice, Settings};
use loopback_engine::load::resolve;
use loopback_engine::run::memory::{self, EncoderWeights, Estimate, ModelShape};

use super::SettingsSource;

/// Arguments of `plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The input image: its size (rounded down to ×8) is the start size, and its brightness
    /// drives the adaptive curve.
    #[arg(long, value_name = "IMAGE", required_unless_present = "start_size")]
    input: Option<PathBuf>,
    /// Print `{"final":{..},"loops":[..]}` instead of a table.
    #[arg(long)]
    json: bool,
    /// The model whose memory to estimate: a preset or a diffusers folder (only its configs
    /// are read). Default: the SD 1.5 architecture.
    #[arg(long, value_name = "PRESET|PATH")]
    model: Option<String>,
    #[command(flatten)]
    pub(super) target: super::target::Target,
    /// Memory to plan for (e.g. 8G); default on the CPU: what is available now.
    #[arg(long, value_name = "SIZE", value_parser = memory::parse_bytes)]
    memory_limit: Option<u64>,
    #[command(flatten)]
    settings: SettingsSource,
}

/// Runs `plan`.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let settings = args.settings.resolve()?;
    let input = match &args.input {
        Some(path) => PlanInput::of_image(&load_image(path)?),
        None => PlanInput::NoImage,
    };
    let plan = plan::plan_for(&settings, input, plan::resolve_seed(settings.seed))?;
    let shape = match &args.model {
        Some(spec) => ModelShape::resolve(spec, &resolve::default_search_dirs())?,
        None => ModelShape::from_arch(loopback_engine::model::arch::Arch::Sd15)?,
    }
    .with_run(&settings);
    let dtypes = memory::device_dtypes(args.target.device, args.target.precision);
    let batch = memory::unet_batch(settings.cfg);
    let limit = memory::run_limit(args.target.device, args.memory_limit);
    // The plan `run` would carry out, which frees the text encoders after loop 1's prompts.
    let (estimates, refusal) = match memory::check_plan(
        &shape,
        &plan,
        dtypes,
        batch,
        limit,
        EncoderWeights::Released,
    ) {
        Ok(estimates) => (estimates, None),
        Err(refusal) => (refusal.estimates, Some(refusal.error)),
    };
    if args.json {
        let json = plan.to_json();
        let memory = serde_json::json!({
            "model": shape.name,
            "dtype": format!("{:?}", dtypes.activations),
            "weights_dtype": format!("{:?}", dtypes.weights),
            "batch": batch,
            "limit_bytes": limit,
            "loops": estimates,
        });
        // The plan's own keys first, then the estimate.
        match json.strip_suffix('}') {
            Some(head) => println!("{head},\"memory\":{memory}}}"),
            None => println!("{json}"),
        }
    } else {
        print!("{}", table(&settings, &plan, &estimates));
        let available = limit.map_or("unknown (pass --memory-limit)".to_string(), memory::gib);
        println!(
            "memory: {} ({dtypes}, UNet batch {batch}), available {available}",
            shape.name
        );
        if let Some(e) = refusal {
            println!("warning: {e}");
        }
        for warning in settings.warnings() {
            eprintln!("warning: {warning}");
        }
    }
    Ok(())
}

/// The plan as a readable table.
fn table(settings: &Settings, plan: &Plan, estimates: &[Estimate]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "start {}  →  final {}   ({} loops, {} curve, {} sampler, {} steps, CFG {})",
        plan.start,
        plan.final_size,
        plan.loops.len(),
        settings.curve.label(),
        settings.sampler.label(),
        settings.steps,
        settings.cfg
    );
    let _ = writeln!(
        out,
        "{:>4}  {:>11}  {:>7}  {:>10}  {:>5}  {:>9}  {:>6}  VAE",
        "loop", "size", "denoise", "seed", "steps", "memory", "tiles"
    );
    for (l, e) in plan.loops.iter().zip(estimates) {
        let size = format!("{}{}", l.size(), if l.estimated { "*" } else { "" });
        let fits = if e.fits { "" } else { " (too big)" };
        let _ = writeln!(
            out,
            "{:>4}  {:>11}  {:>7.4}  {:>10}  {:>5}  {:>9}  {:>6}  {}{fits}",
            l.index,
            size,
            l.denoise,
            l.seed,
            l.steps,
            memory::gib(e.peak_bytes),
            e.tiles.map_or("-".to_string(), |(r, c)| format!("{r}x{c}")),
            e.vae_label()
        );
    }
    for note in plan.notes() {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
