//! The image in the centre: fit, 1:1, zoom and pan (an [`egui::Scene`]), and a before/after
//! compare slider.

use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};

use super::command::{Command, Commands};
use super::state::{Session, Shown, ViewState};

/// The zoom range: 5 % to 1600 %.
const ZOOM: std::ops::RangeInclusive<f32> = 0.05..=16.0;

/// Draws the viewer.
pub fn ui(ui: &mut egui::Ui, session: &Session, view: &mut ViewState, commands: &mut Commands) {
    if session.input.is_none() {
        empty_ui(ui, session, commands);
        return;
    }
    let Some(canvas) = canvas_size(session, view.shown) else {
        view.shown = Shown::Original;
        return;
    };
    if view.canvas != canvas {
        view.canvas = canvas;
        view.scene_rect = Rect::ZERO;
    }
    controls_ui(ui, session, view);
    let available = ui.available_size();
    if view.want_one_to_one {
        view.want_one_to_one = false;
        let ppp = ui.ctx().pixels_per_point();
        let center = if view.scene_rect.is_positive() {
            view.scene_rect.center()
        } else {
            Rect::from_min_size(Pos2::ZERO, canvas).center()
        };
        view.scene_rect = Rect::from_center_size(center, available * ppp);
    }
    let compare = view
        .compare_with
        .filter(|c| *c != view.shown)
        .and_then(|c| session.texture(c));
    let shown = session.texture(view.shown);
    let split = view.split;
    egui::Frame::canvas(ui.style()).show(ui, |ui| {
        egui::Scene::new()
            .zoom_range(ZOOM)
            .show(ui, &mut view.scene_rect, |ui| {
                let rect = Rect::from_min_size(Pos2::ZERO, canvas);
                ui.allocate_rect(rect, Sense::hover());
                let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
                if let Some(texture) = shown {
                    ui.painter().image(texture.id(), rect, uv, Color32::WHITE);
                }
                if let Some(before) = compare {
                    let x = rect.left() + rect.width() * split;
                    let left = Rect::from_min_max(rect.min, Pos2::new(x, rect.bottom()));
                    ui.painter()
                        .with_clip_rect(left)
                        .image(before.id(), rect, uv, Color32::WHITE);
                    ui.painter().line_segment(
                        [Pos2::new(x, rect.top()), Pos2::new(x, rect.bottom())],
                        Stroke::new(2.0, Color32::WHITE),
                    );
                }
            });
    });
}

/// The size (in image pixels) the shown image is laid out at. The step preview is smaller
/// than the loop it previews, so it is stretched to the loop's size.
fn canvas_size(session: &Session, shown: Shown) -> Option<Vec2> {
    if shown == Shown::Preview
        && let Some(spec) = session.progress.as_ref().and_then(|p| p.spec)
    {
        return Some(Vec2::new(spec.width as f32, spec.height as f32));
    }
    if shown == Shown::Preview {
        return session.preview.as_ref().map(|t| t.size_vec2());
    }
    let image = session.image(shown)?;
    Some(Vec2::new(image.width() as f32, image.height() as f32))
}

/// Fit, 1:1, the zoom level, and what to compare with.
fn controls_ui(ui: &mut egui::Ui, session: &Session, view: &mut ViewState) {
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Fit")
            .on_hover_text("Fit the image in the view")
            .clicked()
        {
            view.scene_rect = Rect::ZERO;
        }
        if ui
            .button("1:1")
            .on_hover_text("One image pixel per screen pixel")
            .clicked()
        {
            view.want_one_to_one = true;
        }
        let available = ui.available_rect_before_wrap().width().max(1.0);
        if view.scene_rect.is_positive() {
            let zoom = ui.ctx().pixels_per_point() * ui.max_rect().width().min(available)
                / view.scene_rect.width();
            ui.label(format!("{:.0} %", zoom * 100.0))
                .on_hover_text("Scroll with Ctrl to zoom, drag to pan");
        }
        ui.separator();
        let size = canvas_size(session, view.shown)
            .map(|s| format!(" — {}x{}", s.x, s.y))
            .unwrap_or_default();
        ui.label(format!("Showing {}{size}", view.shown.label()));
        ui.separator();
        let choices = compare_choices(session);
        let selected = view
            .compare_with
            .map_or_else(|| "nothing".to_string(), Shown::label);
        egui::ComboBox::from_label("Compare with")
            .selected_text(selected)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut view.compare_with, None, "nothing");
                for choice in choices {
                    ui.selectable_value(&mut view.compare_with, Some(choice), choice.label());
                }
            });
        if view.compare_with.is_some() {
            ui.add(
                egui::Slider::new(&mut view.split, 0.0..=1.0)
                    .show_value(false)
                    .text("Before | after"),
            )
            .on_hover_text("Left of the line: the compared image; right: the shown one");
        }
    });
}

/// The images one can compare with.
fn compare_choices(session: &Session) -> Vec<Shown> {
    let mut choices = vec![Shown::Original];
    choices.extend((1..=session.loops.len()).map(Shown::Loop));
    if session.outcome.is_some() {
        choices.push(Shown::Final);
    }
    choices
}

/// Before an image is opened: how to get one in.
fn empty_ui(ui: &mut egui::Ui, session: &Session, commands: &mut Commands) {
    ui.vertical_centered(|ui| {
        ui.add_space(ui.available_height() * 0.35);
        ui.heading("Drop an image here");
        ui.label("or");
        ui.horizontal(|ui| {
            ui.add_space((ui.available_width() - 180.0).max(0.0) / 2.0);
            if ui
                .add_enabled(!session.dialog_open, egui::Button::new("Open…"))
                .clicked()
            {
                commands.push(Command::OpenDialog);
            }
            if ui.button("Paste").clicked() {
                commands.push(Command::RequestPaste);
            }
        });
        if session.loading_image {
            ui.spinner();
        }
        ui.add_space(8.0);
        ui.weak("PNG, JPEG or WebP. An image made by this app, A1111, ComfyUI, InvokeAI or NovelAI brings its settings.");
    });
}
