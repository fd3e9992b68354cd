//! A tiny SD model with random weights, written at test time in the diffusers folder layout
//! (configs and tensor names of `tests/fixtures/tiny-sd`, fresh random f32 weights), loaded
//! through the same code path as a real folder and run through whole loops.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use loopback_core::settings::{Settings, TargetMode};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::run::runner::{self, Event, RunRequest};
use rand::{RngExt, SeedableRng};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

const COMPONENT_WEIGHTS: [(&str, &str); 3] = [
    ("text_encoder", "model.safetensors"),
    ("unet", "diffusion_pytorch_model.safetensors"),
    ("vae", "diffusion_pytorch_model.safetensors"),
];

/// Writes `dir` as a diffusers folder with the fixture's configs and random weights.
fn write_random_model(dir: &Path, seed: u64) {
    let fixture = Path::new(common::ROOT).join("tests/fixtures/tiny-sd");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for sub in ["scheduler", "tokenizer", "text_encoder", "unet", "vae"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(fixture.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_owned();
            if path.extension().is_some_and(|e| e == "json" || e == "txt") {
                std::fs::copy(&path, dir.join(sub).join(name)).unwrap();
            }
        }
    }
    for (sub, file) in COMPONENT_WEIGHTS {
        let bytes = std::fs::read(fixture.join(sub).join(file)).unwrap();
        let source = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in source.tensors() {
            let shape = view.shape().to_vec();
            let count: usize = shape.iter().product();
            // Norm weights near 1, everything else small and centred.
            let norm = name.contains("norm") && name.ends_with("weight");
            let data: Vec<u8> = (0..count)
                .flat_map(|_| {
                    let v: f32 = rng.random_range(-0.1..0.1);
                    (if norm { 1.0 + v } else { v }).to_le_bytes()
                })
                .collect();
            tensors.push((name, shape, data));
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, data)| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        let out = safetensors::tensor::serialize(views, None).unwrap();
        std::fs::write(dir.join(sub).join(file), out).unwrap();
    }
}

fn run(model: Arc<LoadedModel>, seed: i64) -> Vec<Event> {
    let photo = image::open(Path::new(common::ROOT).join("tests/data/chelsea.png")).unwrap();
    let input = Arc::new(photo.resize_exact(96, 64, image::imageops::FilterType::Triangle));
    let settings = Settings {
        loops: 2,
        target_mode: TargetMode::Scale,
        scale: 1.5,
        steps: 4,
        denoise: 0.5,
        seed,
        prompt: "a cat".into(),
        ..Settings::default()
    };
    let request = RunRequest {
        input,
        settings,
        embeddings: Default::default(),
    };
    let mut events = Vec::new();
    runner::run_and_report(
        &model,
        &request,
        &mut |event| events.push(event),
        &AtomicBool::new(false),
    );
    events
}

#[test]
fn random_model_written_at_test_time_runs_the_loops() {
    let dir = tempfile::tempdir().unwrap();
    write_random_model(dir.path(), 5);
    let model = Arc::new(LoadedModel::load(dir.path(), &Device::Cpu, DType::F32).unwrap());

    let events = run(Arc::clone(&model), 11);
    let sizes: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::LoopFinished { image, .. } => Some(image.dimensions()),
            _ => None,
        })
        .collect();
    // 96x64 × 1.5 = 144x96; loop 1 halfway along the width: 120, height floor(120·64/96) = 80.
    assert_eq!(sizes, [(120, 80), (144, 96)]);
    let Some(Event::Finished(first)) = events.last() else {
        panic!("run did not finish: {:?}", events.last());
    };

    let again = run(Arc::clone(&model), 11);
    let Some(Event::Finished(second)) = again.last() else {
        panic!("second run did not finish");
    };
    assert_eq!(
        first.finished.to_rgb8().as_raw(),
        second.finished.to_rgb8().as_raw()
    );

    // The same folder with other random weights gives another image.
    let other_dir = tempfile::tempdir().unwrap();
    write_random_model(other_dir.path(), 6);
    let other = Arc::new(LoadedModel::load(other_dir.path(), &Device::Cpu, DType::F32).unwrap());
    let events = run(other, 11);
    let Some(Event::Finished(third)) = events.last() else {
        panic!("third run did not finish");
    };
    assert_ne!(
        first.finished.to_rgb8().as_raw(),
        third.finished.to_rgb8().as_raw()
    );
}
