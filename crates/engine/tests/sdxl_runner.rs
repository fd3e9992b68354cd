//! The loop runner on the tiny SDXL model: loops run end to end at the planned sizes, the same
//! seed gives the same image, and the prompt matters (`run` on it: the app's tests).

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use common::data;
use image::DynamicImage;
use loopback_core::plan::{self, PlanInput};
use loopback_core::settings::{Settings, TargetMode};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::run::runner::{self, Event, RunRequest};

fn tiny_sdxl() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures/tiny-sdxl")
}

fn settings(seed: i64, prompt: &str) -> Settings {
    Settings {
        loops: 2,
        target_mode: TargetMode::Scale,
        scale: 1.5,
        steps: 6,
        denoise: 0.5,
        seed,
        prompt: prompt.into(),
        negative_prompt: String::new(),
        ..Settings::default()
    }
}

/// Runs to the end; the finished image and the sizes of the loops.
fn run(model: &LoadedModel, settings: Settings) -> (Vec<u8>, Vec<(u32, u32)>) {
    let photo = image::open(data("coffee.png")).unwrap();
    let request = RunRequest {
        embeddings: Default::default(),
        input: Arc::new(DynamicImage::from(
            photo
                .resize_exact(64, 64, image::imageops::FilterType::Triangle)
                .to_rgb8(),
        )),
        settings,
    };
    let mut sizes = Vec::new();
    let output = runner::run_blocking(
        model,
        &request,
        &mut |event| {
            if let Event::LoopFinished { image, .. } = event {
                sizes.push(image.dimensions());
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap()
    .expect("not cancelled");
    (output.finished.to_rgb8().into_raw(), sizes)
}

#[test]
fn loops_run_on_an_sdxl_model() {
    let model = LoadedModel::load(&tiny_sdxl(), &Device::Cpu, DType::F32).unwrap();
    assert!(model.model.is_sdxl());
    let (image, sizes) = run(&model, settings(7, "a cup of coffee"));
    let plan = plan::plan_for(
        &settings(7, "a cup of coffee"),
        PlanInput::of_image(&DynamicImage::new_rgb8(64, 64)),
        7,
    )
    .unwrap();
    let planned: Vec<(u32, u32)> = plan.loops.iter().map(|l| (l.width, l.height)).collect();
    assert_eq!(sizes, planned);
    let (again, _) = run(&model, settings(7, "a cup of coffee"));
    assert_eq!(image, again, "same seed, same image");
    let (other_prompt, _) = run(&model, settings(7, "a red bicycle in the snow"));
    assert_ne!(image, other_prompt, "the prompt reaches the UNet");
}
