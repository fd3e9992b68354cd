//! Helpers shared by the app's tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (this package's folder): the shared fixtures live in `tests/fixtures`
/// and `tests/data` there.
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A file under `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(ROOT).join("tests/data").join(name)
}

/// Runs the `loopback-scaler` binary.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loopback-scaler"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Standard output as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
