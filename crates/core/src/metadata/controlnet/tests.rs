use super::*;

fn fields(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn unit_text_as_the_extension_writes_it() {
    let mut s = Settings {
        control_weight: 0.8,
        control_preprocess: ControlPreprocess::TileResample,
        ..Settings::default()
    };
    let record = ControlNetRecord {
        name: "control_v11f1e_sd15_tile".into(),
        hash: Some("a371b31b".into()),
    };
    assert_eq!(
        unit_text(&s, &record),
        "Module: tile_resample, Model: control_v11f1e_sd15_tile [a371b31b], Weight: 0.8, \
         Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 1.0, Threshold B: 0.5, \
         Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"
    );
    // No preprocessor: the hidden sliders at the extension's defaults; no hash: the name.
    s.control_preprocess = ControlPreprocess::None;
    s.control_mode = ControlMode::ControlNet;
    s.resize_mode = ResizeMode::ResizeAndFill;
    s.control_end = 0.65;
    let record = ControlNetRecord {
        name: "tile, v1: fp16".into(),
        hash: None,
    };
    assert_eq!(
        unit_text(&s, &record),
        "Module: none, Model: tile v1 fp16, Weight: 0.8, Resize Mode: Resize and Fill, \
         Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, \
         Guidance End: 0.65, Pixel Perfect: False, Control Mode: ControlNet is more important"
    );
}

#[test]
fn unit_fields_split_at_comma_space() {
    assert_eq!(
        parse_unit("Module: none, Model: my model [v2] [0123abcd], Weight: 1"),
        fields(&[
            ("Module", "none"),
            ("Model", "my model [v2] [0123abcd]"),
            ("Weight", "1"),
        ])
    );
    // A piece without `: ` continues the value before it.
    assert_eq!(
        parse_unit("Model: tile, fp16 [0123abcd], Weight: 0.5"),
        fields(&[("Model", "tile, fp16 [0123abcd]"), ("Weight", "0.5")])
    );
    assert_eq!(parse_unit("not a unit, Weight: 1"), None);
    assert_eq!(parse_unit(""), Some(Vec::new()));
}

#[test]
fn model_names_lose_their_hash() {
    assert_eq!(
        model_name("control_v11f1e_sd15_tile [a371b31b]"),
        Some("control_v11f1e_sd15_tile")
    );
    assert_eq!(
        model_name("control_v11f1e_sd15_tile"),
        Some("control_v11f1e_sd15_tile")
    );
    assert_eq!(model_name("tile [v2]"), Some("tile [v2]"));
    assert_eq!(model_name("my tile [v2] [3b860298]"), Some("my tile [v2]"));
    assert_eq!(model_name("None"), None);
    assert_eq!(model_name(" "), None);
}

#[test]
fn unit_keys_new_and_old() {
    assert_eq!(unit_key("ControlNet 0"), Some(UnitKey::Whole(0)));
    assert_eq!(unit_key("ControlNet 12"), Some(UnitKey::Whole(12)));
    assert_eq!(
        unit_key("ControlNet Guidance Start"),
        Some(UnitKey::Field {
            index: 0,
            numbered: false,
            field: "Guidance Start"
        })
    );
    assert_eq!(
        unit_key("ControlNet-1 Module"),
        Some(UnitKey::Field {
            index: 1,
            numbered: true,
            field: "Module"
        })
    );
    for other in [
        "ControlNet",
        "ControlNet-x Module",
        "ControlNetX 0",
        "Model",
        "Steps",
    ] {
        assert_eq!(unit_key(other), None, "{other}");
    }
}

#[test]
fn control_modes_by_label_or_number() {
    for (text, mode) in [
        ("Balanced", ControlMode::Balanced),
        ("0", ControlMode::Balanced),
        ("My prompt is more important", ControlMode::Prompt),
        ("1", ControlMode::Prompt),
        ("ControlNet is more important", ControlMode::ControlNet),
        ("2", ControlMode::ControlNet),
    ] {
        assert_eq!(control_mode(text), Some(mode), "{text}");
    }
    assert_eq!(control_mode("3"), None);
    assert_eq!(control_mode("ControlMode.BALANCED"), None);
}
