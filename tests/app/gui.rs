//! The desktop app driven through egui_kittest with the tiny test model: drop a file, move
//! sliders, run, watch the loops land in the filmstrip, cancel, re-tune the finish, save,
//! reload settings from the saved PNG; errors appear as toasts; snapshots (wgpu, lavapipe on
//! CI) of the main states.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use loopback_core::plan::LoopSpec;
use loopback_core::settings::{Curve, Settings, TargetMode};
use loopback_scaler::gui::state::{Pending, Progress, Shown};
use loopback_scaler::gui::{App, Command, GuiOptions};

/// The tiny diffusers model (relative: tests run in the package folder, and the path shows
/// in the snapshots).
fn tiny_model() -> String {
    "tests/fixtures/tiny-sd".into()
}

/// A 64x64 copy of a test photo in `dir` (small, so a loop takes milliseconds).
fn small_photo(dir: &Path) -> PathBuf {
    let photo = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coffee.png"))
        .expect("test photo");
    let small = photo.resize_exact(64, 64, image::imageops::FilterType::Triangle);
    let path = dir.join("coffee-small.png");
    small.save(&path).expect("write test photo");
    path
}

/// Fast settings: 2 loops of 2 steps, 64x64 → 96x96.
fn fast_settings() -> Settings {
    Settings {
        loops: 2,
        target_mode: TargetMode::Scale,
        scale: 1.5,
        steps: 4,
        denoise: 0.5,
        seed: 1234,
        prompt: "a cup of coffee".into(),
        curve: Curve::Linear,
        ..Settings::default()
    }
}

/// A dropped file, as the windowing integration would report it.
#[derive(Debug)]
struct FakeDrop(PathBuf);

impl egui::DroppedFile for FakeDrop {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn app_harness<'a>(builder: egui_kittest::HarnessBuilder<App>, fresh: bool) -> Harness<'a, App> {
    builder.with_size([1280.0, 800.0]).build_eframe(|cc| {
        let mut app = App::new(
            cc,
            GuiOptions {
                model: Some(tiny_model()),
                device: Some("cpu".into()),
                fresh,
                ..GuiOptions::default()
            },
        );
        app.persisted.settings = fast_settings();
        // f32, not auto: auto is bf16 on a CPU with AMX, and the snapshots, the estimates and
        // the images must not depend on the machine the tests run on.
        app.persisted.precision = "f32".into();
        app.persisted.theme = egui::ThemePreference::Dark;
        app
    })
}

/// A harness without a renderer (fast).
fn harness<'a>() -> Harness<'a, App> {
    app_harness(Harness::builder(), true)
}

/// Steps frames until `done` holds (panics after 60 s, naming `what`).
fn step_until(h: &mut Harness<'_, App>, what: &str, done: impl Fn(&App) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(h.state()) {
        if Instant::now() > deadline {
            let app = h.state();
            let toasts: Vec<_> = app
                .toasts
                .list
                .iter()
                .map(|t| (t.text.clone(), t.detail.clone()))
                .collect();
            panic!(
                "timed out waiting for {what}; toasts {toasts:?}; model status {:?}; \
                 progress {:?}; loops {}",
                app.session.model.status,
                app.session.progress,
                app.session.loops.len()
            );
        }
        h.step();
        std::thread::sleep(Duration::from_millis(2));
    }
    h.step();
}

fn drop_file(h: &mut Harness<'_, App>, path: &Path) {
    h.input_mut()
        .dropped_files
        .push(Arc::new(FakeDrop(path.to_path_buf())));
    h.step();
}

fn open_photo(h: &mut Harness<'_, App>, dir: &Path) -> PathBuf {
    let path = small_photo(dir);
    drop_file(h, &path);
    step_until(h, "the dropped image", |app| app.session.input.is_some());
    path
}

fn run_to_end(h: &mut Harness<'_, App>) {
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.step();
    step_until(h, "the run to finish", |app| {
        app.session.outcome.is_some() && !app.session.running()
    });
}

/// Opens the photo, sets the loops and steps, and clicks Run.
fn start_run<'a>(loops: u32, steps: u32) -> (tempfile::TempDir, Harness<'a, App>) {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness();
    open_photo(&mut h, dir.path());
    h.state_mut().persisted.settings.loops = loops;
    h.state_mut().persisted.settings.steps = steps;
    h.step();
    h.get_by_role_and_label(Role::Button, "Run").click();
    (dir, h)
}

#[test]
fn drop_move_sliders_run_and_see_every_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness();
    h.step();
    open_photo(&mut h, dir.path());
    assert_eq!(h.state().view.shown, Shown::Original);
    assert!(
        h.state().session.pending.is_empty(),
        "a plain photo offers no settings"
    );

    // Sliders generated from the settings definitions.
    h.get_by_role_and_label(Role::Slider, "Loops")
        .set_value_accesskit(3.0);
    h.step();
    h.get_by_role_and_label(Role::Slider, "Denoising strength")
        .set_value_accesskit(0.6);
    h.step();
    assert_eq!(h.state().persisted.settings.loops, 3);
    assert!((h.state().persisted.settings.denoise - 0.6).abs() < 1e-9);

    run_to_end(&mut h);
    let app = h.state();
    assert_eq!(app.session.loops.len(), 3);
    assert_eq!(app.view.shown, Shown::Final);
    assert_eq!(app.persisted.last_seed, Some(1234));
    let last = app.session.loops.last().unwrap().image.clone();
    assert_eq!((last.width(), last.height()), (96, 96));
    // Every loop is in the filmstrip.
    for k in 1..=3 {
        h.get_by_label(&format!("Loop {k}"));
    }
    h.get_by_label("Final");
    // Clicking a loop shows it.
    h.get_by_label("Loop 2").click();
    h.step();
    h.step();
    assert_eq!(h.state().view.shown, Shown::Loop(2));
}

#[test]
fn cancel_keeps_the_finished_loops() {
    let (_dir, mut h) = start_run(6, 40);
    step_until(&mut h, "the first loop", |app| {
        !app.session.loops.is_empty()
    });
    h.key_press(egui::Key::Escape);
    step_until(&mut h, "the run to stop", |app| !app.session.running());
    let app = h.state();
    assert!(app.session.outcome.is_none());
    assert!((1..6).contains(&app.session.loops.len()));
    assert!(
        app.toasts
            .list
            .iter()
            .any(|t| t.text.starts_with("Cancelled"))
    );
}

/// The finished image shown as "Final".
fn final_image(h: &Harness<'_, App>) -> Arc<image::DynamicImage> {
    let outcome = h.state().session.outcome.as_ref().expect("a finished run");
    Arc::clone(&outcome.finished.image)
}

#[test]
fn finishing_reapplies_without_running_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness();
    open_photo(&mut h, dir.path());
    run_to_end(&mut h);
    let before = final_image(&h);
    h.get_by_role_and_label(Role::Slider, "Brightness")
        .set_value_accesskit(1.5);
    h.step();
    assert!(h.state().session.progress.is_none(), "no loop runs again");
    step_until(&mut h, "the new finish", |app| {
        app.session
            .outcome
            .as_ref()
            .is_some_and(|o| (o.applied.brightness - 1.5).abs() < 1e-9)
    });
    let after = final_image(&h);
    assert_eq!(h.state().session.loops.len(), 2);
    assert_ne!(before.as_bytes(), after.as_bytes());
    let mean = |img: &image::DynamicImage| {
        img.to_rgb8()
            .as_raw()
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
    };
    assert!(mean(&after) > mean(&before), "brighter");
}

#[test]
fn save_asks_before_replacing_and_the_png_brings_its_settings_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness();
    open_photo(&mut h, dir.path());
    run_to_end(&mut h);
    let target = dir.path().join("out.png");
    h.state_mut().push(Command::Save {
        what: vec![(Shown::Final, target.clone())],
        overwrite: false,
    });
    h.step();
    step_until(&mut h, "the save", |app| !app.session.saving);
    assert!(target.exists());
    let written = std::fs::read(&target).unwrap();

    // Saving again asks; "Don't replace" leaves the file alone.
    h.state_mut().push(Command::Save {
        what: vec![(Shown::Final, target.clone())],
        overwrite: false,
    });
    h.step();
    h.step();
    assert!(matches!(
        h.state().session.pending.as_slice(),
        [Pending::Overwrite { .. }]
    ));
    h.get_by_label("Don't replace").click();
    h.step();
    h.step();
    assert!(h.state().session.pending.is_empty());
    assert_eq!(std::fs::read(&target).unwrap(), written);

    // Save all loops into a folder (the same command the folder dialog issues).
    let all: Vec<(Shown, PathBuf)> = (1..=2)
        .map(|k| (Shown::Loop(k), dir.path().join(format!("loop{k}.png"))))
        .collect();
    h.state_mut().push(Command::Save {
        what: all,
        overwrite: false,
    });
    h.step();
    step_until(&mut h, "saving the loops", |app| !app.session.saving);
    assert!(dir.path().join("loop2.png").exists());

    // Change settings, then reopen the saved PNG: it offers its settings back.
    h.state_mut().persisted.settings = Settings::default();
    drop_file(&mut h, &target);
    step_until(&mut h, "the settings offer", |app| {
        app.session
            .pending
            .iter()
            .any(|p| matches!(p, Pending::Metadata { .. }))
    });
    h.get_by_label("Load settings").click();
    h.step();
    h.step();
    let settings = &h.state().persisted.settings;
    assert_eq!(settings.prompt, "a cup of coffee");
    assert_eq!(settings.loops, 2);
    assert_eq!(settings.seed, 1234);
    assert_eq!(settings.target_mode, TargetMode::Scale);
}

#[test]
fn errors_are_shown_and_the_work_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness();
    open_photo(&mut h, dir.path());
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, b"this is not an image").unwrap();
    drop_file(&mut h, &bad);
    step_until(&mut h, "the error", |app| app.toasts.errors().count() > 0);
    let app = h.state();
    assert_eq!(
        app.session.input.as_ref().unwrap().stem,
        "coffee-small",
        "the current image is kept"
    );
    assert!(
        app.toasts
            .errors()
            .any(|t| t.text == "Cannot open the image")
    );

    // A model that does not exist.
    h.state_mut().persisted.model = dir.path().join("no-such-model").display().to_string();
    h.state_mut().toasts.list.clear();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    step_until(&mut h, "the model error", |app| {
        app.toasts.errors().count() > 0
    });
    assert!(
        h.state()
            .toasts
            .errors()
            .any(|t| t.text == "The model could not be loaded")
    );

    // An empty prompt is warned about in the side panel.
    h.state_mut().persisted.settings.prompt.clear();
    h.step();
    h.step();
    assert!(h.query_by_label_contains("the prompt is empty").is_some());
}

#[test]
fn reset_to_defaults_and_reuse_last_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness();
    open_photo(&mut h, dir.path());
    h.state_mut().persisted.settings.seed = -1;
    run_to_end(&mut h);
    let seed = h.state().persisted.last_seed.expect("a seed was drawn");
    assert_eq!(
        h.state().persisted.settings.seed,
        -1,
        "the setting stays random"
    );
    h.get_by_label("Reuse last").click();
    h.step();
    h.step();
    assert_eq!(h.state().persisted.settings.seed, i64::from(seed));
    h.get_by_label("Reset to defaults").click();
    h.step();
    h.step();
    assert_eq!(h.state().persisted.settings, Settings::default());
}

/// Records the UI's frame time while a run is in progress and prints it (see the closing
/// note of issue 5); fails only if frames get absurdly slow.
#[test]
fn frames_keep_coming_during_a_run() {
    let (_dir, mut h) = start_run(3, 20);
    let started = Instant::now();
    step_until(&mut h, "the run to finish", |app| {
        app.session.outcome.is_some()
    });
    let wall = started.elapsed();
    let stats = &h.state().frame_stats;
    let running = loopback_scaler::gui::frame_stats::FrameStats::summarize(&stats.running)
        .expect("frames during the run");
    println!(
        "run took {:.2} s wall; {}",
        wall.as_secs_f64(),
        stats.summary()
    );
    assert!(running.frames >= 10, "frames kept coming: {running:?}");
    assert!(running.median_ms < 50.0, "ui frames stay fast: {running:?}");
}

// ----- snapshots (wgpu; lavapipe on CI) -----

/// A harness that renders with wgpu.
fn snapshot_harness<'a>() -> Harness<'a, App> {
    app_harness(Harness::builder().wgpu().with_render_cursor(false), true)
}

/// Removes what changes from run to run (timings, toasts) before a snapshot.
fn settle(h: &mut Harness<'_, App>) {
    let app = h.state_mut();
    app.toasts.list.clear();
    app.session.seconds_per_mpstep = None;
    h.step();
    h.step();
}

#[test]
fn snapshots_of_the_main_states() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = snapshot_harness();
    h.step();
    h.step();
    h.snapshot("gui_empty");

    // Dragging a file over the window darkens it and says what will open.
    h.input_mut().hovered_files.push(egui::HoveredFile {
        path: Some(PathBuf::from("/photos/cat.png")),
        mime: "image/png".into(),
    });
    h.step();
    h.snapshot("gui_drop_overlay");
    h.input_mut().hovered_files.clear();
    h.step();

    open_photo(&mut h, dir.path());
    settle(&mut h);
    h.snapshot("gui_image_loaded");

    // A run in progress, at a fixed point: loop 1 of 2, step 1 of 2, preview = the photo.
    {
        let app = h.state_mut();
        let input = app.session.input.as_ref().unwrap().picture.texture.clone();
        app.session.preview = Some(input);
        app.session.progress = Some(Progress {
            loop_index: 1,
            loops: 2,
            step: 1,
            steps: 2,
            elapsed: Duration::from_secs(3),
            eta: Some(Duration::from_secs(9)),
            spec: Some(LoopSpec {
                index: 1,
                width: 80,
                height: 80,
                denoise: 0.5,
                seed: 1234,
                steps: 2,
                estimated: false,
            }),
        });
        app.view.shown = Shown::Preview;
    }
    settle(&mut h);
    h.snapshot("gui_running");
    {
        let app = h.state_mut();
        app.session.progress = None;
        app.session.preview = None;
        app.view.shown = Shown::Original;
    }
    h.step();

    run_to_end(&mut h);
    // The tiny model's output is noise that may differ in the last bit between CPUs: show
    // fixed pictures in its place (the layout of the finished state is what is checked).
    {
        let app = h.state_mut();
        let photo = app.session.input.as_ref().unwrap().picture.image.clone();
        let tinted = |k: u8| {
            let mut rgb = photo.to_rgb8();
            for p in rgb.pixels_mut() {
                p[2] = p[2].saturating_add(40 * k);
            }
            egui::ColorImage::from_rgb([64, 64], rgb.as_raw())
        };
        for (k, picture) in app.session.loops.iter_mut().enumerate() {
            picture
                .texture
                .set(tinted(k as u8 + 1), egui::TextureOptions::LINEAR);
        }
        let outcome = app.session.outcome.as_mut().unwrap();
        outcome
            .finished
            .texture
            .set(tinted(3), egui::TextureOptions::LINEAR);
    }
    settle(&mut h);
    h.snapshot("gui_finished");
}

#[test]
fn paste_an_image_and_run_again_from_a_loop() {
    let mut h = harness();
    h.step();
    let photo = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chelsea.png"))
        .unwrap()
        .resize_exact(64, 64, image::imageops::FilterType::Triangle)
        .to_rgba8();
    let pasted = egui::ColorImage::from_rgba_unmultiplied([64, 64], photo.as_raw());
    h.event(egui::Event::PasteImage(Arc::new(pasted)));
    h.step();
    step_until(&mut h, "the pasted image", |app| {
        app.session.input.is_some()
    });
    assert_eq!(h.state().session.input.as_ref().unwrap().stem, "pasted");
    run_to_end(&mut h);
    let loop1 = h.state().session.loops[0].image.clone();

    // Right-click a loop in the filmstrip: "Run from here".
    h.get_by_label("Loop 1").click_secondary();
    h.step();
    h.step();
    h.get_by_label("Run from here").click();
    h.step();
    step_until(&mut h, "the second run", |app| {
        app.session.outcome.is_some() && !app.session.running()
    });
    let app = h.state();
    let input = app.session.input.as_ref().unwrap();
    assert_eq!(input.stem, "pasted-loop1");
    assert_eq!(input.picture.image.as_bytes(), loop1.as_bytes());
    assert_eq!(app.session.loops.len(), 2);
}

#[test]
fn the_info_section_explains_every_setting() {
    let mut h = harness();
    h.step();
    h.get_by_label("Info").scroll_to_me();
    h.run_steps(4);
    h.get_by_label("Info").click();
    h.run_steps(10);
    // Every setting's label and help are there (and drawable with the bundled fonts:
    // the harness fails on a missing glyph).
    assert!(
        h.query_by_label_contains("Loopback Scaler runs img2img")
            .is_some()
    );
    assert!(
        h.query_by_label_contains("Seed of the first loop")
            .is_some()
    );
}

/// An in-memory `eframe::Storage`.
#[derive(Default)]
struct MemoryStorage(std::collections::HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }

    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }

    fn flush(&mut self) {}
}

#[test]
fn settings_model_recent_files_and_theme_are_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = app_harness(Harness::builder(), false);
    let photo = open_photo(&mut h, dir.path());
    {
        let app = h.state_mut();
        app.persisted.settings.cfg = 9.5;
        app.persisted.theme = egui::ThemePreference::Light;
    }
    let mut storage = MemoryStorage::default();
    eframe::App::save(h.state_mut(), &mut storage);
    let restored: loopback_scaler::gui::state::Persisted =
        eframe::get_value(&storage, eframe::APP_KEY).expect("the state was saved");
    assert_eq!(restored, h.state().persisted);
    assert_eq!(restored.settings.cfg, 9.5);
    assert_eq!(restored.model, tiny_model());
    assert_eq!(restored.recent_files, vec![photo]);
    assert_eq!(restored.theme, egui::ThemePreference::Light);
}

#[test]
fn picked_lora_and_vae_are_loaded_and_recorded_and_a_new_weight_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness();
    open_photo(&mut h, dir.path());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    {
        let app = h.state_mut();
        app.persisted.settings.loops = 1;
        app.persisted
            .loras
            .push(loopback_scaler::gui::state::LoraChoice {
                path: fixtures.join("lora/tiny_a.safetensors"),
                weight: 0.7,
            });
        app.persisted.vae = fixtures.join("tiny-sd/vae").display().to_string();
    }
    h.step();
    // The picked LoRA shows in the Model section with its weight.
    h.get_by_label("tiny_a");
    run_to_end(&mut h);
    let recipe = h.state().session.outcome.as_ref().unwrap().recipe.clone();
    assert_eq!(recipe.loras.len(), 1, "{recipe:?}");
    assert_eq!(recipe.loras[0].name, "tiny_a");
    assert!((recipe.loras[0].weight - 0.7).abs() < 1e-12);
    let model = recipe.model.expect("model info");
    assert_eq!(model.vae.expect("the picked VAE").name, "vae");

    // Another weight is another model: Run loads again before running.
    h.state_mut().persisted.loras[0].weight = 0.2;
    h.step();
    h.get_by_label("Load now");
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.step();
    step_until(&mut h, "a run with the new weight", |app| {
        app.session.outcome.as_ref().is_some_and(|o| {
            o.recipe
                .loras
                .first()
                .is_some_and(|l| (l.weight - 0.2).abs() < 1e-12)
        })
    });

    // Removing it goes back to the plain model.
    h.get_by_label("×").click();
    h.step();
    assert!(h.state().persisted.loras.is_empty());
}

/// Several files dropped at once: a batch. Each image runs and is saved to
/// `loopback-output/`, a broken file is reported by name while the batch goes on, and
/// dropping the same files again skips what is done.
#[test]
fn dropping_several_files_runs_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let first = small_photo(dir.path());
    let second = dir.path().join("second.png");
    std::fs::copy(&first, &second).unwrap();
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"not an image").unwrap();
    let mut h = harness();
    let drop_all = |h: &mut Harness<'_, App>| {
        for path in [&first, &broken, &second] {
            h.input_mut()
                .dropped_files
                .push(Arc::new(FakeDrop(path.to_path_buf())));
        }
        h.step();
        step_until(h, "the batch to finish", |app| app.session.batch.is_none());
    };
    let toasts = |h: &Harness<'_, App>| -> Vec<String> {
        h.state()
            .toasts
            .list
            .iter()
            .map(|t| format!("{} {}", t.text, t.detail.clone().unwrap_or_default()))
            .collect()
    };
    drop_all(&mut h);
    let out = dir.path().join("loopback-output");
    step_until(&mut h, "the saves", |_| {
        out.join("coffee-small.png").exists() && out.join("second.png").exists()
    });
    let said = toasts(&h);
    assert!(
        said.iter()
            .any(|t| t.contains("Batch finished: 2 done, 0 skipped (already done), 1 failed")),
        "{said:?}"
    );
    assert!(said.iter().any(|t| t.contains("broken.png")), "{said:?}");
    let saved = image::open(out.join("second.png")).unwrap();
    assert_eq!((saved.width(), saved.height()), (96, 96));
    // Each result is in the filmstrip under its name.
    let names: Vec<&str> = h
        .state()
        .session
        .batch_results
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(names, ["coffee-small", "second"]);
    assert!(h.query_all_by_label_contains("second").next().is_some());
    // Again: the finished ones are skipped.
    drop_all(&mut h);
    let said = toasts(&h);
    assert!(
        said.iter()
            .any(|t| t.contains("0 done, 2 skipped (already done), 1 failed")),
        "{said:?}"
    );
}
