//! The Size section: start size, target (max size or scale), the final size, and a table of
//! every loop's size, denoise, seed and steps with time and memory estimates.

use candle_core::DType;

use super::super::state::{Persisted, Session};
use super::fields;
use loopback_core::plan::{self, Plan, PlanInput};
use loopback_core::settings::{Group, Settings, Size, TargetMode};
use loopback_engine::model::arch::Arch;
use loopback_engine::run::memory::{self, Dtypes, EncoderWeights, ModelShape};

/// The input size assumed before an image is opened.
const ASSUMED_INPUT: Size = Size::new(512, 512);

/// The plan for the current settings and input image, and whether the input size is assumed.
pub fn current_plan(settings: &Settings, session: &Session) -> Result<(Plan, bool), String> {
    let input = match &session.input {
        Some(input) => PlanInput::Image {
            size: input.picture.size(),
            mean: input.mean,
        },
        None => PlanInput::Image {
            size: ASSUMED_INPUT,
            mean: 0.5,
        },
    };
    let seed = match settings.seed {
        -1 => 0,
        s => plan::resolve_seed(s),
    };
    let plan = plan::plan_for(settings, input, seed).map_err(|e| e.to_string())?;
    Ok((plan, session.input.is_none()))
}

/// The shape the memory planner estimates with: the loaded model's configs, else the SD 1.5
/// architecture (and f32, as on the CPU by default).
fn model_shape(session: &Session) -> Option<(ModelShape, Dtypes)> {
    if let Some((model, _, _)) = &session.model.loaded {
        return Some((
            ModelShape::from_files(&model.model.files),
            Dtypes::for_compute(model.model.compute, model.model.dtype),
        ));
    }
    ModelShape::from_arch(Arch::Sd15)
        .ok()
        .map(|shape| (shape, Dtypes::same(DType::F32)))
}

/// Draws the Size section.
pub fn ui(ui: &mut egui::Ui, persisted: &mut Persisted, session: &Session) {
    let settings = &mut persisted.settings;
    let skip: &[&str] = match settings.target_mode {
        TargetMode::MaxSize => &["scale"],
        TargetMode::Scale => &["max_width", "max_height"],
    };
    fields::group_ui(ui, settings, Group::Size, skip);
    let (plan, assumed) = match current_plan(settings, session) {
        Ok(plan) => plan,
        Err(e) => {
            ui.colored_label(ui.visuals().error_fg_color, e);
            return;
        }
    };
    ui.label(format!("Start {} to final {}", plan.start, plan.final_size));
    if assumed {
        ui.weak(format!(
            "(assuming a {ASSUMED_INPUT} input until an image is opened)"
        ));
    }
    for note in plan.notes() {
        ui.weak(note);
    }
    let seconds_per_unit = session.seconds_per_mpstep;
    let shape = model_shape(session).map(|(shape, dtypes)| (shape.with_run(settings), dtypes));
    let batch = memory::unet_batch(settings.cfg);
    let limit = memory::available_bytes();
    egui::Grid::new("plan_table")
        .striped(true)
        .num_columns(7)
        .show(ui, |ui| {
            for heading in [
                "Loop", "Size", "Denoise", "Seed", "Steps", "Tiles", "Estimate",
            ] {
                ui.strong(heading);
            }
            ui.end_row();
            let mut total = 0.0;
            for l in &plan.loops {
                let star = if l.estimated { "*" } else { "" };
                ui.label(l.index.to_string());
                ui.label(format!("{}x{}{star}", l.width, l.height));
                ui.label(format!("{:.3}", l.denoise));
                ui.label(if settings.seed == -1 {
                    format!("r+{}", l.index - 1)
                } else {
                    l.seed.to_string()
                });
                ui.label(l.steps.to_string());
                let mp_steps = f64::from(l.width) * f64::from(l.height) * f64::from(l.steps) / 1e6;
                total += mp_steps;
                let time = seconds_per_unit
                    .map(|s| format!("{:.0} s", s * mp_steps))
                    .unwrap_or_default();
                let Some((shape, dtypes)) = &shape else {
                    ui.label("");
                    ui.label(time);
                    ui.end_row();
                    continue;
                };
                let estimate =
                    memory::estimate_loop(shape, l, *dtypes, batch, limit, EncoderWeights::Kept);
                // The tiled-diffusion grid (rows × columns), or "–" for one pass.
                match estimate.tiles {
                    Some((rows, cols)) => ui
                        .label(format!("{rows}×{cols}"))
                        .on_hover_text("tiled diffusion: the UNet denoises this grid of tiles"),
                    None => ui.label("–"),
                };
                let sep = if time.is_empty() { "" } else { ", " };
                let label = format!("{time}{sep}{}", memory::gib(estimate.peak_bytes));
                let hover = format!(
                    "{mp_steps:.1} megapixel-steps; peak memory of the loop as the planner \
                     estimates it for {} ({}){}",
                    shape.name,
                    estimate.vae_label(),
                    if estimate.fits {
                        ""
                    } else {
                        " — does not fit the memory available"
                    }
                );
                // No colour for "does not fit": the memory available differs from machine to
                // machine and moment to moment; Run refuses such a plan with a message.
                ui.label(label).on_hover_text(hover);
                ui.end_row();
            }
            if let Some(s) = seconds_per_unit {
                ui.label("");
                ui.label("");
                ui.label("");
                ui.label("");
                ui.label("");
                ui.strong("Total");
                ui.strong(format!("~{:.0} s", s * total));
                ui.end_row();
            }
        });
    if settings.seed == -1 {
        ui.weak("r: a random seed drawn at each run.");
    }
    if seconds_per_unit.is_none() {
        ui.weak("Times appear after the first run on this model.");
    }
}
