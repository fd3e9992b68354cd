//! The settings side panel, grouped like the original script and collapsible: Model, Prompt,
//! img2img, ControlNet, Loops, Size and Info. The finishing settings have their own panel
//! ([`super::finishing`]).

mod controlnet;
pub mod fields;
mod info;
mod loops;
mod model;
mod prompt;
mod size;

use super::command::{Command, Commands};
use super::state::{Persisted, Session};
use loopback_core::settings::{Group, Sampler};
use loopback_engine::load::hub::Preset;

/// Draws the side panel.
pub fn ui(
    ui: &mut egui::Ui,
    persisted: &mut Persisted,
    session: &Session,
    commands: &mut Commands,
) {
    egui::ScrollArea::vertical()
        .id_salt("settings_scroll")
        .show(ui, |ui| {
            ui.add_space(4.0);
            egui::CollapsingHeader::new("Model")
                .default_open(true)
                .show(ui, |ui| model::ui(ui, persisted, session, commands));
            egui::CollapsingHeader::new("Prompt")
                .default_open(true)
                .show(ui, |ui| prompt::ui(ui, persisted, session));
            egui::CollapsingHeader::new("img2img")
                .default_open(true)
                .show(ui, |ui| img2img_ui(ui, persisted, commands));
            egui::CollapsingHeader::new("ControlNet")
                .default_open(!persisted.settings.controlnet.trim().is_empty())
                .show(ui, |ui| controlnet::ui(ui, persisted, session, commands));
            egui::CollapsingHeader::new("Loops")
                .default_open(true)
                .show(ui, |ui| loops::ui(ui, persisted, session));
            egui::CollapsingHeader::new("Size")
                .default_open(true)
                .show(ui, |ui| size::ui(ui, persisted, session));
            egui::CollapsingHeader::new("Info")
                .default_open(false)
                .show(ui, info::ui);
        });
}

/// Sampler, steps, CFG, denoise, seed (with random / reuse last), resize mode, colour
/// correction.
fn img2img_ui(ui: &mut egui::Ui, persisted: &mut Persisted, commands: &mut Commands) {
    let settings = &mut persisted.settings;
    fields::group_ui(
        ui,
        settings,
        Group::Img2img,
        &[
            "prompt",
            "negative_prompt",
            "seed",
            "resize_mode",
            "color_correction",
        ],
    );
    suggestion_ui(ui, persisted);
    let settings = &mut persisted.settings;
    fields::keys_ui(ui, settings, &["seed"]);
    ui.horizontal(|ui| {
        if ui
            .button("Random")
            .on_hover_text("Draw a new seed for every run (seed -1)")
            .clicked()
        {
            settings.seed = -1;
        }
        let last = persisted.last_seed;
        if ui
            .add_enabled(last.is_some(), egui::Button::new("Reuse last"))
            .on_hover_text(match last {
                Some(seed) => format!("Use the last run's seed, {seed}"),
                None => "No run yet".to_string(),
            })
            .clicked()
        {
            commands.push(Command::ReuseLastSeed);
        }
    });
    fields::keys_ui(
        ui,
        &mut persisted.settings,
        &["resize_mode", "color_correction"],
    );
}

/// The steps and CFG the sampler (LCM) or the model (the turbo presets) is made for, with a
/// button that sets them, when the settings are far from them.
fn suggestion_ui(ui: &mut egui::Ui, persisted: &mut Persisted) {
    let settings = &persisted.settings;
    let (steps, cfg) = (settings.steps, settings.cfg);
    let suggestion = if settings.sampler == Sampler::Lcm {
        (!(4..=8).contains(&steps) || !(1.0..=2.0).contains(&cfg))
            .then(|| ("LCM".to_string(), 6, 1.5))
    } else {
        Preset::parse(&persisted.model).and_then(|p| {
            let (best_steps, best_cfg) = p.recommended_steps_cfg();
            p.advice(steps, cfg)
                .map(|_| (p.name().to_string(), best_steps as u32, best_cfg))
        })
    };
    let Some((what, steps, cfg)) = suggestion else {
        return;
    };
    ui.horizontal(|ui| {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            format!("{what} is made for {steps} steps, CFG {cfg}"),
        );
        if ui
            .button("Use")
            .on_hover_text(format!("Set {steps} steps and CFG {cfg}"))
            .clicked()
        {
            persisted.settings.steps = steps;
            persisted.settings.cfg = cfg;
        }
    });
}
