use super::*;

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
