//! The model library: what `loopback-scaler models` and the app's pickers list.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use loopback_engine::load::library::{self, Entry, Kind};
use loopback_engine::load::weights::hash::HashCache;

fn fixtures() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures")
}

/// A `models/` folder laid out as A1111 does, plus a Hugging Face cache with one model.
fn library_dirs(root: &Path) -> (PathBuf, PathBuf) {
    let models = root.join("models");
    for sub in [
        "Stable-diffusion",
        "VAE",
        "Lora",
        "VAE-taesd",
        "ControlNet/tile",
    ] {
        std::fs::create_dir_all(models.join(sub)).unwrap();
    }
    let copy = |from: PathBuf, to: PathBuf| {
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    copy(
        fixtures().join("checkpoint/tiny-sd.safetensors"),
        models.join("Stable-diffusion/tiny-ckpt.safetensors"),
    );
    copy(
        fixtures().join("tiny-sd/vae/diffusion_pytorch_model.safetensors"),
        models.join("VAE/tiny-vae.safetensors"),
    );
    copy(
        fixtures().join("lora/tiny_a.safetensors"),
        models.join("Lora/tiny_a.safetensors"),
    );
    copy(
        fixtures().join("taesd/taesd_decoder.safetensors"),
        models.join("VAE-taesd/taesd_decoder.safetensors"),
    );
    // ControlNets: a diffusers folder (its family from its config) and a `.pth` file.
    std::fs::write(
        models.join("ControlNet/tile/config.json"),
        r#"{"_class_name": "ControlNetModel", "cross_attention_dim": 768}"#,
    )
    .unwrap();
    std::fs::write(models.join("ControlNet/openpose.pth"), b"a pickle").unwrap();
    // A damaged checkpoint is listed without a family rather than hiding the others.
    std::fs::write(models.join("broken.safetensors"), b"not a safetensors file").unwrap();
    // A diffusers folder, copied whole.
    let folder = models.join("tiny-folder");
    copy_dir(&fixtures().join("tiny-sd"), &folder);
    // The Hugging Face cache layout: models--ORG--NAME/snapshots/REV/.
    let cache = root.join("hub");
    let snapshot = cache.join("models--someone--tiny-xl/snapshots/0123abcd");
    copy_dir(&fixtures().join("tiny-sdxl"), &snapshot);
    std::fs::create_dir_all(cache.join("models--someone--not-a-pipeline/snapshots/42")).unwrap();
    (models, cache)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn find<'a>(entries: &'a [Entry], kind: Kind, name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.kind == kind && e.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} {name} in {entries:#?}"))
}

#[test]
fn lists_every_kind_with_family_size_and_cached_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (models, cache) = library_dirs(dir.path());
    let hashes = HashCache::new(&dir.path().join("hash-cache"));
    let ckpt = models.join("Stable-diffusion/tiny-ckpt.safetensors");

    let entries = library::scan(std::slice::from_ref(&models), Some(&cache), Some(&hashes));
    let checkpoint = find(&entries, Kind::Checkpoint, "tiny-ckpt");
    assert_eq!(checkpoint.family.as_deref(), Some("SD 1.x"));
    assert_eq!(checkpoint.bytes, std::fs::metadata(&ckpt).unwrap().len());
    assert_eq!(checkpoint.hash, None, "scanning never hashes");
    assert_eq!(find(&entries, Kind::Checkpoint, "broken").family, None);
    let folder = find(&entries, Kind::Diffusers, "tiny-folder");
    assert_eq!(folder.family.as_deref(), Some("SD 1.x"));
    assert!(folder.bytes > 1_000_000, "{} bytes", folder.bytes);
    let cached = find(&entries, Kind::Diffusers, "someone/tiny-xl");
    assert!(cached.in_hf_cache);
    assert_eq!(cached.family.as_deref(), Some("SDXL"));
    assert!(!entries.iter().any(|e| e.name.contains("not-a-pipeline")));
    find(&entries, Kind::Vae, "tiny-vae");
    find(&entries, Kind::Lora, "tiny_a");
    find(&entries, Kind::Taesd, "taesd_decoder");
    let tile = find(&entries, Kind::ControlNet, "tile");
    assert_eq!(tile.family.as_deref(), Some("SD 1.x"));
    assert_eq!(find(&entries, Kind::ControlNet, "openpose").family, None);
    assert_eq!(entries.len(), 9, "{entries:#?}");

    // Once hashed (as loading does), the short hash is listed.
    let full = hashes.sha256(&ckpt).unwrap();
    let entries = library::scan(&[models], Some(&cache), Some(&hashes));
    assert_eq!(
        find(&entries, Kind::Checkpoint, "tiny-ckpt")
            .hash
            .as_deref(),
        Some(&full[..10])
    );
}

#[test]
fn the_models_command_prints_a_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (models, cache) = library_dirs(dir.path());
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopback-scaler"));
        cmd.arg("models")
            .arg("--models-dir")
            .arg(&models)
            .env("HF_HUB_CACHE", &cache)
            .env("XDG_CACHE_HOME", dir.path().join("xdg"));
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(false);
    assert!(table.starts_with("KIND"), "{table}");
    let tile = Path::new("ControlNet").join("tile");
    for (what, kind) in [
        ("tiny-ckpt", "checkpoint"),
        (tile.to_str().unwrap(), "controlnet"),
    ] {
        let line = table
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(line.starts_with(kind) && line.contains("SD 1.x"), "{line}");
    }
    assert!(table.contains("someone/tiny-xl"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let kinds: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "checkpoint",
        "diffusers",
        "vae",
        "lora",
        "controlnet",
        "taesd",
    ] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
}
