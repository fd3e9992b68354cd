//! The model loader job: a local folder loads with `Loading` then `Loaded`; a bad name or an
//! uncached preset offline ends in one `Failed` line naming what is missing.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::channel;

use loopback_engine::device::DeviceSpec;
use loopback_engine::load::request::{self, LoadEvent, ModelRequest};

/// Every event of a load job run on a worker thread, as the GUI runs it.
fn events(request: ModelRequest) -> Vec<LoadEvent> {
    let (tx, rx) = channel();
    let worker = std::thread::spawn(move || {
        let cancel = Arc::new(AtomicBool::new(false));
        request::load_and_report(&request, &cancel, &mut |event| {
            let _ = tx.send(event);
        });
    });
    let events: Vec<LoadEvent> = rx.iter().collect();
    worker.join().unwrap();
    events
}

#[test]
fn local_folder_loads_through_the_worker() {
    let path = Path::new(common::ROOT).join("tests/fixtures/tiny-sd");
    let events = events(ModelRequest::new(
        path.display().to_string(),
        DeviceSpec::Cpu,
    ));
    assert_eq!(events.len(), 2, "{events:?}");
    match &events[0] {
        LoadEvent::Loading { path: p, device } => {
            assert_eq!(p, &path);
            assert!(device.starts_with("CPU"), "{device}");
        }
        other => panic!("expected Loading, got {other:?}"),
    }
    match &events[1] {
        LoadEvent::Loaded { model, seconds } => {
            assert_eq!(model.name, "tiny-sd");
            assert!(*seconds >= 0.0);
        }
        other => panic!("expected Loaded, got {other:?}"),
    }
}

#[test]
fn unknown_model_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let request = ModelRequest {
        search_dirs: vec![dir.path().to_path_buf()],
        ..ModelRequest::new("no-such-model", DeviceSpec::Cpu)
    };
    let events = events(request);
    match events.as_slice() {
        [LoadEvent::Failed(message)] => {
            assert!(message.contains("no-such-model"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        other => panic!("expected one Failed, got {other:?}"),
    }
}

#[test]
fn uncached_preset_offline_names_the_repo() {
    let cache = tempfile::tempdir().unwrap();
    let request = ModelRequest {
        offline: true,
        cache_dir: Some(cache.path().to_path_buf()),
        ..ModelRequest::new("sd-turbo", DeviceSpec::Cpu)
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let mut seen = Vec::new();
    let err = request::load_blocking(&request, &cancel, &mut |e| seen.push(e)).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("stabilityai/sd-turbo"), "{message}");
    assert!(message.contains("--offline"), "{message}");
    assert!(seen.is_empty(), "{seen:?}");
}
