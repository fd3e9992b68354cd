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

/// The sample recipe with ControlNet Tile at weight 0.8.
fn controlnet_recipe() -> Recipe {
    let mut recipe = sample_recipe();
    recipe.settings.controlnet = "control_v11f1e_sd15_tile".into();
    recipe.settings.control_weight = 0.8;
    recipe.settings.control_preprocess = ControlPreprocess::TileResample;
    recipe.controlnet = Some(ControlNetRecord {
        name: "control_v11f1e_sd15_tile".into(),
        hash: Some("a371b31b".into()),
    });
    recipe
}

#[test]
fn controlnet_unit_written_where_a1111_puts_it() {
    let mut recipe = controlnet_recipe();
    recipe.settings.clip_skip = 2;
    recipe.loras = vec![lora("detail", 1.0, "ba9876543210")];
    let text = recipe.to_infotext().to_text();
    assert!(
        text.contains(
            "Denoising strength: 0.35, Clip skip: 2, ControlNet 0: \"Module: tile_resample, \
             Model: control_v11f1e_sd15_tile [a371b31b], Weight: 0.8, Resize Mode: Crop and Resize, \
             Processor Res: 512, Threshold A: 1.0, Threshold B: 0.5, Guidance Start: 0.0, \
             Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced\", \
             Lora hashes: \"detail: ba9876543210\", Denoising strength change factor: 0.95, "
        ),
        "{text}"
    );
    // A1111's parser keeps the quoted unit as one value.
    let info = Infotext::parse(&text);
    assert_eq!(
        info.get("ControlNet 0"),
        recipe.controlnet_unit().as_deref()
    );
    assert_eq!(info.get("Lora hashes"), Some("detail: ba9876543210"));

    // Without a record, or with the setting empty, no unit.
    let mut without = controlnet_recipe();
    without.controlnet = None;
    assert!(!without.to_infotext().to_text().contains("ControlNet"));
    let mut without = controlnet_recipe();
    without.settings.controlnet.clear();
    assert_eq!(without.controlnet_unit(), None);
}

#[test]
fn controlnet_settings_round_trip_through_the_infotext() {
    let modes = [
        ControlMode::Balanced,
        ControlMode::Prompt,
        ControlMode::ControlNet,
    ];
    let preprocessors = [ControlPreprocess::None, ControlPreprocess::TileResample];
    for mode in modes {
        for preprocess in preprocessors {
            let mut recipe = controlnet_recipe();
            recipe.controlnet = Some(ControlNetRecord {
                name: "control_v11f1e_sd15_tile".into(),
                hash: None,
            });
            let s = &mut recipe.settings;
            (s.control_mode, s.control_preprocess) = (mode, preprocess);
            (s.control_weight, s.control_start, s.control_end) = (1.35, 0.05, 0.85);
            if preprocess == ControlPreprocess::TileResample {
                s.control_resample_rate = 2.5;
            }
            let text = recipe.to_infotext().to_text();
            let (back, warnings) = settings_from_infotext(&Infotext::parse(&text));
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(
                back,
                Settings {
                    seed: 1234,
                    ..recipe.settings.clone()
                },
                "{text}"
            );
        }
    }
}

#[test]
fn controlnet_record_round_trips_through_the_recipe_json() {
    let recipe = controlnet_recipe();
    let json = recipe.to_json();
    assert_eq!(Recipe::from_json(&json).unwrap(), recipe);
    let (settings, warnings) = settings_from_texts(&recipe.png_texts()).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(settings.controlnet, "control_v11f1e_sd15_tile");
    // Recipes without it (earlier versions, runs without a ControlNet) still read.
    let plain = sample_recipe().to_json();
    let value: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert!(value.get("controlnet").is_none(), "{plain}");
    assert_eq!(Recipe::from_json(&plain).unwrap().controlnet, None);
}

/// The ControlNet settings of `s`: model, weight, start, end, mode, preprocessor, rate.
fn control_of(s: &Settings) -> (&str, f64, f64, f64, ControlMode, ControlPreprocess, f64) {
    (
        s.controlnet.as_str(),
        s.control_weight,
        s.control_start,
        s.control_end,
        s.control_mode,
        s.control_preprocess,
        s.control_resample_rate,
    )
}

/// An infotext and what [`read_tile`] must read from it: warnings, model, (weight, start,
/// end) and mode.
type TileCase<'a> = (
    &'a str,
    &'a [&'a str],
    &'a str,
    (f64, f64, f64),
    ControlMode,
);

/// The settings of an infotext that must read with the warnings `expected` and give
/// tile_resample at rate 1 with `model`, (`weight`, `start`, `end`) and `mode`.
fn read_tile(
    text: &str,
    expected: &[&str],
    model: &str,
    numbers: (f64, f64, f64),
    mode: ControlMode,
) -> Settings {
    let (s, warnings) = settings_from_infotext(&Infotext::parse(text));
    assert_eq!(warnings, expected);
    let tile = ControlPreprocess::TileResample;
    let (weight, start, end) = numbers;
    assert_eq!(
        control_of(&s),
        (model, weight, start, end, mode, tile, 1.0),
        "{text}"
    );
    s
}

/// A1111 v1.9.4 with the extension's current unit text (a real file's infotext).
const CONTROLNET_CURRENT: &str = "masterpiece, best quality, 1girl, detailed background\n\
    Steps: 30, Sampler: UniPC, Schedule type: Karras, CFG scale: 7, Seed: 3620085674, \
    Size: 1024x1536, Model hash: 3d1b3c42ec, Model: AWPainting_v1.2, ControlNet 0: \"Module: \
    tile_resample, Model: control_v11f1e_sd15_tile_fp16 [3b860298], Weight: 0.6, Resize Mode: \
    Crop and Resize, Processor Res: 512, Threshold A: 1.0, Threshold B: 0.5, Guidance Start: \
    0.0, Guidance End: 1.0, Pixel Perfect: True, Control Mode: Balanced\", TI hashes: \
    \"ng_deepnegative_v1_75t: 54e7e4826d53\", Pad conds: True, Version: v1.9.4";

/// Written through the API: numeric modes, no hash, more fields (the keys around the unit
/// shortened).
const CONTROLNET_API: &str = "a castle on a hill\n\
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 1024x1024, \
    Denoising strength: 0.35, ControlNet 0: \"Module: tile_resample, Model: \
    control_v11f1e_sd15_tile, Weight: 0.6, Resize Mode: 1, Low Vram: False, Processor Res: \
    512, Threshold A: 1, Threshold B: 1, Guidance Start: 0.0, Guidance End: 1.0, Pixel \
    Perfect: True, Control Mode: 1, Hr Option: HiResFixOption.BOTH, Save Detected Map: \
    False\", Version: v1.7.0";

/// Two units (the keys around them shortened).
const CONTROLNET_TWO_UNITS: &str = "a forest\n\
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 2, Size: 1024x1024, ControlNet 0: \
    \"Module: tile_resample, Model: control_v11f1e_sd15_tile [a371b31b], Weight: 0.4, Resize \
    Mode: Crop and Resize, Low Vram: False, Threshold A: 1, Guidance Start: 0, Guidance End: \
    1, Pixel Perfect: True, Control Mode: Balanced\", ControlNet 1: \"Module: \
    softedge_pidinet, Model: control_v11p_sd15_softedge [a8575a2a], Weight: 1, Resize Mode: \
    Crop and Resize, Low Vram: False, Processor Res: 512, Guidance Start: 0, Guidance End: 1, \
    Pixel Perfect: False, Control Mode: Balanced\", Version: v1.6.0";

#[test]
fn real_controlnet_infotexts() {
    // A1111's parser keeps each quoted unit as one value.
    let info = Infotext::parse(CONTROLNET_CURRENT);
    assert_eq!(info.params.len(), 12);
    assert_eq!(
        info.get("ControlNet 0"),
        Some(
            "Module: tile_resample, Model: control_v11f1e_sd15_tile_fp16 [3b860298], Weight: 0.6, \
             Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 1.0, Threshold B: 0.5, \
             Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: True, Control Mode: Balanced"
        )
    );
    let two = Infotext::parse(CONTROLNET_TWO_UNITS);
    assert!(
        two.get("ControlNet 1")
            .is_some_and(|u| u.starts_with("Module: softedge_pidinet"))
    );
    let tile = "control_v11f1e_sd15_tile";
    let cases: [TileCase; 3] = [
        (
            CONTROLNET_CURRENT,
            &[],
            "control_v11f1e_sd15_tile_fp16",
            (0.6, 0.0, 1.0),
            ControlMode::Balanced,
        ),
        (
            CONTROLNET_API,
            &[],
            tile,
            (0.6, 0.0, 1.0),
            ControlMode::Prompt,
        ),
        (
            CONTROLNET_TWO_UNITS,
            &["ignored ControlNet 1: only one ControlNet unit is used"],
            tile,
            (0.4, 0.0, 1.0),
            ControlMode::Balanced,
        ),
    ];
    let read = cases.map(|(text, warnings, model, numbers, mode)| {
        read_tile(text, warnings, model, numbers, mode)
    });
    // The keys around the unit are read as before.
    assert!(read[0].pad_conds);
    assert_eq!(read[1].denoise, 0.35);
}

#[test]
fn controlnet_values_that_cannot_be_used() {
    let unit = |body: &str| format!("p\nSteps: 20, CFG scale: 7, ControlNet 0: \"{body}\"");
    let read = |text: String| settings_from_infotext(&Infotext::parse(&text));
    // Another preprocessor: the model and weights kept, the module reported.
    let (s, warnings) = read(unit(
        "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.7, \
         Threshold A: 100, Threshold B: 200, Guidance Start: 0.1, Guidance End: 0.9, \
         Control Mode: 2",
    ));
    assert_eq!(
        warnings,
        ["ignored ControlNet 0 Module: \"canny\" (only none and tile_resample)"]
    );
    assert_eq!(
        control_of(&s),
        (
            "control_v11p_sd15_canny",
            0.7,
            0.1,
            0.9,
            ControlMode::ControlNet,
            ControlPreprocess::None,
            1.0
        )
    );
    // Out of range or not numbers: reported, the defaults kept.
    read_tile(
        &unit(
            "Module: tile_resample, Model: tile, Weight: 2.5, Threshold A: 9, \
             Guidance Start: soon, Guidance End: 1, Control Mode: Prompt first",
        ),
        &[
            "ignored ControlNet 0 Weight: \"2.5\"",
            "ignored ControlNet 0 Guidance Start: \"soon\"",
            "ignored ControlNet 0 Control Mode: \"Prompt first\"",
            "ignored ControlNet 0 Threshold A: \"9\"",
        ],
        "tile",
        (1.0, 0.0, 1.0),
        ControlMode::Balanced,
    );
    // No model: the unit is ignored.
    let (s, warnings) = read(unit("Module: none, Model: None, Weight: 0.5"));
    assert_eq!(
        warnings,
        ["ignored ControlNet 0 Model: \"None\" (no model)"]
    );
    assert_eq!((s.controlnet.as_str(), s.control_weight), ("", 1.0));
    // Only unit 2: taken.
    let text =
        "p\nSteps: 20, CFG scale: 7, ControlNet 2: \"Module: none, Model: tile, Weight: 0.5\"";
    let (s, warnings) = read(text.into());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!((s.controlnet.as_str(), s.control_weight), ("tile", 0.5));
}

#[test]
fn old_separate_controlnet_keys() {
    let text = "a room\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 512x512, \
        Denoising strength: 0.7, ControlNet Enabled: True, ControlNet Module: tile_resample, \
        ControlNet Model: control_v11f1e_sd15_tile [a371b31b], ControlNet Weight: 0.55, \
        ControlNet Guidance Start: 0.1, ControlNet Guidance End: 0.8";
    read_tile(
        text,
        &[],
        "control_v11f1e_sd15_tile",
        (0.55, 0.1, 0.8),
        ControlMode::Balanced,
    );
    // Several old units: `ControlNet-N` keys, in any order; unit 0 taken.
    let text = "p\nSteps: 20, CFG scale: 7, ControlNet-1 Module: depth, ControlNet-1 Model: \
        control_depth-fp16 [400750f6], ControlNet-0 Model: control_canny-fp16 [e3fe7712], \
        ControlNet-0 Module: none, ControlNet-0 Weight: 0.95, ControlNet-0 Enabled: True";
    let (s, warnings) = settings_from_infotext(&Infotext::parse(text));
    assert_eq!(
        warnings,
        ["ignored ControlNet-1: only one ControlNet unit is used"]
    );
    assert_eq!(
        (
            s.controlnet.as_str(),
            s.control_weight,
            s.control_preprocess
        ),
        ("control_canny-fp16", 0.95, ControlPreprocess::None)
    );
}
