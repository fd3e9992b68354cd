//! A1111's metadata in JPEG, WebP and "stealth" PNG files: real files A1111 wrote, the EXIF
//! bytes A1111 writes (`tests/fixtures/metadata/exif/piexif.json`, from `piexif` by
//! `tools/fixtures/exif.py`), and the app's own JPEG/WebP read back (here, and by `piexif` in
//! that script: `LOOPBACK_WRITE_FIXTURES=1` rewrites `from_rust/`).

use std::path::{Path, PathBuf};

use loopback_core::io::{OutputFormat, encode};
use loopback_core::metadata::exif::user_comment_exif;
use loopback_core::metadata::{PARAMETERS_KEY, RECIPE_KEY, read_texts, read_texts_from_path};
use serde_json::Value;

use crate::common;

fn a1111(name: &str) -> PathBuf {
    Path::new(common::ROOT)
        .join("tests/fixtures/a1111")
        .join(name)
}

fn exif_dir() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures/metadata/exif")
}

fn parameters(texts: &[(String, String)]) -> Option<&str> {
    texts
        .iter()
        .find(|(k, _)| k == PARAMETERS_KEY)
        .map(|(_, v)| v.as_str())
}

#[test]
fn exif_bytes_are_piexifs() {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(exif_dir().join("piexif.json")).unwrap())
            .unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let hex: String = user_comment_exif(text, None)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, case["exif_hex"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn real_a1111_jpeg_and_stealth_png_give_their_parameters() {
    let png = read_texts_from_path(&a1111("automatic1111_cropped.png")).unwrap();
    let jpg = read_texts_from_path(&a1111("automatic1111_cropped.jpg")).unwrap();
    let want = parameters(&png).unwrap();
    assert!(
        want.starts_with("photo of a duck\nNegative prompt: monochrome"),
        "{want}"
    );
    assert_eq!(parameters(&jpg), Some(want));
    let stealth = read_texts_from_path(&a1111("automatic1111_stealth.png")).unwrap();
    let text = parameters(&stealth).expect("stealth parameters");
    assert!(
        text.contains("Steps: ") && text.contains("Seed: "),
        "{text}"
    );
    let (settings, _) = loopback_core::metadata::settings_from_texts(&stealth).unwrap();
    assert!(!settings.prompt.is_empty());
}

#[test]
fn jpeg_and_webp_outputs_carry_parameters_and_recipe() {
    let image = image::DynamicImage::new_rgb8(16, 16);
    let parameters_text = "a cat, café ✓\nSteps: 20, Sampler: Euler a, Seed: 7";
    let recipe = r#"{"app":"loopback-scaler test","seed":7}"#;
    let texts = [(PARAMETERS_KEY, parameters_text), (RECIPE_KEY, recipe)];
    let mut expected = serde_json::Map::new();
    for (format, name) in [
        (OutputFormat::Jpeg, "app.jpg"),
        (OutputFormat::WebP, "app.webp"),
    ] {
        let bytes = encode(&image, format, &texts).unwrap();
        let back = read_texts(&bytes).unwrap();
        assert_eq!(
            back,
            [
                (RECIPE_KEY.to_string(), recipe.to_string()),
                (PARAMETERS_KEY.to_string(), parameters_text.to_string())
            ],
            "{name}"
        );
        if std::env::var_os("LOOPBACK_WRITE_FIXTURES").is_some() {
            let dir = exif_dir().join("from_rust");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), &bytes).unwrap();
            expected.insert(
                name.into(),
                serde_json::json!({"parameters": parameters_text, "recipe": recipe}),
            );
        }
    }
    if !expected.is_empty() {
        let json = serde_json::to_string_pretty(&expected).unwrap() + "\n";
        std::fs::write(exif_dir().join("from_rust/expected.json"), json).unwrap();
    }
}

/// ComfyUI, InvokeAI and NovelAI files are recognised, and say what was taken from them.
#[test]
fn other_tools_files_give_prompt_and_seed() {
    let read = |name: &str| {
        let texts = read_texts_from_path(&a1111(name)).unwrap();
        loopback_core::metadata::settings_from_texts(&texts).expect(name)
    };
    let (s, warnings) = read("img2img_cropped.png");
    assert!(
        warnings[0].starts_with("ComfyUI metadata: took prompt, negative prompt, seed"),
        "{warnings:?}"
    );
    assert!(
        s.prompt
            .starts_with("photograph of victorian woman with wings")
    );
    assert_eq!(s.negative_prompt, "watermark, text");
    assert_eq!(
        (s.steps, s.cfg, s.sampler),
        (20, 8.0, loopback_core::settings::Sampler::DpmPp2m)
    );
    assert!((s.denoise - 0.87).abs() < 1e-9);
    // Its seed (280823642470253) is wider than A1111's 32 bits: reported, not taken.
    assert!(
        warnings.iter().any(|w| w.contains("ignored seed")),
        "{warnings:?}"
    );

    let (s, warnings) = read("invokeai_dream1.png");
    assert!(
        warnings[0].starts_with("InvokeAI metadata: took prompt, steps, seed, CFG"),
        "{warnings:?}"
    );
    assert!(s.prompt.starts_with("professional full body photo"));
    assert_eq!((s.steps, s.seed, s.cfg), (50, 2980747362, 5.0));
    assert!(warnings.iter().any(|w| w.contains("k_lms")), "{warnings:?}");

    let (s, warnings) = read("novelai1_cropped.png");
    assert!(
        warnings[0].starts_with("NovelAI metadata: took prompt, negative prompt, seed"),
        "{warnings:?}"
    );
    assert_eq!(s.prompt, "masterpiece, best quality,  cat, space, icon");
    assert!(s.negative_prompt.starts_with("lowres, bad anatomy"));
    assert_eq!(
        (s.steps, s.seed, s.cfg, s.denoise),
        (50, 2253955223, 10.0, 0.4)
    );
    assert_eq!(s.sampler, loopback_core::settings::Sampler::EulerA);
}
