//! The loop runner on the tiny diffusers model: sizes follow the plan, seeds reproduce,
//! cancelling keeps finished loops, and events arrive in order.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;

use candle_core::{DType, Device};
use image::DynamicImage;
use loopback_core::plan::{self, PlanInput};
use loopback_core::settings::{Curve, Settings, TargetMode};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::run::runner::{self, Event, RunRequest};

fn model() -> LoadedModel {
    let path = Path::new(common::ROOT).join("tests/fixtures/tiny-sd");
    LoadedModel::load(&path, &Device::Cpu, DType::F32).unwrap()
}

fn input() -> Arc<DynamicImage> {
    let photo = image::open(Path::new(common::ROOT).join("tests/data/coffee.png")).unwrap();
    Arc::new(photo.resize_exact(96, 64, image::imageops::FilterType::Triangle))
}

fn settings(seed: i64) -> Settings {
    Settings {
        loops: 3,
        target_mode: TargetMode::Scale,
        scale: 2.0,
        steps: 8,
        denoise: 0.5,
        denoise_change: 0.9,
        seed,
        prompt: "a cup of coffee".into(),
        negative_prompt: "blurry".into(),
        curve: Curve::EaseOutCubic,
        ..Settings::default()
    }
}

/// Runs to the end, returning every event (the final one included).
fn run_all(model: &LoadedModel, settings: Settings, cancel_at: Option<(u32, usize)>) -> Vec<Event> {
    let request = RunRequest {
        embeddings: Default::default(),
        input: input(),
        settings,
    };
    let cancel = AtomicBool::new(false);
    let mut events = Vec::new();
    let result = runner::run_blocking(
        model,
        &request,
        &mut |event| {
            if let (
                Event::StepFinished {
                    loop_index, step, ..
                },
                Some((l, s)),
            ) = (&event, cancel_at)
                && *loop_index == l
                && *step == s
            {
                cancel.store(true, Ordering::SeqCst);
            }
            events.push(event);
        },
        &cancel,
    )
    .unwrap();
    match result {
        Some(output) => events.push(Event::Finished(Box::new(output))),
        None => events.push(Event::Cancelled { loops: Vec::new() }),
    }
    events
}

fn final_png_bytes(events: &[Event]) -> Vec<u8> {
    match events.last() {
        Some(Event::Finished(output)) => output.finished.to_rgb8().into_raw(),
        other => panic!("run did not finish: {other:?}"),
    }
}

#[test]
fn sizes_seeds_and_event_order() {
    let model = model();
    let events = run_all(&model, settings(42), None);
    let plan = plan::plan_for(&settings(42), PlanInput::of_image(&input()), 42).unwrap();
    assert_eq!(plan.final_size.width, 192);

    // Order: per loop LoopStarted, StepFinished/Preview…, LoopFinished; then Finished.
    let mut expected_loop = 1;
    let mut in_loop = false;
    for event in &events {
        match event {
            Event::LoopStarted { spec, .. } => {
                assert!(!in_loop);
                assert_eq!(spec.index, expected_loop);
                let planned = plan.loops[(expected_loop - 1) as usize];
                assert_eq!(
                    (spec.width, spec.height, spec.seed),
                    (planned.width, planned.height, planned.seed)
                );
                in_loop = true;
            }
            Event::StepFinished {
                loop_index,
                step,
                total,
                ..
            } => {
                assert!(in_loop && *loop_index == expected_loop && *step <= *total);
                assert_eq!(
                    *total,
                    plan.loops[(expected_loop - 1) as usize].steps as usize
                );
            }
            Event::Preview { loop_index, .. } => assert_eq!(*loop_index, expected_loop),
            Event::LoopFinished { index, image } => {
                assert!(in_loop && *index == expected_loop);
                let planned = plan.loops[(expected_loop - 1) as usize];
                assert_eq!(image.dimensions(), (planned.width, planned.height));
                in_loop = false;
                expected_loop += 1;
            }
            Event::Finished(output) => {
                assert_eq!(expected_loop, 4);
                assert_eq!(output.loops.len(), 3);
                assert_eq!(output.recipe.seed, 42);
                assert_eq!(
                    (output.finished.width(), output.finished.height()),
                    (192, 128)
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(matches!(events.last(), Some(Event::Finished(_))));

    // Same seed, same bytes; another seed, another image.
    let again = run_all(&model, settings(42), None);
    assert_eq!(final_png_bytes(&events), final_png_bytes(&again));
    let other = run_all(&model, settings(43), None);
    assert_ne!(final_png_bytes(&events), final_png_bytes(&other));
}

#[test]
fn cancel_mid_loop_keeps_finished_loops() {
    let model = model();
    let events = run_all(&model, settings(7), Some((2, 1)));
    assert!(matches!(events.last(), Some(Event::Cancelled { .. })));
    let finished: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::LoopFinished { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished,
        [1],
        "loop 1 kept, loop 2 cancelled after its first step"
    );
    let steps_in_loop_2 = events
        .iter()
        .filter(|e| matches!(e, Event::StepFinished { loop_index: 2, .. }))
        .count();
    assert_eq!(steps_in_loop_2, 1, "cancel takes effect within one step");
}

#[test]
fn spawned_run_reports_on_a_channel() {
    let model = Arc::new(model());
    let request = RunRequest {
        embeddings: Default::default(),
        input: input(),
        settings: settings(3),
    };
    let (tx, rx) = channel();
    // As a front end runs it: on a thread of its own.
    let worker = std::thread::spawn(move || {
        runner::run_and_report(
            &model,
            &request,
            &mut |event| {
                let _ = tx.send(event);
            },
            &AtomicBool::new(false),
        );
    });
    let events: Vec<Event> = rx.iter().collect();
    worker.join().unwrap();
    assert!(matches!(events.first(), Some(Event::LoopStarted { .. })));
    match events.last() {
        Some(Event::Finished(output)) => {
            let texts = output.recipe.png_texts();
            assert!(texts[0].1.contains("Seed: 3"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reported_cancel_from_another_thread_ends_with_the_finished_loops() {
    let model = Arc::new(model());
    let request = RunRequest {
        embeddings: Default::default(),
        input: input(),
        settings: settings(7),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel();
    // The worker waits after loop 1 until this thread has cancelled (no race on the timing).
    let (ack_tx, ack_rx) = channel::<()>();
    let flag = Arc::clone(&cancel);
    let worker = std::thread::spawn(move || {
        runner::run_and_report(
            &model,
            &request,
            &mut |event| {
                let wait = matches!(event, Event::LoopFinished { index: 1, .. });
                let _ = tx.send(event);
                if wait {
                    let _ = ack_rx.recv();
                }
            },
            &flag,
        );
    });
    let mut events = Vec::new();
    for event in rx {
        // Cancel from this thread, as the GUI does, once loop 1 is in.
        if matches!(event, Event::LoopFinished { index: 1, .. }) {
            cancel.store(true, Ordering::SeqCst);
            ack_tx.send(()).unwrap();
        }
        events.push(event);
    }
    worker.join().unwrap();
    let finished: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::LoopFinished { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(finished, [1], "loop 2 stops after its first step");
    match events.last() {
        Some(Event::Cancelled { loops }) => assert_eq!(loops.len(), 1),
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

#[test]
fn text_encoders_freed_after_the_prompts_give_the_same_run() {
    let kept = model();
    let reference = run_all(&kept, settings(7), None);
    assert!(kept.model.text_encoders.is_loaded());

    // As the CLI's one-shot `run` does: the encoders go once the first loop has encoded
    // the prompts; later loops use the cached outputs.
    let freed = model();
    freed.model.text_encoders.set_release_after_use(true);
    let events = run_all(&freed, settings(7), None);
    assert!(!freed.model.text_encoders.is_loaded());
    assert_eq!(final_png_bytes(&events), final_png_bytes(&reference));

    // The same prompts still run from the cache; a new prompt is refused in one line.
    let again = run_all(&freed, settings(7), None);
    assert_eq!(final_png_bytes(&again), final_png_bytes(&reference));
    let request = RunRequest {
        embeddings: Default::default(),
        input: input(),
        settings: Settings {
            prompt: "a cup of tea".into(),
            ..settings(7)
        },
    };
    let err = runner::run_blocking(&freed, &request, &mut |_| {}, &AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("text encoders were freed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Tiled diffusion in a whole run (the tiny model's native size is 64 px): with tiles smaller
/// than the loops, the run finishes with the planned sizes and another image than untiled;
/// `auto` tiles these loops (all past 1.5 × 64 px) exactly as `on` does.
#[test]
fn tiled_runs_finish_and_auto_tiles_big_loops() {
    use loopback_core::settings::Tiling;
    let model = model();
    let with = |tile: Tiling, tile_size: u32| {
        let settings = Settings {
            loops: 2,
            tile,
            tile_size,
            tile_overlap: 16,
            ..settings(5)
        };
        final_png_bytes(&run_all(&model, settings, None))
    };
    let off = with(Tiling::Off, 0);
    let on = with(Tiling::On, 0);
    assert_ne!(on, off);
    assert_eq!(on.len(), off.len(), "the same final size");
    assert_eq!(with(Tiling::Auto, 0), on);
    assert_ne!(with(Tiling::On, 80), on, "another tile size, another grid");
}
