use super::*;
use crate::plan::plan;
use crate::settings::{ControlMode, ControlPreprocess, FilterLevel};

fn sample_recipe() -> Recipe {
    let settings = Settings {
        prompt: "a cat on a sofa, (masterpiece:1.2)\nsecond line".into(),
        negative_prompt: "blurry, lowres".into(),
        sampler: Sampler::DpmPp2mKarras,
        curve: Curve::EaseOutSine,
        denoise_change: 0.95,
        detail: FilterLevel::Low,
        contour: true,
        sharpness: 1.25,
        color_correction: true,
        seed: -1,
        ..Settings::default()
    };
    let p = plan(&settings, Size::new(512, 768), 1234, &[]).unwrap();
    Recipe::new(
        &settings,
        &p,
        Some(ModelInfo {
            name: "sd15".into(),
            hash: Some("cc6cb27103".into()),
            vae: None,
            precision: Some("f32".into()),
        }),
    )
}

#[test]
fn infotext_has_a1111_keys_in_order() {
    let text = sample_recipe().to_infotext().to_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "a cat on a sofa, (masterpiece:1.2)");
    assert_eq!(lines[1], "second line");
    assert_eq!(lines[2], "Negative prompt: blurry, lowres");
    assert!(
        lines[3].starts_with(
            "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, \
         Size: 680x1024, Model hash: cc6cb27103, Model: sd15, Denoising strength: 0.35, \
         Denoising strength change factor: 0.95, Dimension increment factor: 1.0, Add Detail: Low"
        ),
        "{}",
        lines[3]
    );
    assert!(lines[3].ends_with(&format!(
        "Version: loopback-scaler v{}",
        env!("CARGO_PKG_VERSION")
    )));
}

#[test]
fn texts_round_trip_to_the_same_settings() {
    let recipe = sample_recipe();
    let texts = recipe.png_texts();
    let (settings, warnings) = settings_from_texts(&texts).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(
        settings,
        Settings {
            seed: 1234,
            ..recipe.settings.clone()
        }
    );
    assert_eq!(Recipe::from_json(&texts[1].1).unwrap(), recipe);

    // Without the recipe chunk, the infotext alone restores everything it carries.
    let (from_infotext, warnings) = settings_from_texts(&texts[..1]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        from_infotext,
        Settings {
            seed: 1234,
            ..recipe.settings
        }
    );
}

#[test]
fn a1111_infotext_gives_settings_and_warnings() {
    let text = "masterpiece, best quality, 1girl, <lora:detail:0.6>\n\
                Negative prompt: (worst quality:1.4), lowres\n\
                Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 3141592653, \
                Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, \
                Clip skip: 2, Version: v1.10.1";
    let (s, warnings) = settings_from_infotext(&Infotext::parse(text));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        s.prompt,
        "masterpiece, best quality, 1girl, <lora:detail:0.6>"
    );
    assert_eq!(s.negative_prompt, "(worst quality:1.4), lowres");
    assert_eq!(
        (s.steps, s.cfg, s.seed, s.denoise),
        (28, 6.5, 3141592653, 0.45)
    );
    assert_eq!(s.sampler, Sampler::EulerA);

    let text = "a photo\nSteps: 500, Sampler: DPM adaptive, CFG scale: 7, Seed: 1, Denoising strength: 0.3";
    let (s, warnings) = settings_from_infotext(&Infotext::parse(text));
    assert_eq!(s.steps, 30);
    assert_eq!(s.sampler, Sampler::Ddim);
    assert_eq!(s.denoise, 0.3);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn no_metadata_gives_none() {
    assert!(settings_from_texts(&[("Software".into(), "GIMP".into())]).is_none());
}

/// A LoRA record with a hash.
fn lora(name: &str, weight: f64, hash: &str) -> LoraRecord {
    LoraRecord {
        name: name.into(),
        weight,
        hash: Some(hash.into()),
    }
}

#[test]
fn lora_hashes_as_a1111_writes_them() {
    let mut recipe = sample_recipe();
    assert_eq!(recipe.lora_hashes(), None);
    recipe.loras = vec![
        lora("style:a,b", 0.6, "0123456789ab"),
        lora("detail", 1.0, "ba9876543210"),
    ];
    let text = recipe.to_infotext().to_text();
    assert!(
        text.contains(
            "Denoising strength: 0.35, Lora hashes: \"styleab: 0123456789ab, detail: ba9876543210\", "
        ),
        "{text}"
    );
    let back = Recipe::from_json(&recipe.to_json()).unwrap();
    assert_eq!(back.loras, recipe.loras);
}

#[test]
fn finishing_settings_are_written_and_read_in_a1111_order() {
    let info = sample_recipe().to_infotext();
    let finishing: Vec<(&str, &str)> = info
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .skip_while(|(k, _)| *k != "Add Detail")
        .take(9)
        .collect();
    assert_eq!(
        finishing,
        [
            ("Add Detail", "Low"),
            ("Add Blur", "None"),
            ("Smoothing", "None"),
            ("Contour", "True"),
            ("Sharpness", "1.25"),
            ("Brightness", "1.0"),
            ("Color Strength", "1.0"),
            ("Contrast", "1.0"),
            ("Loopback loops", "4"),
        ]
    );

    // Unusable values are reported numbers first, then choices, then toggles.
    let text = "p\nSteps: 20, Add Detail: Max, Contour: maybe, Sharpness: sharp, \
                Loopback loops: x, Add Blur: High, Loopback curve: Wavy, Brightness: 1.5";
    let (s, warnings) = settings_from_infotext(&Infotext::parse(text));
    assert_eq!(
        (s.blur, s.brightness, s.steps),
        (FilterLevel::High, 1.5, 20)
    );
    assert_eq!(s.finishing().detail, FilterLevel::None);
    assert_eq!(
        warnings,
        [
            "ignored Sharpness: \"sharp\"",
            "ignored Loopback loops: \"x\"",
            "ignored Add Detail: \"Max\"",
            "ignored Loopback curve: \"Wavy\"",
            "ignored Contour: \"maybe\"",
        ]
    );
}

#[test]
fn clip_skip_pad_conds_and_ti_hashes_as_a1111_writes_them() {
    let mut recipe = sample_recipe();
    let text = recipe.to_infotext().to_text();
    // A1111 writes neither at their defaults.
    assert!(
        !text.contains("Clip skip") && !text.contains("Pad conds"),
        "{text}"
    );
    assert_eq!(recipe.ti_hashes(), None);
    recipe.settings.clip_skip = 2;
    recipe.settings.pad_conds = true;
    recipe.embeddings = vec![
        EmbeddingRecord {
            name: "EasyNegative".into(),
            hash: "c74b4e810b03".into(),
        },
        EmbeddingRecord {
            name: "bad,hands:5".into(),
            hash: "aa0123456789".into(),
        },
    ];
    let text = recipe.to_infotext().to_text();
    assert!(
        text.contains(
            "Denoising strength: 0.35, Clip skip: 2, TI hashes: \"EasyNegative: c74b4e810b03, \
             badhands5: aa0123456789\", Pad conds: True, "
        ),
        "{text}"
    );
    let (settings, warnings) = settings_from_infotext(&Infotext::parse(&text));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!((settings.clip_skip, settings.pad_conds), (2, true));
    let back = Recipe::from_json(&recipe.to_json()).unwrap();
    assert_eq!(back.embeddings, recipe.embeddings);
    // Out of range: a warning, the default kept.
    let (settings, warnings) = settings_from_infotext(&Infotext::parse(
        "p\nSteps: 20, CFG scale: 7, Clip skip: 13",
    ));
    assert_eq!(settings.clip_skip, 1);
    assert_eq!(warnings, ["ignored Clip skip: \"13\""]);
}

#[test]
fn embeddings_named_by_a_recipe_or_ti_hashes() {
    let a1111 = |text: &str| vec![(PARAMETERS_KEY.to_string(), text.to_string())];
    assert_eq!(
        embeddings_named(&a1111(
            "x\nNegative prompt: EasyNegative\nSteps: 20, TI hashes: \"EasyNegative: c74b4e810b03, bad-hands-5: aa0123456789\", Version: v1.10.1"
        )),
        ["EasyNegative", "bad-hands-5"]
    );
    assert!(embeddings_named(&a1111("x\nSteps: 20")).is_empty());
    let mut recipe = sample_recipe();
    recipe.embeddings = vec![EmbeddingRecord {
        name: "lbstyle".into(),
        hash: "0123456789ab".into(),
    }];
    assert_eq!(
        embeddings_named(&[(RECIPE_KEY.to_string(), recipe.to_json())]),
        ["lbstyle"]
    );
}

#[test]
fn sampler_and_schedule_type_as_a1111_writes_them() {
    let mut recipe = sample_recipe();
    let params = |r: &Recipe| {
        let info = r.to_infotext();
        (
            info.get("Sampler").map(String::from),
            info.get("Schedule type").map(String::from),
        )
    };
    // The old combined name is written as A1111 ≥ 1.9 writes it, and read back unchanged.
    assert_eq!(
        params(&recipe),
        (Some("DPM++ 2M".into()), Some("Karras".into()))
    );
    recipe.settings.sampler = Sampler::Euler;
    assert_eq!(params(&recipe), (Some("Euler".into()), None));
    recipe.settings.schedule = ScheduleType::Exponential;
    assert_eq!(
        params(&recipe),
        (Some("Euler".into()), Some("Exponential".into()))
    );
    let text = recipe.to_infotext().to_text();
    let (s, warnings) = settings_from_infotext(&Infotext::parse(&text));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        (s.sampler, s.schedule),
        (Sampler::Euler, ScheduleType::Exponential)
    );
    // Unknown names: one warning each, the defaults kept.
    let (s, warnings) = settings_from_infotext(&Infotext::parse(
        "p\nSteps: 20, Sampler: DPM adaptive, Schedule type: Beta, CFG scale: 7",
    ));
    assert_eq!(
        (s.sampler, s.schedule),
        (Sampler::Ddim, ScheduleType::Automatic)
    );
    assert_eq!(
        warnings,
        [
            "ignored Sampler: \"DPM adaptive\"",
            "ignored Schedule type: \"Beta\""
        ]
    );
}

/// The ControlNet unit in the infotext and the recipe.
mod controlnet;
