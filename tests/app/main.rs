//! The app's tests: the command line (run as a process) and the GUI (egui_kittest snapshots).
//! One binary for all of them (faster to link than one per file); fixtures are shared from
//! the workspace's `tests/fixtures` and `tests/data`.

mod cli;
mod common;
mod gui;
mod gui_controlnet;
mod interrupt;
mod layout;
mod library;
mod memory_cli;
