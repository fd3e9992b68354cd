//! `loopback-scaler plan`: print the loop plan as a table or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use loopback_scaler::io::{load_image, to_diffusion_rgb};
use loopback_scaler::plan::{self, Plan};
use loopback_scaler::settings::{Choice, Settings, Size};

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
    #[command(flatten)]
    settings: SettingsSource,
}

/// Runs `plan`.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let settings = args.settings.resolve()?;
    let (image_size, mean) = match &args.input {
        Some(path) => {
            let image = to_diffusion_rgb(&load_image(path)?);
            let size = Size::new(image.width(), image.height());
            (Some(size), Some(plan::rgb_mean(&image)))
        }
        None => (None, None),
    };
    let start = plan::start_size(&settings, image_size)?;
    let seed = plan::resolve_seed(settings.seed);
    let means: Vec<f64> = mean.into_iter().collect();
    let plan = plan::plan(&settings, start, seed, &means)?;
    if args.json {
        println!("{}", plan.to_json());
    } else {
        print!("{}", table(&settings, &plan));
        for warning in settings.warnings() {
            eprintln!("warning: {warning}");
        }
    }
    Ok(())
}

/// The plan as a readable table.
fn table(settings: &Settings, plan: &Plan) -> String {
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
        "{:>4}  {:>11}  {:>7}  {:>10}  {:>5}",
        "loop", "size", "denoise", "seed", "steps"
    );
    for l in &plan.loops {
        let size = format!("{}{}", l.size(), if l.estimated { "*" } else { "" });
        let _ = writeln!(
            out,
            "{:>4}  {:>11}  {:>7.4}  {:>10}  {:>5}",
            l.index, size, l.denoise, l.seed, l.steps
        );
    }
    for note in plan.notes() {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
