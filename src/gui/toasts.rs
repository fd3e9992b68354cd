//! Messages in the corner of the window: information fades after a few seconds, errors stay
//! until closed and can show their detail.

use egui::{Align2, Color32, RichText};

/// Seconds an information toast stays.
const INFO_SECONDS: f64 = 5.0;

/// How serious a toast is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something happened.
    Info,
    /// Worth knowing; nothing failed.
    Warning,
    /// Something failed.
    Error,
}

/// One message.
#[derive(Debug, Clone)]
pub struct Toast {
    /// How serious.
    pub level: Level,
    /// One line.
    pub text: String,
    /// More detail (an error's message), shown on demand.
    pub detail: Option<String>,
    /// When it appeared (`egui` time), set when first drawn.
    shown_at: Option<f64>,
}

/// The messages on screen.
#[derive(Debug, Default)]
pub struct Toasts {
    /// Newest last.
    pub list: Vec<Toast>,
}

impl Toasts {
    fn add(&mut self, level: Level, text: String, detail: Option<String>) {
        self.list.push(Toast {
            level,
            text,
            detail,
            shown_at: None,
        });
        if self.list.len() > 6 {
            self.list.remove(0);
        }
    }

    /// Information that fades.
    pub fn info(&mut self, text: impl Into<String>) {
        self.add(Level::Info, text.into(), None);
    }

    /// A warning that fades.
    pub fn warning(&mut self, text: impl Into<String>) {
        self.add(Level::Warning, text.into(), None);
    }

    /// An error that stays until closed, with optional detail.
    pub fn error(&mut self, text: impl Into<String>, detail: Option<String>) {
        self.add(Level::Error, text.into(), detail);
    }

    /// The errors on screen.
    pub fn errors(&self) -> impl Iterator<Item = &Toast> {
        self.list.iter().filter(|t| t.level == Level::Error)
    }

    /// Draws the toasts in the bottom-right corner.
    pub fn ui(&mut self, ctx: &egui::Context) {
        let now = ctx.input(|i| i.time);
        self.list.retain(|t| {
            t.level == Level::Error || t.shown_at.is_none_or(|at| now - at < INFO_SECONDS)
        });
        if self.list.is_empty() {
            return;
        }
        let mut close = None;
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(Align2::RIGHT_BOTTOM, [-12.0, -120.0])
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                ui.set_max_width(380.0);
                for (index, toast) in self.list.iter_mut().enumerate() {
                    let shown_at = *toast.shown_at.get_or_insert(now);
                    if toast.level != Level::Error {
                        let left = INFO_SECONDS - (now - shown_at);
                        ctx.request_repaint_after(std::time::Duration::from_secs_f64(
                            left.max(0.05),
                        ));
                    }
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.horizontal(|ui| {
                            let (icon, colour) = match toast.level {
                                Level::Info => ("i", ui.visuals().text_color()),
                                Level::Warning => ("!", ui.visuals().warn_fg_color),
                                Level::Error => ("x", ui.visuals().error_fg_color),
                            };
                            ui.label(RichText::new(icon).color(colour));
                            ui.add(
                                egui::Label::new(RichText::new(&toast.text).color(
                                    if toast.level == Level::Info {
                                        ui.visuals().text_color()
                                    } else {
                                        colour
                                    },
                                ))
                                .wrap(),
                            );
                            if ui.small_button("x").on_hover_text("Close").clicked() {
                                close = Some(index);
                            }
                        });
                        if let Some(detail) = &toast.detail {
                            ui.collapsing("Details", |ui| {
                                ui.add(
                                    egui::Label::new(
                                        RichText::new(detail).monospace().color(Color32::GRAY),
                                    )
                                    .wrap(),
                                );
                            });
                        }
                    });
                }
            });
        if let Some(index) = close {
            self.list.remove(index);
        }
    }
}
