//! The Size section: start size, target (max size or scale), the final size, and a table of
//! every loop's size, denoise, seed and steps with time and memory estimates.

use super::super::state::{Persisted, Session};
use super::fields;
use crate::plan::{self, Plan};
use crate::settings::{Group, Settings, Size, TargetMode};

/// The input size assumed before an image is opened.
const ASSUMED_INPUT: Size = Size::new(512, 512);

/// The plan for the current settings and input image, and whether the input size is assumed.
pub fn current_plan(settings: &Settings, session: &Session) -> Result<(Plan, bool), String> {
    let (size, mean, assumed) = match &session.input {
        Some(input) => (input.picture.size(), input.mean, false),
        None => (ASSUMED_INPUT, 0.5, true),
    };
    let start = plan::start_size(settings, Some(size)).map_err(|e| e.to_string())?;
    let seed = match settings.seed {
        -1 => 0,
        s => plan::resolve_seed(s),
    };
    let plan = plan::plan(settings, start, seed, &[mean]).map_err(|e| e.to_string())?;
    Ok((plan, assumed))
}

/// Bytes of the largest attention matrix of a loop (SD's first UNet block attends over every
/// latent pixel: tokens² × 8 heads, f32, twice with classifier-free guidance).
fn attention_bytes(width: u32, height: u32, cfg: f64) -> f64 {
    let tokens = f64::from(width / 8) * f64::from(height / 8);
    let batch = if cfg > 1.0 { 2.0 } else { 1.0 };
    tokens * tokens * 8.0 * 4.0 * batch
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
    egui::Grid::new("plan_table")
        .striped(true)
        .num_columns(6)
        .show(ui, |ui| {
            for heading in ["Loop", "Size", "Denoise", "Seed", "Steps", "Estimate"] {
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
                let memory = attention_bytes(l.width, l.height, settings.cfg) / (1024.0 * 1024.0);
                let time = seconds_per_unit
                    .map(|s| format!("{:.0} s, ", s * mp_steps))
                    .unwrap_or_default();
                ui.label(format!("{time}{memory:.0} MiB"))
                    .on_hover_text(format!(
                        "{mp_steps:.1} megapixel-steps; the memory figure is the largest \
                         attention matrix, on top of the model's weights"
                    ));
                ui.end_row();
            }
            if let Some(s) = seconds_per_unit {
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
