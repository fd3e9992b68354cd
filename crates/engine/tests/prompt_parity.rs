//! A1111's conditioning rules against an independent reference (`tools/parity/
//! make_prompt_parity.py`: transformers' CLIP plus A1111's documented rules, and a diffusers
//! DDIM img2img loop that picks the conditioning per step as A1111 does). On the tiny model
//! with LayerNorms that are not the identity (so emphasis's mean rescale is not 0/0): emphasis,
//! BREAK, clip skip 2, an embedding in the prompt and the negative prompt, a prompt of two
//! chunks against a one-chunk negative (separate UNet passes), prompt editing and alternation.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use loopback_core::settings::Sampler;
use loopback_engine::conditioning::encode::{
    ModelEmbeddings, PromptOptions, TextSetup, encode_prompt,
};
use loopback_engine::conditioning::prompt::ReadPrompt;
use loopback_engine::load::embeddings::Embeddings;
use loopback_engine::model::SdModel;
use loopback_engine::run::pipeline::{Img2ImgParams, TextAndSchedule, img2img};
use serde_json::Value;

use crate::common::{ROOT, max_abs_diff, reference_f32};

fn fixtures() -> PathBuf {
    Path::new(ROOT).join("tests/fixtures")
}

/// tiny-sd with the fixture's text encoder (LayerNorms with non-trivial parameters).
fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-sd"), dir.path());
    copy_dir(
        &fixtures().join("prompt-parity/text_encoder"),
        &dir.path().join("text_encoder"),
    );
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn tensor(dir: &Path, entry: &Value) -> Tensor {
    let (values, shape) = reference_f32(dir, entry);
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

#[test]
fn conditioning_and_img2img_match_the_reference() {
    let parity = fixtures().join("prompt-parity");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(parity.join("manifest.json")).unwrap())
            .unwrap();
    let dir = model_dir();
    let model = SdModel::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let text = TextAndSchedule::load(dir.path()).unwrap();
    let embeddings = Arc::new(Embeddings::scan(&[parity.join("embeddings")]));
    assert!(embeddings.warnings.is_empty(), "{:?}", embeddings.warnings);
    let (width, width_2) = model.text_widths().unwrap();
    let usable = ModelEmbeddings::new(&text.tokenizer, &embeddings, width, width_2);
    let input = image::open(fixtures().join("parity/in_coffee_64x64.png"))
        .unwrap()
        .to_rgb8();
    let (mut worst_cond, mut worst_u8) = (0f32, 0u8);
    for case in manifest["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let clip_skip = case["clip_skip"].as_u64().unwrap() as usize;
        let setup = TextSetup {
            tokenizer: &text.tokenizer,
            pad: text.pad_token,
            pad_2: None,
            zero_empty_negative: false,
            clip_skip,
        };
        for (key, prompt, negative) in [
            ("cond", case["prompt"].as_str().unwrap(), false),
            ("uncond", case["negative_prompt"].as_str().unwrap(), true),
        ] {
            let read = ReadPrompt::new(&text.tokenizer, prompt, steps, &usable.index);
            let expected = case[key].as_array().unwrap();
            assert_eq!(read.texts.len(), expected.len(), "{name} {key}: schedule");
            // Token ids and weights of every chunk, as the reference built them.
            for (got, want) in read.texts.iter().zip(expected) {
                assert_eq!(
                    got.end_at_step as u64,
                    want["end_at_step"].as_u64().unwrap()
                );
                let want_chunks = want["chunks"].as_array().unwrap();
                for (i, chunk) in got.chunked.chunks.iter().enumerate() {
                    let ids = text.tokenizer.wrap_chunk(&chunk.tokens, text.pad_token);
                    let want_ids: Vec<u32> =
                        serde_json::from_value(want_chunks[i]["tokens"].clone()).unwrap();
                    assert_eq!(ids.to_vec(), want_ids, "{name} {key}: chunk {i} ids");
                    let want_weights: Vec<f32> =
                        serde_json::from_value(want_chunks[i]["multipliers"].clone()).unwrap();
                    assert_eq!(
                        &chunk.multipliers[..],
                        &want_weights[1..=chunk.multipliers.len()],
                        "{name} {key}: chunk {i} weights"
                    );
                }
            }
            let encoded = encode_prompt(&model, &setup, &usable, &read, negative).unwrap();
            for (got, want) in encoded.iter().zip(expected) {
                let d = max_abs_diff(&got.context, &tensor(&parity, want));
                worst_cond = worst_cond.max(d);
                assert!(d <= 1e-4, "{name} {key}: conditioning differs by {d}");
            }
        }

        let params = Img2ImgParams {
            prompt: case["prompt"].as_str().unwrap().into(),
            negative_prompt: case["negative_prompt"].as_str().unwrap().into(),
            sampler: Sampler::Ddim,
            schedule: loopback_core::settings::ScheduleType::Automatic,
            steps,
            cfg: case["cfg"].as_f64().unwrap(),
            strength: case["strength"].as_f64().unwrap(),
            seed: case["seed"].as_u64().unwrap() as u32,
            conditioning: PromptOptions {
                clip_skip,
                pad_conds: false,
                embeddings: embeddings.clone(),
            },
            tiling: None,
            control: None,
        };
        let mut ran = 0;
        let out = img2img(&model, &text, &input, &params, &mut |_| {
            ran += 1;
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            ran as u64,
            case["steps_run"].as_u64().unwrap(),
            "{name}: steps"
        );
        let reference =
            std::fs::read(parity.join(case["out_u8"]["file"].as_str().unwrap())).unwrap();
        let diff = crate::common::max_level_diff(out.as_raw(), &reference);
        worst_u8 = worst_u8.max(diff);
        assert!(diff <= 1, "{name}: image differs by {diff} levels");
    }
    eprintln!("prompt parity: conditioning max |Δ| {worst_cond:e}, images max {worst_u8} level(s)");
}
