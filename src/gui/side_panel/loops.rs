//! The Loops section: loop count, denoise change, growth curve (with a plot of the size of
//! each loop) and the adaptive factor.

use egui::{Color32, Pos2, Sense, Stroke, Vec2};

use super::super::state::{Persisted, Session};
use super::fields;
use loopback_core::plan::Plan;
use loopback_core::settings::{Curve, Group};

/// Draws the Loops section.
pub fn ui(ui: &mut egui::Ui, persisted: &mut Persisted, session: &Session) {
    let settings = &mut persisted.settings;
    let skip: &[&str] = if settings.curve == Curve::Adaptive {
        &[]
    } else {
        &["adaptive_factor"]
    };
    fields::group_ui(ui, settings, Group::Loop, skip);
    match super::size::current_plan(settings, session) {
        Ok((plan, _)) => growth_plot(ui, &plan),
        Err(e) => {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
    }
}

/// A small plot of width and height per loop (loop 0: the start size).
fn growth_plot(ui: &mut egui::Ui, plan: &Plan) {
    let mut widths = vec![plan.start.width as f32];
    let mut heights = vec![plan.start.height as f32];
    widths.extend(plan.loops.iter().map(|l| l.width as f32));
    heights.extend(plan.loops.iter().map(|l| l.height as f32));
    let low = widths
        .iter()
        .chain(&heights)
        .copied()
        .fold(f32::MAX, f32::min);
    let high = widths.iter().chain(&heights).copied().fold(0.0, f32::max);
    let span = (high - low).max(1.0);
    let (rect, response) = ui.allocate_exact_size(
        Vec2::new(ui.available_width().min(300.0), 90.0),
        Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    let visuals = ui.visuals();
    painter.rect_filled(rect, 2.0, visuals.extreme_bg_color);
    let plot = rect.shrink2(Vec2::new(30.0, 12.0));
    let n = (widths.len() - 1).max(1) as f32;
    let at = |i: usize, v: f32| {
        Pos2::new(
            plot.left() + plot.width() * i as f32 / n,
            plot.bottom() - plot.height() * (v - low) / span,
        )
    };
    let text = visuals.weak_text_color();
    let font = egui::FontId::proportional(10.0);
    painter.text(
        rect.left_top() + Vec2::new(2.0, 1.0),
        egui::Align2::LEFT_TOP,
        format!("{high:.0}"),
        font.clone(),
        text,
    );
    painter.text(
        rect.left_bottom() + Vec2::new(2.0, -1.0),
        egui::Align2::LEFT_BOTTOM,
        format!("{low:.0}"),
        font.clone(),
        text,
    );
    painter.text(
        rect.right_bottom() + Vec2::new(-2.0, -1.0),
        egui::Align2::RIGHT_BOTTOM,
        "loop",
        font,
        text,
    );
    for (values, colour) in [
        (&widths, Color32::from_rgb(90, 160, 255)),
        (&heights, Color32::from_rgb(255, 150, 70)),
    ] {
        let points: Vec<Pos2> = values.iter().enumerate().map(|(i, v)| at(i, *v)).collect();
        painter.add(egui::Shape::line(points.clone(), Stroke::new(1.5, colour)));
        for p in points {
            painter.circle_filled(p, 2.5, colour);
        }
    }
    let mut hover = format!("start {}", plan.start);
    for l in &plan.loops {
        hover.push_str(&format!(
            "\nloop {}: {}x{}{}",
            l.index,
            l.width,
            l.height,
            if l.estimated { " *" } else { "" }
        ));
    }
    response.on_hover_text(format!(
        "Size per loop (blue: width, orange: height)\n{hover}"
    ));
}
