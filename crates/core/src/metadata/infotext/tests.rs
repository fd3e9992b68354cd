use super::*;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const BASIC: &str = "masterpiece, best quality, 1girl\n\
    Negative prompt: lowres, bad anatomy\n\
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234567890, \
    Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, \
    Denoising strength: 0.35, Version: v1.10.1";

#[test]
fn parses_a_typical_infotext() {
    let info = Infotext::parse(BASIC);
    assert_eq!(info.prompt, "masterpiece, best quality, 1girl");
    assert_eq!(info.negative_prompt, "lowres, bad anatomy");
    assert_eq!(info.params.len(), 10);
    assert_eq!(info.get("Sampler"), Some("DPM++ 2M"));
    assert_eq!(info.get("Model hash"), Some("6ce0161689"));
    assert_eq!(info.get("Version"), Some("v1.10.1"));
    assert_eq!(info.get("Size"), Some("512x768"));
    assert_eq!(info.size("Size"), Some((512, 768)));
    assert_eq!(info.size("Seed"), None);
    assert_eq!(info.get("Missing"), None);
    assert_eq!(info.to_text(), BASIC);
}

#[test]
fn fields_split_sizes_like_a1111() {
    let info = Infotext::parse("p\nSteps: 20, Size: 512x768, Seed: 1");
    let fields = info.fields();
    assert_eq!(
        fields,
        pairs(&[
            ("Prompt", "p"),
            ("Negative prompt", ""),
            ("Steps", "20"),
            ("Size-1", "512"),
            ("Size-2", "768"),
            ("Seed", "1"),
        ])
    );
}

#[test]
fn multi_line_prompts_and_negative_prompts() {
    let text = "a castle,\nsunset\n\nwide shot\nNegative prompt: blurry,\nwatermark\n\
                Steps: 20, Seed: 1, CFG scale: 7";
    let info = Infotext::parse(text);
    assert_eq!(info.prompt, "a castle,\nsunset\n\nwide shot");
    assert_eq!(info.negative_prompt, "blurry,\nwatermark");
    assert_eq!(info.to_text(), text);
}

#[test]
fn emphasis_and_lora_tags_stay_in_the_prompt() {
    let prompt = "(masterpiece:1.2), 1girl, <lora:add_detail:0.8>, [a:b:0.5]";
    let text = format!("{prompt}\nSteps: 30, Sampler: Euler a, CFG scale: 5.5");
    let info = Infotext::parse(&text);
    assert_eq!(info.prompt, prompt);
    assert_eq!(info.negative_prompt, "");
    assert_eq!(info.get("CFG scale"), Some("5.5"));
}

#[test]
fn quoted_values_with_commas_and_colons() {
    let info = Infotext {
        prompt: "p".into(),
        negative_prompt: String::new(),
        params: pairs(&[
            ("Steps", "20"),
            ("Lora hashes", "name: abc123, other: def456"),
            ("Hires prompt", "line one\nline \"two\""),
            ("Seed", "1"),
        ]),
    };
    let text = info.to_text();
    assert_eq!(
        text,
        "p\nSteps: 20, Lora hashes: \"name: abc123, other: def456\", \
         Hires prompt: \"line one\\nline \\\"two\\\"\", Seed: 1"
    );
    assert_eq!(Infotext::parse(&text), info);
}

#[test]
fn escaped_quotes_inside_quoted_values() {
    let info = Infotext::parse(
        r#"x
Steps: 20, Wildcard: "say \"hi\", friend", Seed: 3"#,
    );
    assert_eq!(info.get("Wildcard"), Some("say \"hi\", friend"));
    assert_eq!(info.get("Seed"), Some("3"));
}

#[test]
fn a_short_last_line_belongs_to_the_prompt() {
    let info = Infotext::parse("a tree\nSteps: 20, Seed: 5");
    assert_eq!(info.prompt, "a tree\nSteps: 20, Seed: 5");
    assert!(info.params.is_empty());
    let colons = Infotext::parse("a photo, style: realism, lighting: soft");
    assert_eq!(colons.prompt, "a photo, style: realism, lighting: soft");
    assert!(colons.params.is_empty());
}

#[test]
fn unicode_prompts_and_keys() {
    let text = "桜の木の下の少女, 🌸, café\nNegative prompt: 低品質\n\
                Steps: 20, Größe: 5, 模型: 动漫, User: José";
    let info = Infotext::parse(text);
    assert_eq!(info.prompt, "桜の木の下の少女, 🌸, café");
    assert_eq!(info.negative_prompt, "低品質");
    assert_eq!(info.get("Größe"), Some("5"));
    assert_eq!(info.get("模型"), Some("动漫"));
    assert_eq!(info.to_text(), text);
}

#[test]
fn empty_negative_prompt_is_left_out() {
    let info = Infotext {
        prompt: "a cat".into(),
        negative_prompt: String::new(),
        params: pairs(&[("Steps", "20"), ("Seed", "1"), ("CFG scale", "7")]),
    };
    assert_eq!(info.to_text(), "a cat\nSteps: 20, Seed: 1, CFG scale: 7");
    assert_eq!(Infotext::parse(&info.to_text()), info);
}

#[test]
fn writer_quirks() {
    let info = Infotext {
        prompt: "  p ".into(),
        negative_prompt: String::new(),
        params: pairs(&[
            ("Hires fix", "Hires fix"),
            ("Model", "C:\\m\\x"),
            ("Ctl", "\u{1}:"),
        ]),
    };
    assert_eq!(
        info.to_text(),
        "p \nHires fix, Model: \"C:\\\\m\\\\x\", Ctl: \"\\u0001:\""
    );
    let empty = Infotext {
        prompt: "only".into(),
        ..Infotext::default()
    };
    assert_eq!(empty.to_text(), "only");
}

#[test]
fn reader_quirks() {
    // Empty values are dropped; raw quotes that are not JSON stay as they are.
    let info = Infotext::parse("x\nSteps: 20, Empty: , Bad: \"\\q\", Seed: 1");
    assert_eq!(
        info.params,
        pairs(&[("Steps", "20"), ("Bad", "\"\\q\""), ("Seed", "1")])
    );
    // Keys with spaces, dashes and slashes; values keep inner and trailing spaces.
    let info = Infotext::parse("x\nHires upscale/ratio: 1.5, ratio-hr: 0.3, A b: c d , z");
    assert_eq!(
        info.params,
        pairs(&[
            ("Hires upscale/ratio", "1.5"),
            ("ratio-hr", "0.3"),
            ("A b", "c d ")
        ])
    );
    // Duplicate keys: `get` gives the last, `fields` keeps the first position.
    let info = Infotext::parse("x\nSteps: 20, Seed: 1, Steps: 30");
    assert_eq!(info.get("Steps"), Some("30"));
    assert_eq!(info.fields()[2], ("Steps".into(), "30".into()));
    // CRLF endings and surrounding whitespace.
    let info =
        Infotext::parse("\r\n a \r\nNegative prompt:b\r\nSteps: 1, Seed: 2, CFG scale: 3\r\n");
    assert_eq!(
        (info.prompt.as_str(), info.negative_prompt.as_str()),
        ("a", "b")
    );
    assert_eq!(info.get("CFG scale"), Some("3"));
}

#[test]
fn empty_text() {
    assert_eq!(Infotext::parse(""), Infotext::default());
    assert_eq!(Infotext::parse(" \n\t"), Infotext::default());
}

#[test]
fn size_rejects_non_sizes() {
    let info = Infotext::parse("x\nAa: 512x, Bb: x5, Cc: 1x2x3, Dd: 99999999999x1, Ee: 3x4");
    for key in ["Aa", "Bb", "Cc", "Dd"] {
        assert_eq!(info.size(key), None, "{key}");
    }
    assert_eq!(info.size("Ee"), Some((3, 4)));
}
