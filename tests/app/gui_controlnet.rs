//! The side panel's ControlNet section, driven through egui_kittest: picking a ControlNet
//! from the library sets the `controlnet` setting, the tile preprocessor shows its rate, a
//! ControlNet of another family than the model is warned about, and a new ControlNet means
//! another model load whose request carries it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use loopback_core::settings::ControlPreprocess;
use loopback_engine::load::library::{Entry, Kind};
use loopback_scaler::gui::{App, Command, GuiOptions};

/// The app on the tiny test model, on the CPU, without a renderer.
fn harness<'a>() -> Harness<'a, App> {
    Harness::builder()
        .with_size([1280.0, 1400.0])
        .build_eframe(|cc| {
            App::new(
                cc,
                GuiOptions {
                    model: Some("tests/fixtures/tiny-sd".into()),
                    device: Some("cpu".into()),
                    fresh: true,
                    ..GuiOptions::default()
                },
            )
        })
}

/// A ControlNet in the library as a scan of `models/ControlNet` lists it.
fn library_controlnet(path: &Path, family: &str) -> Entry {
    Entry {
        kind: Kind::ControlNet,
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        path: path.to_path_buf(),
        bytes: 1234,
        family: Some(family.into()),
        hash: None,
        in_hf_cache: false,
    }
}

/// Steps frames until `done` holds (panics after 20 s, naming `what`).
fn step_until(h: &mut Harness<'_, App>, what: &str, done: impl Fn(&App) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(h.state()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        h.step();
        std::thread::sleep(Duration::from_millis(2));
    }
    h.step();
}

/// Opens the ControlNet section and picks `name` in its ControlNet menu.
fn pick(h: &mut Harness<'_, App>, name: &str) {
    h.get_by_role_and_label(Role::ComboBox, "ControlNet model")
        .click();
    h.run_steps(3);
    h.get_by_label(name).click();
    h.run_steps(3);
}

#[test]
fn the_controlnet_section_sets_the_setting_and_a_new_controlnet_reloads_the_model() {
    let dir = tempfile::tempdir().unwrap();
    // Not a real ControlNet: the library lists it, the load refuses it naming the file.
    let file: PathBuf = dir.path().join("tile_test.safetensors");
    std::fs::write(&file, b"not a safetensors file").unwrap();
    let mut h = harness();
    h.state_mut()
        .session
        .library
        .push(library_controlnet(&file, "SD 1.x"));
    h.step();

    // The section starts closed while no ControlNet is chosen.
    assert!(h.query_by_label("ControlNet model").is_none());
    h.get_by_label("ControlNet").click();
    h.run_steps(4);
    assert_eq!(h.state().persisted.settings.controlnet, "");
    h.get_by_label_contains("No ControlNet");
    // The tile preprocessor's rate is hidden for the other preprocessors.
    h.get_by_role_and_label(Role::Slider, "Control weight");
    assert!(h.query_by_label("Down sampling rate").is_none());

    // The tiny model loads without a ControlNet.
    h.state_mut().push(Command::LoadModel);
    h.step();
    step_until(&mut h, "the model", |app| {
        app.session.model.loaded.is_some() && app.session.model.status.is_none()
    });
    h.run_steps(2);
    assert!(h.query_by_label("Load now").is_none(), "the model is ready");

    pick(&mut h, "tile_test");
    assert_eq!(
        h.state().persisted.settings.controlnet,
        file.display().to_string()
    );
    assert!(h.query_by_label_contains("No ControlNet").is_none());
    // Another ControlNet is another model: the loaded one is no longer the one asked for.
    h.get_by_label("Load now");

    h.state_mut().persisted.settings.control_preprocess = ControlPreprocess::TileResample;
    h.run_steps(2);
    h.get_by_role_and_label(Role::Slider, "Down sampling rate");

    // A ControlNet for another family than the chosen model is warned about.
    h.state_mut().persisted.model = "sd15".into();
    h.run_steps(2);
    assert!(h.query_by_label_contains("is a ControlNet for").is_none());
    h.state_mut().persisted.model = "sdxl".into();
    h.run_steps(2);
    h.get_by_label_contains("tile_test is a ControlNet for SD 1.x, but the model is SDXL");
    h.state_mut().persisted.model = "tests/fixtures/tiny-sd".into();
    h.run_steps(2);

    // Loading again carries the ControlNet, which is read (and refused) with the model.
    h.get_by_label("Load now").click();
    h.step();
    step_until(&mut h, "the load to fail", |app| {
        app.toasts.errors().count() > 0
    });
    let said: Vec<String> = h
        .state()
        .toasts
        .errors()
        .map(|t| format!("{} {}", t.text, t.detail.clone().unwrap_or_default()))
        .collect();
    assert!(
        said.iter()
            .any(|t| t.starts_with("The model could not be loaded") && t.contains("tile_test")),
        "{said:?}"
    );

    // "None" goes back to the plain model, which is the one loaded.
    pick(&mut h, "None");
    assert_eq!(h.state().persisted.settings.controlnet, "");
    assert!(h.query_by_label("Load now").is_none(), "no reload needed");
}
