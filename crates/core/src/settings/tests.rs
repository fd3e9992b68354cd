use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
}

fn parse(args: &[&str]) -> Settings {
    let cli = Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut settings = Settings::default();
    cli.settings.apply(&mut settings);
    settings
}

#[test]
fn defaults_match_the_spec_and_are_valid() {
    let s = Settings::default();
    assert_eq!((s.loops, s.steps, s.seed), (4, 30, -1));
    assert_eq!((s.max_width, s.max_height), (1024, 1024));
    assert_eq!((s.denoise, s.cfg, s.scale), (0.35, 7.0, 2.0));
    assert_eq!(s.sampler, Sampler::Ddim);
    assert_eq!(s.resize_mode, ResizeMode::CropAndResize);
    s.validate().unwrap();
}

#[test]
fn every_field_has_metadata_and_a_flag() {
    let json = serde_json::to_value(Settings::default()).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), FIELDS.len());
    for field in FIELDS {
        assert!(
            json.get(field.key).is_some(),
            "{} not in Settings",
            field.key
        );
        assert!(!field.help.trim().is_empty(), "{} has no help", field.key);
        assert_eq!(field.flag, field.key.replace('_', "-"));
    }
}

#[test]
fn validation_names_field_value_and_range() {
    let s = Settings {
        loops: 40,
        ..Settings::default()
    };
    let msg = s.validate().unwrap_err().to_string();
    assert_eq!(msg, "invalid setting loops = 40: must be between 1 and 32");

    let s = Settings {
        denoise: 1.5,
        ..Settings::default()
    };
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("denoise = 1.5")
    );

    let s = Settings {
        start_size: Some(Size::new(500, 512)),
        ..Settings::default()
    };
    let msg = s.validate().unwrap_err().to_string();
    assert!(
        msg.contains("start_size = 500x512") && msg.contains("multiple of 8"),
        "{msg}"
    );

    let s = Settings {
        seed: MAX_SEED + 1,
        ..Settings::default()
    };
    assert!(s.validate().is_err());
}

#[test]
fn flags_override_and_imply_target_mode() {
    let s = parse(&[
        "--loops",
        "6",
        "--curve",
        "ease-in-out-cubic",
        "--seed",
        "-1",
        "--scale",
        "1.5",
    ]);
    assert_eq!(s.loops, 6);
    assert_eq!(s.curve, Curve::EaseInOutCubic);
    assert_eq!(s.seed, -1);
    assert_eq!(s.target_mode, TargetMode::Scale);
    assert_eq!(s.scale, 1.5);

    let s = parse(&[
        "--scale",
        "1.5",
        "--target-mode",
        "max-size",
        "--contour",
        "--color-correction=false",
    ]);
    assert_eq!(s.target_mode, TargetMode::MaxSize);
    assert!(s.contour);
    assert!(!s.color_correction);

    let s = parse(&[
        "--start-size",
        "512x768",
        "--sampler",
        "euler-a",
        "--blur",
        "high",
    ]);
    assert_eq!(s.start_size, Some(Size::new(512, 768)));
    assert_eq!(s.sampler, Sampler::EulerA);
    assert_eq!(s.blur, FilterLevel::High);
}

#[test]
fn settings_file_fills_defaults_and_rejects_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    std::fs::write(
        &path,
        r#"{"loops": 8, "curve": "adaptive", "start_size": {"width": 512, "height": 768}}"#,
    )
    .unwrap();
    let s = Settings::from_json_file(&path).unwrap();
    assert_eq!(s.loops, 8);
    assert_eq!(s.curve, Curve::Adaptive);
    assert_eq!(s.steps, 30);

    std::fs::write(&path, r#"{"loopz": 8}"#).unwrap();
    let msg = Settings::from_json_file(&path).unwrap_err().to_string();
    assert!(msg.contains("s.json") && msg.contains("loopz"), "{msg}");

    std::fs::write(&path, r#"{"loops": 99}"#).unwrap();
    let msg = Settings::from_json_file(&path).unwrap_err().to_string();
    assert!(msg.contains("loops = 99"), "{msg}");
}

#[test]
fn json_round_trip() {
    let s = Settings {
        prompt: "a cat, 4k".into(),
        seed: 42,
        ..Settings::default()
    };
    let back: Settings = serde_json::from_str(&s.to_json_pretty()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn the_finishing_settings_come_from_the_table() {
    let identity = Settings::default().finishing();
    assert_eq!(identity, Finishing::default());
    assert!(identity.is_identity());
    let finish: Vec<&str> = FIELDS
        .iter()
        .filter(|f| f.group == Group::Finish)
        .map(|f| f.key)
        .collect();
    assert_eq!(
        finish,
        [
            "detail",
            "smooth",
            "blur",
            "contour",
            "sharpness",
            "brightness",
            "color",
            "contrast"
        ]
    );
    let json = serde_json::to_value(identity).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = finish.clone();
    sorted.sort_unstable();
    keys.sort_unstable();
    assert_eq!(keys, sorted);

    let changed = Finishing {
        blur: FilterLevel::Medium,
        color: 1.5,
        contour: true,
        ..identity
    };
    let mut s = Settings::default();
    s.set_finishing(&changed);
    assert_eq!(s.finishing(), changed);
    assert_eq!(
        s,
        Settings {
            blur: FilterLevel::Medium,
            color: 1.5,
            contour: true,
            ..Settings::default()
        }
    );
}

#[test]
fn the_finishing_settings_have_their_infotext_keys_in_order() {
    let keys: Vec<&str> = FINISHING_INFOTEXT.iter().map(|f| f.key).collect();
    assert_eq!(
        keys,
        [
            "Add Detail",
            "Add Blur",
            "Smoothing",
            "Contour",
            "Sharpness",
            "Brightness",
            "Color Strength",
            "Contrast"
        ]
    );
    let f = Finishing {
        detail: FilterLevel::High,
        contour: true,
        sharpness: 0.5,
        ..Finishing::default()
    };
    let pairs = f.infotext_pairs();
    assert_eq!(pairs[0], ("Add Detail", "High".to_string()));
    assert_eq!(pairs[3], ("Contour", "True".to_string()));
    assert_eq!(pairs[4], ("Sharpness", "0.5".to_string()));
    assert_eq!(pairs[7], ("Contrast", "1.0".to_string()));
    let mut back = Finishing::default();
    for (field, (_, text)) in FINISHING_INFOTEXT.iter().zip(&pairs) {
        assert!((field.read)(&mut back, text), "{}", field.key);
    }
    assert_eq!(back, f);
    let mut unchanged = f;
    assert!(!(FINISHING_INFOTEXT[0].read)(&mut unchanged, "Max"));
    assert_eq!(unchanged, f);
    let kinds: Vec<ValueKind> = FINISHING_INFOTEXT.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds[..4],
        [
            ValueKind::Choice,
            ValueKind::Choice,
            ValueKind::Choice,
            ValueKind::Toggle
        ]
    );
    assert!(kinds[4..].iter().all(|k| *k == ValueKind::Number));
}

#[test]
fn lcm_outside_its_steps_and_cfg_is_a_warning() {
    let mut s = Settings {
        prompt: "a cat".into(),
        sampler: Sampler::Lcm,
        steps: 6,
        cfg: 1.5,
        ..Settings::default()
    };
    assert!(s.warnings().is_empty());
    s.cfg = 7.0;
    assert_eq!(s.warnings().len(), 1);
    assert!(s.warnings()[0].contains("LCM is made for 4-8 steps"));
}
