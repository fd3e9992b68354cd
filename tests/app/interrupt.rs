//! Ctrl-C on a `run` (a console interrupt on Windows, SIGINT elsewhere) cancels it between
//! steps and keeps every finished loop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{data, files_in};

#[test]
fn ctrl_c_cancels_a_run_and_keeps_the_finished_loops() {
    let dir = tempfile::tempdir().unwrap();
    let (loops, output) = (dir.path().join("loops"), dir.path().join("out.png"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_loopback-scaler"));
    command
        .args(["run", "--input"])
        .arg(data("coffee.png"))
        .arg("-o")
        .arg(&output)
        .arg("--save-loops")
        .arg(&loops)
        .arg("--model")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd"))
        .args([
            "--device",
            "cpu",
            "--start-size",
            "64x64",
            "--target-mode",
            "scale",
        ])
        .args([
            "--scale",
            "1.0",
            "--loops",
            "32",
            "--steps",
            "50",
            "--denoise",
            "1.0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    own_interrupt_group(&mut command);
    let mut child = command.spawn().unwrap();

    // Interrupt once the first loop is on disk.
    let start = Instant::now();
    while !loops.is_dir() || files_in(&loops).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no loop finished within two minutes"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before it was interrupted: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);

    assert!(out.status.success(), "{err}");
    let kept = files_in(&loops).len();
    assert!((1..32).contains(&kept), "{kept} loops kept; {err}");
    assert!(
        err.contains(&format!("cancelled after {kept} finished loop(s)")),
        "{err}"
    );
    assert!(!output.exists(), "a cancelled run wrote the final image");
}

/// Puts the child in a process group of its own, so that the interrupt reaches only it.
#[cfg(windows)]
fn own_interrupt_group(command: &mut Command) {
    use std::os::windows::process::CommandExt;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    command.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

#[cfg(not(windows))]
fn own_interrupt_group(_: &mut Command) {}

/// What pressing Ctrl-C in its console does to `child`: Ctrl-Break to its process group on
/// Windows (a new group does not receive Ctrl-C events), SIGINT elsewhere.
#[cfg(windows)]
fn interrupt(child: &Child) {
    use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent};
    // SAFETY: a plain system call on the child's process group.
    let sent = unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, child.id()) };
    assert_ne!(sent, 0, "{}", std::io::Error::last_os_error());
}

#[cfg(not(windows))]
fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
