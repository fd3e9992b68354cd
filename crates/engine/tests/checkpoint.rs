//! Single-file checkpoints and replacement VAEs on tiny models.
//!
//! `tests/fixtures/checkpoint/tiny-sd.safetensors` is `tests/fixtures/tiny-sd` in the original
//! (CompVis) layout, written and checked against diffusers' own `from_single_file` by
//! `tools/checkpoint/make_fixtures.py`; the SD 2.x / SDXL key sets come from the same script.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use image::DynamicImage;
use loopback_core::settings::{Settings, TargetMode};
use loopback_engine::load::checkpoint::{Checkpoint, CheckpointOptions, Family};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::load::open::{LoadOptions, ModelPath};
use loopback_engine::load::weights::SafetensorsFile;
use loopback_engine::model::unet::AddedCond;
use loopback_engine::run::runner::{self, RunRequest};
use loopback_engine::scheduler::PredictionType;

use crate::common;
use common::max_abs_diff;

fn root() -> PathBuf {
    Path::new(common::ROOT).to_path_buf()
}

/// A tiny diffusers model and the same weights as one original-layout checkpoint.
#[derive(Clone, Copy)]
struct Tiny {
    /// Folder name under `tests/fixtures/` (also the checkpoint's stem under `checkpoint/`).
    name: &'static str,
    family: Family,
}

const SD1: Tiny = Tiny {
    name: "tiny-sd",
    family: Family::Sd1,
};
const SDXL: Tiny = Tiny {
    name: "tiny-sdxl",
    family: Family::Sdxl,
};

impl Tiny {
    fn folder(self) -> PathBuf {
        root().join("tests/fixtures").join(self.name)
    }

    fn checkpoint(self) -> PathBuf {
        root()
            .join("tests/fixtures/checkpoint")
            .join(format!("{}.safetensors", self.name))
    }

    fn options(self) -> CheckpointOptions {
        CheckpointOptions {
            config: Some(self.folder()),
            prediction: None,
        }
    }

    fn load_folder(self) -> LoadedModel {
        LoadedModel::load(&self.folder(), &Device::Cpu, DType::F32).unwrap()
    }

    fn load_checkpoint(self) -> LoadedModel {
        let options = LoadOptions {
            checkpoint: self.options(),
            ..LoadOptions::default()
        };
        LoadedModel::load_with(
            &ModelPath::Checkpoint(self.checkpoint()),
            &options,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
    }
}

fn tiny() -> PathBuf {
    SD1.folder()
}
fn tiny_checkpoint() -> PathBuf {
    SD1.checkpoint()
}
fn with_config() -> LoadOptions {
    LoadOptions {
        checkpoint: SD1.options(),
        ..LoadOptions::default()
    }
}
fn load_folder() -> LoadedModel {
    SD1.load_folder()
}

/// Text conditioning, VAE encode/decode and one UNet call of two models, max abs
/// differences. SDXL models are compared on both encoders' context, the pooled embedding
/// and a UNet call with the added size conditioning.
fn compare(a: &LoadedModel, b: &LoadedModel) -> Vec<f32> {
    let ids: Vec<u32> = a
        .text
        .tokenizer
        .encode_padded("a cup of coffee", a.text.pad_token)
        .to_vec();
    let image = Tensor::randn(0f32, 0.5, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let la = a.model.vae.encode_mean(&image).unwrap();
    let lb = b.model.vae.encode_mean(&image).unwrap();
    let da = a.model.vae.decode(&la).unwrap();
    let db = b.model.vae.decode(&la).unwrap();
    let mut diffs = vec![max_abs_diff(&la, &lb), max_abs_diff(&da, &db)];
    if let Some(xl) = a.text.sdxl {
        assert!(a.model.is_sdxl() && b.model.is_sdxl());
        let ids2: Vec<u32> = a
            .text
            .tokenizer
            .encode_padded("a cup of coffee", xl.pad_token_2)
            .to_vec();
        let conditioning = |m: &LoadedModel| {
            m.model
                .sdxl_conditioning(std::slice::from_ref(&ids), std::slice::from_ref(&ids2))
                .unwrap()
        };
        let (ca, pa) = conditioning(a);
        let (cb, pb) = conditioning(b);
        let added = AddedCond {
            text_embeds: pa.clone(),
            time_ids: Tensor::new(&[[32f32, 32., 0., 0., 32., 32.]], &Device::Cpu).unwrap(),
        };
        let ua = a
            .model
            .unet
            .forward_with(&la, 500.0, &ca, Some(&added))
            .unwrap();
        let ub = b
            .model
            .unet
            .forward_with(&la, 500.0, &ca, Some(&added))
            .unwrap();
        diffs.extend([
            max_abs_diff(&ca, &cb),
            max_abs_diff(&pa, &pb),
            max_abs_diff(&ua, &ub),
        ]);
    } else {
        let ta = a.model.text_embeddings(std::slice::from_ref(&ids)).unwrap();
        let tb = b.model.text_embeddings(&[ids]).unwrap();
        let ua = a.model.unet.forward(&la, 500.0, &ta).unwrap();
        let ub = b.model.unet.forward(&la, 500.0, &ta).unwrap();
        diffs.extend([max_abs_diff(&ta, &tb), max_abs_diff(&ua, &ub)]);
    }
    diffs
}

fn checkpoint_equals_its_folder(tiny: Tiny) {
    let folder = tiny.load_folder();
    // The fixture is fp16, as the folder; on CPU both load as f32.
    assert_eq!(
        SafetensorsFile::open(&tiny.checkpoint())
            .unwrap()
            .info("model.diffusion_model.out.2.weight")
            .unwrap()
            .dtype,
        safetensors::Dtype::F16
    );
    let ckpt = tiny.load_checkpoint();
    assert_eq!(ckpt.model.dtype, DType::F32);
    assert_eq!(ckpt.name, tiny.name);
    let diffs = compare(&folder, &ckpt);
    eprintln!(
        "{}: vae encode, vae decode, text…, unet max abs diff: {diffs:?}",
        tiny.name
    );
    assert!(
        diffs.iter().all(|d| *d == 0.0),
        "bit-identical expected: {diffs:?}"
    );
}

#[test]
fn original_layout_checkpoint_equals_its_diffusers_folder() {
    checkpoint_equals_its_folder(SD1);
}

#[test]
fn original_layout_sdxl_checkpoint_equals_its_diffusers_folder() {
    checkpoint_equals_its_folder(SDXL);
}

fn every_tensor_is_served_identically(tiny: Tiny) {
    let ckpt = Checkpoint::open(&tiny.checkpoint(), &tiny.options()).unwrap();
    assert_eq!(ckpt.detected.family, tiny.family);
    let unused: Vec<&str> = ckpt
        .unused
        .iter()
        .map(String::as_str)
        .filter(|n| !n.ends_with("logit_scale"))
        .collect();
    assert!(unused.is_empty(), "{unused:?}");
    let mut parts = vec![
        ("unet/diffusion_pytorch_model.safetensors", &ckpt.unet),
        (
            "vae/diffusion_pytorch_model.safetensors",
            ckpt.vae.as_ref().unwrap(),
        ),
        ("text_encoder/model.safetensors", &ckpt.text),
    ];
    if let Some(text2) = &ckpt.text2 {
        parts.push(("text_encoder_2/model.safetensors", text2));
    }
    assert_eq!(parts.len(), if tiny.family == Family::Sdxl { 4 } else { 3 });
    for (file, source) in parts {
        let folder =
            candle_core::safetensors::load(tiny.folder().join(file), &Device::Cpu).unwrap();
        assert_eq!(folder.len(), source.len(), "{file}");
        for (name, want) in folder {
            let got = source
                .get(&name)
                .unwrap_or_else(|| panic!("{file}: {name} not mapped"))
                .load(DType::F32, &Device::Cpu)
                .unwrap();
            let want = want.to_dtype(DType::F32).unwrap();
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{name}");
        }
    }
}

#[test]
fn every_tensor_of_the_folder_is_served_identically() {
    every_tensor_is_served_identically(SD1);
}

#[test]
fn every_tensor_of_the_sdxl_folder_is_served_identically() {
    every_tensor_is_served_identically(SDXL);
}

fn run_equals_folder_run_and_records_the_hash(tiny: Tiny) {
    let settings = Settings {
        loops: 2,
        target_mode: TargetMode::Scale,
        scale: 1.5,
        steps: 4,
        denoise: 0.5,
        seed: 7,
        prompt: "a cup of coffee".into(),
        ..Settings::default()
    };
    let photo = image::open(root().join("tests/data/coffee.png")).unwrap();
    let input = Arc::new(DynamicImage::ImageRgb8(
        photo
            .resize_exact(64, 64, image::imageops::FilterType::Triangle)
            .to_rgb8(),
    ));
    let run = |model: &LoadedModel| {
        let request = RunRequest {
            embeddings: Default::default(),
            input: Arc::clone(&input),
            settings: settings.clone(),
        };
        runner::run_blocking(model, &request, &mut |_| {}, &AtomicBool::new(false))
            .unwrap()
            .unwrap()
    };
    let folder = run(&tiny.load_folder());
    let mut model = tiny.load_checkpoint();
    let cache = tempfile::tempdir().unwrap();
    let cache = loopback_engine::load::weights::hash::HashCache::new(cache.path());
    model.compute_hashes(Some(&cache)).unwrap();
    let expected = loopback_engine::load::weights::hash::sha256_file(&tiny.checkpoint()).unwrap();
    assert_eq!(model.hash.as_deref(), Some(&expected[..10]));
    let out = run(&model);
    assert_eq!(out.unfinished.as_raw(), folder.unfinished.as_raw());
    let text = out.recipe.to_infotext().to_text();
    assert!(
        text.contains(&format!(
            "Model hash: {}, Model: {}",
            &expected[..10],
            tiny.name
        )),
        "{text}"
    );
}

#[test]
fn img2img_run_from_checkpoint_equals_folder_run_and_records_the_hash() {
    run_equals_folder_run_and_records_the_hash(SD1);
}

#[test]
fn sdxl_img2img_run_from_checkpoint_equals_folder_run() {
    run_equals_folder_run_and_records_the_hash(SDXL);
}

#[test]
fn tiny_heads_cannot_be_inferred_without_a_config() {
    let err = Checkpoint::open(&tiny_checkpoint(), &CheckpointOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&tiny_checkpoint().display().to_string()),
        "{err}"
    );
    assert!(err.contains("give a diffusers config folder"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn bare_pickles_are_refused_unrun() {
    // A raw pickle stream (no zip container): the legacy format, never interpreted.
    let dir = tempfile::tempdir().unwrap();
    for name in ["model.ckpt", "model.pt", "model.pth", "model.bin"] {
        let path = dir.path().join(name);
        std::fs::write(&path, b"\x80\x02}q\x00.").unwrap();
        let err = Checkpoint::open(&path, &CheckpointOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a PyTorch file this app reads"), "{err}");
        assert!(err.contains("convert it to .safetensors"), "{err}");
        assert!(err.starts_with(&path.display().to_string()));
    }
}

#[test]
fn truncated_and_foreign_files_give_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny_checkpoint()).unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "truncated.safetensors",
            &bytes[..bytes.len() / 2],
            "truncated",
        ),
        ("tiny.safetensors", b"abc", "too short"),
        ("garbage.safetensors", &[7u8; 4096], "header length"),
    ];
    for (name, content, what) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = Checkpoint::open(&path, &CheckpointOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(what), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A VAE alone is not a checkpoint.
    let vae = tiny().join("vae/diffusion_pytorch_model.safetensors");
    let err = Checkpoint::open(&vae, &CheckpointOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no UNet tensors") && err.contains("--vae"),
        "{err}"
    );
}

/// `{"original": {name: shape}, "diffusers": {component: {name: shape}}}`.
#[derive(serde::Deserialize)]
struct Keys {
    original: BTreeMap<String, Vec<usize>>,
    diffusers: BTreeMap<String, BTreeMap<String, Vec<usize>>>,
}

/// Writes a zero-filled fp16 safetensors file with the original names and shapes.
fn zeros_checkpoint(keys: &Keys, path: &Path) {
    let tensors: HashMap<String, Tensor> = keys
        .original
        .iter()
        .map(|(name, shape)| {
            let t = Tensor::zeros(shape.as_slice(), DType::F16, &Device::Cpu).unwrap();
            (name.clone(), t)
        })
        .collect();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

fn keys(name: &str) -> Keys {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/checkpoint").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every diffusers tensor is served with its shape, by exactly one stored tensor; returns
/// the mapped names that diffusers does not have.
fn check_mapping(ckpt: &Checkpoint, keys: &Keys) -> BTreeMap<String, Vec<String>> {
    let sources = [
        ("unet", Some(&ckpt.unet)),
        ("vae", ckpt.vae.as_ref()),
        ("text_encoder", Some(&ckpt.text)),
        ("text_encoder_2", ckpt.text2.as_ref()),
    ];
    let mut extra = BTreeMap::new();
    for (component, source) in sources {
        let Some(want) = keys.diffusers.get(component) else {
            assert!(source.is_none(), "{component} mapped but not in diffusers");
            continue;
        };
        let source = source.unwrap_or_else(|| panic!("{component} not mapped"));
        for (name, shape) in want {
            let found = source
                .get(name)
                .unwrap_or_else(|| panic!("{component}: {name} not mapped"));
            assert_eq!(found.shape().as_ref(), Some(shape), "{component}: {name}");
        }
        let more: Vec<String> = source
            .names()
            .into_iter()
            .filter(|n| !want.contains_key(*n))
            .map(String::from)
            .collect();
        extra.insert(component.to_string(), more);
    }
    extra
}

#[test]
fn sd2_openclip_checkpoint_maps_and_loads() {
    let keys = keys("tiny-sd2-keys.json");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd2.safetensors");
    zeros_checkpoint(&keys, &path);
    let ckpt = Checkpoint::open(&path, &CheckpointOptions::default()).unwrap();
    assert_eq!(ckpt.detected.family, Family::Sd2);
    assert!(ckpt.pad_with_exclamation);
    assert_eq!(
        ckpt.scheduler.prediction_type,
        Some(PredictionType::VPrediction)
    );
    // OpenCLIP stores one more block than diffusers keeps (SD 2.x uses the penultimate one).
    assert_eq!(ckpt.text_config.num_hidden_layers, 2);
    assert_eq!(ckpt.text_config.hidden_act, "gelu");
    assert!(ckpt.unet_config.use_linear_projection);
    let extra = check_mapping(&ckpt, &keys);
    assert!(
        extra["unet"].is_empty() && extra["vae"].is_empty(),
        "{extra:?}"
    );
    assert!(
        extra["text_encoder"]
            .iter()
            .all(|n| n.starts_with("text_model.encoder.layers.2.")),
        "{extra:?}"
    );
    assert_eq!(ckpt.unused, ["cond_stage_model.model.logit_scale"]);
    // The configs inferred from the weights build the engine's networks.
    let options = LoadOptions {
        checkpoint: CheckpointOptions {
            config: None,
            prediction: Some(PredictionType::Epsilon),
        },
        ..LoadOptions::default()
    };
    let model = LoadedModel::load_with(
        &ModelPath::Checkpoint(path),
        &options,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(
        model.text.pad_token,
        model.text.tokenizer.token_id("!").unwrap()
    );
    assert_eq!(
        model.text.scheduler.prediction_type,
        Some(PredictionType::Epsilon)
    );
}

#[test]
fn sdxl_checkpoint_maps_every_tensor_to_a_distinct_diffusers_name() {
    let keys = keys("tiny-sdxl-keys.json");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdxl.safetensors");
    zeros_checkpoint(&keys, &path);
    let ckpt = Checkpoint::open(&path, &CheckpointOptions::default()).unwrap();
    assert_eq!(ckpt.detected.family, Family::Sdxl);
    let extra = check_mapping(&ckpt, &keys);
    assert!(extra.values().all(Vec::is_empty), "{extra:?}");
    assert_eq!(ckpt.unused, ["conditioner.embedders.1.model.logit_scale"]);
    let total: usize = keys.diffusers.values().map(BTreeMap::len).sum();
    let mapped = ckpt.unet.len()
        + ckpt.vae.as_ref().unwrap().len()
        + ckpt.text.len()
        + ckpt.text2.as_ref().unwrap().len();
    assert_eq!(mapped, total);
    let unet = &ckpt.detected.unet;
    assert_eq!(
        unet.levels.iter().map(|l| l.depth).collect::<Vec<_>>(),
        [0, 2, 3]
    );
    assert_eq!(unet.mid_depth, 3);
    assert_eq!(unet.context_dim, 192);
    assert_eq!(unet.adm_in_channels, Some(176));
    let text2 = ckpt.text2_config.as_ref().unwrap();
    assert_eq!((text2.num_hidden_layers, text2.num_attention_heads), (3, 2));
    assert_eq!(ckpt.vae_config.as_ref().unwrap().scaling_factor, 0.13025);
}

/// Scales every tensor by 1.5 (computed in f32, stored fp16 like the fixture).
fn scaled(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(k, v)| {
            let v = (v.to_dtype(DType::F32).unwrap() * 1.5)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap();
            (k, v)
        })
        .collect()
}

/// A copy of the tiny folder whose VAE weights are scaled.
fn folder_with_scaled_vae(dir: &Path) -> PathBuf {
    let copy = dir.join("tiny-scaled-vae");
    for sub in ["unet", "vae", "text_encoder", "scheduler", "tokenizer"] {
        std::fs::create_dir_all(copy.join(sub)).unwrap();
        for entry in std::fs::read_dir(tiny().join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(sub).join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(
        tiny().join("model_index.json"),
        copy.join("model_index.json"),
    )
    .unwrap();
    let vae = copy.join("vae/diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&vae, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&scaled(tensors), &vae).unwrap();
    copy
}

#[test]
fn replacement_vae_file_or_folder_replaces_the_models_vae() {
    let dir = tempfile::tempdir().unwrap();
    let reference_folder = folder_with_scaled_vae(dir.path());
    let reference = LoadedModel::load(&reference_folder, &Device::Cpu, DType::F32).unwrap();
    // The original-layout VAE of the checkpoint, scaled, without the first_stage_model. prefix
    // (as vae-ft-mse-840000-ema-pruned.safetensors is stored).
    let all = candle_core::safetensors::load(tiny_checkpoint(), &Device::Cpu).unwrap();
    let vae: HashMap<String, Tensor> = all
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("first_stage_model.")?.to_string(), v)))
        .collect();
    let vae_file = dir.path().join("my-vae.safetensors");
    candle_core::safetensors::save(&scaled(vae), &vae_file).unwrap();

    let original = load_folder();
    let image = Tensor::randn(0f32, 0.5, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let decode = |m: &LoadedModel| {
        let latents = m.model.vae.encode_mean(&image).unwrap();
        (latents.clone(), m.model.vae.decode(&latents).unwrap())
    };
    let (want_latents, want_image) = decode(&reference);
    let (orig_latents, _) = decode(&original);
    assert!(
        max_abs_diff(&want_latents, &orig_latents) > 1e-3,
        "the scaled VAE must differ"
    );

    let sources = [
        (ModelPath::Folder(tiny()), vae_file.clone()),
        (ModelPath::Checkpoint(tiny_checkpoint()), vae_file.clone()),
        (ModelPath::Folder(tiny()), reference_folder.join("vae")),
        (ModelPath::Folder(tiny()), reference_folder.clone()),
    ];
    for (model_path, vae_path) in sources {
        let mut options = if matches!(model_path, ModelPath::Checkpoint(_)) {
            with_config()
        } else {
            LoadOptions::default()
        };
        options.vae = Some(vae_path.clone());
        let mut model =
            LoadedModel::load_with(&model_path, &options, &Device::Cpu, DType::F32).unwrap();
        let (latents, image) = decode(&model);
        assert_eq!(max_abs_diff(&latents, &want_latents), 0.0, "{vae_path:?}");
        assert_eq!(max_abs_diff(&image, &want_image), 0.0, "{vae_path:?}");
        // The rest of the model is untouched.
        assert_eq!(compare(&model, &original)[2..], [0.0, 0.0]);
        model.compute_hashes(None).unwrap();
        let info = model.vae.as_ref().unwrap();
        let weights = model.vae_path.as_ref().unwrap();
        let sha = loopback_engine::load::weights::hash::sha256_file(weights).unwrap();
        assert_eq!(info.hash.as_deref(), Some(&sha[..10]));
        if vae_path == vae_file {
            assert_eq!(info.name, "my-vae");
        }
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// Loads `/tmp/sd15-random` (a random SD 1.5 diffusers folder) as f32 and prints the peak
/// RSS; `LOAD_MODE=mmap` loads it through candle's memory-mapped var builder instead (the
/// way the engine loaded before), for comparison. Run one mode per process:
/// `cargo test -p loopback-engine --test engine checkpoint::load_peak -- --ignored --nocapture`.
#[test]
#[ignore = "needs /tmp/sd15-random; a measurement, not a check"]
fn load_peak_rss_sd15_random() {
    use loopback_engine::load::lora::LoraSet;
    use loopback_engine::model::config::ModelFiles;
    use loopback_engine::model::{Component, ModelWeights, SdModel, folder_parts};
    let root = Path::new("/tmp/sd15-random");
    let before = peak_rss_mib();
    let started = std::time::Instant::now();
    let mode = std::env::var("LOAD_MODE").unwrap_or_default();
    let model = if mode == "mmap" {
        let files = ModelFiles::read(root).unwrap();
        let component = |p: &str| {
            let path = root.join(p);
            // SAFETY: the files are not modified while mapped.
            let weights = unsafe {
                candle_nn::VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu)
            }
            .unwrap();
            Component {
                weights,
                names: Vec::new(),
                path,
            }
        };
        let weights = ModelWeights {
            clip: component("text_encoder/model.safetensors"),
            clip2: None,
            vae: component("vae/diffusion_pytorch_model.safetensors"),
            unet: component("unet/diffusion_pytorch_model.safetensors"),
        };
        SdModel::from_parts(
            files,
            weights,
            &root.join("unet/config.json"),
            &Device::Cpu,
            DType::F32,
            &LoraSet::default(),
        )
        .unwrap()
    } else {
        let (files, weights) = folder_parts(root, &Device::Cpu, DType::F32).unwrap();
        SdModel::from_parts(
            files,
            weights,
            &root.join("unet/config.json"),
            &Device::Cpu,
            DType::F32,
            &LoraSet::default(),
        )
        .unwrap()
    };
    eprintln!(
        "mode {}: peak RSS {:.0} MiB (before loading {before:.0} MiB), {:.1} s",
        if mode == "mmap" {
            "mmap"
        } else {
            "positioned reads"
        },
        peak_rss_mib(),
        started.elapsed().as_secs_f64()
    );
    drop(model);
}

#[test]
fn loader_resolves_a_checkpoint_by_name_and_hashes_it_once() {
    use loopback_engine::device::DeviceSpec;
    use loopback_engine::load::request::{self, LoadEvent, ModelRequest};
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("Stable-diffusion")).unwrap();
    std::fs::copy(
        tiny_checkpoint(),
        models.join("Stable-diffusion/my-model.safetensors"),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let request = ModelRequest {
        search_dirs: vec![models.clone()],
        checkpoint: CheckpointOptions {
            config: Some(tiny()),
            prediction: None,
        },
        hash_cache: Some(cache.clone()),
        ..ModelRequest::new("my-model", DeviceSpec::Cpu)
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let mut events = Vec::new();
    let model = request::load_blocking(&request, &cancel, &mut |e| events.push(e)).unwrap();
    assert!(matches!(events.last(), Some(LoadEvent::Loaded { .. })));
    assert_eq!(model.name, "my-model");
    let sha = loopback_engine::load::weights::hash::sha256_file(&tiny_checkpoint()).unwrap();
    assert_eq!(model.hash.as_deref(), Some(&sha[..10]));
    let cached = std::fs::read_to_string(cache.join("model-hashes.json")).unwrap();
    assert!(cached.contains(&sha), "{cached}");
}

/// A copy of the tiny SDXL VAE folder at `dir`, with `force_upcast` set as given.
fn sdxl_vae_copy(dir: &Path, force_upcast: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let vae = SDXL.folder().join("vae");
    std::fs::copy(
        vae.join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(vae.join("config.json")).unwrap()).unwrap();
    config["force_upcast"] = serde_json::Value::Bool(force_upcast);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn an_fp16_fix_vae_from_the_hf_cache_stays_f16_and_is_recorded_by_its_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let load = |vae: Option<PathBuf>| {
        let options = LoadOptions {
            vae,
            ..LoadOptions::default()
        };
        let path = ModelPath::Folder(SDXL.folder());
        LoadedModel::load_with(&path, &options, &Device::Cpu, DType::F16).unwrap()
    };
    // The stock SDXL VAE (force_upcast) runs in f32 under f16 weights, given or not.
    assert_eq!(load(None).model.vae_dtype, DType::F32);
    let stock = sdxl_vae_copy(&tmp.path().join("stock"), true);
    assert_eq!(load(Some(stock)).model.vae_dtype, DType::F32);
    // The fp16-fix VAE, as the loader fetches it into the Hugging Face cache, stays f16.
    let snapshot = tmp
        .path()
        .join("hub/models--madebyollin--sdxl-vae-fp16-fix/snapshots/0123abc");
    let fixed = load(Some(sdxl_vae_copy(&snapshot, false)));
    assert_eq!(fixed.model.vae_dtype, DType::F16);
    assert_eq!(fixed.vae.as_ref().unwrap().name, "sdxl-vae-fp16-fix");
}

#[test]
fn loras_merge_into_checkpoints_as_into_their_folders() {
    let cases = [
        (SD1, "tests/fixtures/lora/tiny_a.safetensors"),
        (SDXL, "tests/fixtures/lora-sdxl/tiny_xl_a.safetensors"),
    ];
    for (tiny, lora) in cases {
        let loras = vec![loopback_engine::load::lora::LoraSpec {
            path: root().join(lora),
            weight: 0.7,
        }];
        let folder = LoadedModel::load_with(
            &ModelPath::Folder(tiny.folder()),
            &LoadOptions {
                loras: loras.clone(),
                ..LoadOptions::default()
            },
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let ckpt = LoadedModel::load_with(
            &ModelPath::Checkpoint(tiny.checkpoint()),
            &LoadOptions {
                checkpoint: tiny.options(),
                loras,
                ..LoadOptions::default()
            },
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let diffs = compare(&folder, &ckpt);
        assert!(diffs.iter().all(|d| *d == 0.0), "{}: {diffs:?}", tiny.name);
        // And the LoRA changed something.
        let plain = tiny.load_folder();
        let changed = compare(&plain, &ckpt);
        assert!(
            changed[2..].iter().any(|d| *d > 1e-4),
            "{}: {changed:?}",
            tiny.name
        );
    }
}

// ----- PyTorch pickles (`tests/fixtures/pickles/`, `tools/checkpoint/make_pickles.py`) -----

fn pickle(name: &str) -> PathBuf {
    root().join("tests/fixtures/pickles").join(name)
}

/// A `.ckpt` (`torch.save({"state_dict": …})`) gives exactly the model of its `.safetensors`
/// twin.
#[test]
fn ckpt_checkpoint_equals_its_safetensors_twin() {
    let options = LoadOptions {
        checkpoint: SD1.options(),
        ..LoadOptions::default()
    };
    let load = |path: PathBuf| {
        LoadedModel::load_with(
            &ModelPath::Checkpoint(path),
            &options,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap()
    };
    let (ckpt, safetensors) = (load(pickle("tiny-sd.ckpt")), load(tiny_checkpoint()));
    for d in compare(&ckpt, &safetensors) {
        assert_eq!(d, 0.0);
    }
}

/// The legacy (pre-1.6) format, which candle does not read, is read too.
#[test]
fn legacy_format_pickles_are_read() {
    use loopback_engine::load::checkpoint::{as_safetensors, check_pickle};
    check_pickle(&pickle("legacy.pt")).unwrap();
    let converted = as_safetensors(&pickle("legacy.pt"), &["state_dict"]).unwrap();
    let tensors = candle_core::safetensors::load(&converted, &Device::Cpu).unwrap();
    let w = &tensors["w"];
    assert_eq!(w.to_vec1::<f32>().unwrap(), [1.5, -2.0, 0.25]);
}

/// A1111's `.pt` textual-inversion layout reads as the same vectors as the safetensors one.
#[test]
fn pt_embedding_equals_its_safetensors_twin() {
    use loopback_engine::load::embeddings::{Vectors, read_embedding};
    let pt = read_embedding(&pickle("lbstyle.pt")).unwrap();
    let st =
        read_embedding(&root().join("tests/fixtures/prompt-parity/embeddings/lbstyle.safetensors"))
            .unwrap();
    assert_eq!((pt.name.as_str(), pt.count()), ("lbstyle", 3));
    let (Vectors::One(a), Vectors::One(b)) = (&pt.vectors, &st.vectors) else {
        panic!("single-tensor embeddings");
    };
    assert_eq!(max_abs_diff(a, b), 0.0);
}

/// Pickles that name anything but a state dict's globals, cut zips and the legacy format are
/// refused with one line naming the file (and the global); nothing is run.
#[test]
fn malicious_and_broken_pickles_are_refused() {
    use loopback_engine::load::checkpoint::check_pickle;
    for (name, says) in [
        ("system.pt", "posix.system"),
        // candle's reader spells Python 3's `builtins` as Python 2's `__builtin__`.
        ("nested.pt", "__builtin__.eval"),
        ("truncated.pt", "not a PyTorch file this app reads"),
    ] {
        let err = check_pickle(&pickle(name)).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(says), "{name}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
    assert!(check_pickle(&pickle("tiny-sd.ckpt")).is_ok());
    // As a model: the same refusal, before anything loads.
    let options = LoadOptions::default();
    let err = LoadedModel::load_with(
        &ModelPath::Checkpoint(pickle("system.pt")),
        &options,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("posix.system"), "{err}");
}
