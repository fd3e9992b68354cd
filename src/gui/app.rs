//! The eframe app: owns the state, lays out the views, drains job events and executes
//! commands.

use std::time::Instant;

use egui::{Key, KeyboardShortcut, Modifiers};

use super::command::{Command, Commands};
use super::frame_stats::FrameStats;
use super::jobs::{Jobs, scan_library};
use super::options::GuiOptions;
use super::state::{Persisted, Session, ViewState};
use super::toasts::Toasts;
use super::{dialogs, filmstrip, finishing, side_panel, toolbar, viewer};

/// The Loopback Scaler window.
pub struct App {
    /// Saved between sessions.
    pub persisted: Persisted,
    /// This session's images, model and jobs' progress.
    pub session: Session,
    /// The viewer's zoom, pan and compare state.
    pub view: ViewState,
    /// Messages shown in the corner of the window.
    pub toasts: Toasts,
    /// How long each frame's `ui` took.
    pub frame_stats: FrameStats,
    pub(super) jobs: Jobs,
    pub(super) commands: Commands,
    pub(super) options: GuiOptions,
    /// The newest re-finish request, and what it asked for.
    pub(super) finish_generation: u64,
    pub(super) finish_requested: Option<loopback_core::imageops::finish::Finishing>,
    /// The run and model load whose events are current.
    pub(super) run_id: Option<u64>,
    pub(super) load_id: Option<u64>,
    /// What the current model load was asked for (`model::load_key`).
    pub(super) load_key: Option<String>,
    /// Frames left before the screenshot (`--screenshot`).
    pub(super) screenshot_countdown: Option<u32>,
    applied_theme: Option<egui::ThemePreference>,
}

impl App {
    /// The app, with the persisted state from `cc.storage` (unless `options.fresh`).
    pub fn new(cc: &eframe::CreationContext<'_>, options: GuiOptions) -> Self {
        let mut persisted: Persisted = if options.fresh {
            Persisted::default()
        } else {
            cc.storage
                .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
                .unwrap_or_default()
        };
        if let Some(model) = &options.model {
            persisted.model.clone_from(model);
        }
        if let Some(settings) = &options.settings {
            persisted.settings = settings.clone();
        }
        if let Some(device) = &options.device {
            persisted.device.clone_from(device);
        }
        let mut app = App {
            persisted,
            session: Session {
                library: scan_library(),
                ..Session::default()
            },
            view: ViewState::default(),
            toasts: Toasts::default(),
            frame_stats: FrameStats::default(),
            jobs: Jobs::new(cc.egui_ctx.clone()),
            commands: Commands::default(),
            options,
            finish_generation: 0,
            finish_requested: None,
            run_id: None,
            load_id: None,
            load_key: None,
            screenshot_countdown: None,
            applied_theme: None,
        };
        if let Some(path) = app.options.input.clone() {
            app.execute(&cc.egui_ctx, Command::OpenPath(path));
        }
        app
    }

    /// Asks for `command`; it runs at the end of the current frame.
    pub fn push(&mut self, command: Command) {
        self.commands.push(command);
    }

    /// Runs every command asked for so far.
    fn execute_pending(&mut self, ctx: &egui::Context) {
        for command in self.commands.take() {
            self.execute(ctx, command);
        }
    }

    /// Keyboard shortcuts: Ctrl+Enter runs, Esc cancels (a run or a model load), Ctrl+S saves,
    /// Ctrl+O opens.
    fn shortcuts(&mut self, ctx: &egui::Context) {
        let run = KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter);
        let save = KeyboardShortcut::new(Modifiers::COMMAND, Key::S);
        let open = KeyboardShortcut::new(Modifiers::COMMAND, Key::O);
        let busy = self.session.running() || self.jobs.loading();
        ctx.input_mut(|i| {
            if i.consume_shortcut(&run) {
                self.commands.push(Command::Run);
            }
            if i.consume_shortcut(&save) {
                self.commands
                    .push(Command::SaveDialog(super::state::Shown::Final));
            }
            if i.consume_shortcut(&open) {
                self.commands.push(Command::OpenDialog);
            }
            if busy && i.consume_key(Modifiers::NONE, Key::Escape) {
                self.commands.push(Command::Cancel);
            }
        });
    }

    /// A file dropped on the window and an image pasted become the input; several files or a
    /// folder become a batch.
    fn dropped_and_pasted(&mut self, ctx: &egui::Context) {
        let (dropped, pasted) = ctx.input(|i| {
            let dropped: Vec<std::path::PathBuf> = i
                .raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            let pasted = i.events.iter().find_map(|e| match e {
                egui::Event::PasteImage(image) => Some(std::sync::Arc::clone(image)),
                _ => None,
            });
            (dropped, pasted)
        });
        match dropped.as_slice() {
            [] => {}
            [one] if !one.is_dir() => self.commands.push(Command::OpenPath(one.clone())),
            _ => self.commands.push(Command::Batch(dropped)),
        }
        if let Some(image) = pasted {
            self.commands.push(Command::PasteImage(image));
        }
    }

    /// Applies the theme preference when it changed.
    fn theme(&mut self, ctx: &egui::Context) {
        if self.applied_theme != Some(self.persisted.theme) {
            ctx.set_theme(self.persisted.theme);
            self.applied_theme = Some(self.persisted.theme);
        }
    }
}

impl eframe::App for App {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.theme(ctx);
        while let Some(event) = self.jobs.try_next() {
            self.on_job_event(ctx, event);
        }
        self.shortcuts(ctx);
        self.dropped_and_pasted(ctx);
        self.execute_pending(ctx);
        self.refinish_if_needed();
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let started = Instant::now();
        let ctx = ui.ctx().clone();
        egui::Panel::top("toolbar").show(ui, |ui| {
            toolbar::ui(ui, &mut self.persisted, &self.session, &mut self.commands);
        });
        egui::Panel::bottom("filmstrip")
            .resizable(false)
            .show(ui, |ui| {
                filmstrip::ui(ui, &self.session, &self.view, &mut self.commands);
            });
        egui::Panel::left("settings")
            .resizable(true)
            .default_size(330.0)
            .show(ui, |ui| {
                side_panel::ui(ui, &mut self.persisted, &self.session, &mut self.commands);
            });
        egui::Panel::right("finishing")
            .resizable(false)
            .default_size(230.0)
            .show(ui, |ui| {
                finishing::ui(ui, &mut self.persisted.settings, &self.session);
            });
        egui::CentralPanel::default().show(ui, |ui| {
            viewer::ui(ui, &self.session, &mut self.view, &mut self.commands);
        });
        dialogs::pending_ui(&ctx, &self.session, &mut self.commands);
        dialogs::drop_overlay(&ctx);
        self.toasts.ui(&ctx);
        self.execute_pending(&ctx);
        self.screenshot_tick(&ctx);
        self.frame_stats.record(started, self.session.running());
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.options.fresh {
            return;
        }
        eframe::set_value(storage, eframe::APP_KEY, &self.persisted);
    }
}
