//! The metadata module against A1111's own code and Pillow, both directions.
//!
//! Fixtures come from `tools/fixtures/metadata.py` (a port of A1111 v1.10's infotext code, and
//! Pillow): `cases.json` (infotexts written and parsed by Python), `fuzz.json` (seeded random
//! parameter lines parsed by Python's `re`) and `from_python/*.png`. The
//! PNGs under `from_rust/` were written by this test's `encode_png` with
//! `LOOPBACK_WRITE_FIXTURES=1 cargo test -p loopback-core --test core metadata`; the Python script checks them with
//! Pillow, and this test checks that they still decode to what `from_rust/expected.json` says.

use crate::common;

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, Rgb, Rgba};
use loopback_core::Error;
use loopback_core::metadata::infotext::{Infotext, py_float};
use loopback_core::metadata::png_text::{encode_png, read_png_texts, read_png_texts_from_path};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures/metadata")
}

fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

fn pairs_of(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|p| (str_of(&p[0]), str_of(&p[1])))
        .collect()
}

fn pairs_json(pairs: &[(String, String)]) -> Value {
    Value::Array(pairs.iter().map(|(k, v)| json!([k, v])).collect())
}

fn cases() -> Value {
    load_json(&fixtures().join("cases.json"))
}

/// Checks Rust's parse of `text` against Python's expectation; returns the parsed infotext.
fn check_parse(name: &str, text: &str, parsed: &Value) -> Infotext {
    let info = Infotext::parse(text);
    assert_eq!(info.prompt, str_of(&parsed["prompt"]), "{name}: prompt");
    assert_eq!(
        info.negative_prompt,
        str_of(&parsed["negative_prompt"]),
        "{name}: negative prompt"
    );
    assert_eq!(info.params, pairs_of(&parsed["params"]), "{name}: params");
    assert_eq!(info.fields(), pairs_of(&parsed["fields"]), "{name}: fields");
    info
}

#[test]
fn writes_infotexts_like_a1111() {
    let cases = cases();
    let write = cases["write"].as_array().expect("write cases");
    assert!(write.len() >= 10, "too few write cases: {}", write.len());
    for case in write {
        let name = str_of(&case["name"]);
        let info = Infotext {
            prompt: str_of(&case["prompt"]),
            negative_prompt: str_of(&case["negative_prompt"]),
            params: pairs_of(&case["params"]),
        };
        let text = str_of(&case["text"]);
        assert_eq!(info.to_text(), text, "{name}: written text");
        check_parse(&name, &text, &case["parsed"]);
    }
}

#[test]
fn parses_infotexts_like_a1111() {
    let cases = cases();
    let parse = cases["parse"].as_array().expect("parse cases");
    assert!(parse.len() >= 10, "too few parse cases: {}", parse.len());
    for case in parse {
        let name = str_of(&case["name"]);
        check_parse(&name, &str_of(&case["text"]), &case["parsed"]);
    }
}

#[test]
fn parses_random_lines_like_pythons_re() {
    let fuzz = load_json(&fixtures().join("fuzz.json"));
    let cases = fuzz.as_array().expect("fuzz cases");
    assert!(cases.len() >= 300, "too few fuzz cases: {}", cases.len());
    let mut with_params = 0;
    for case in cases {
        let text = str_of(&case[0]);
        let info = Infotext::parse(&text);
        let want = (str_of(&case[1]), str_of(&case[2]), pairs_of(&case[3]));
        assert_eq!(
            (info.prompt, info.negative_prompt, info.params),
            want,
            "{text:?}"
        );
        with_params += usize::from(!want.2.is_empty());
    }
    assert!(
        with_params >= 100,
        "only {with_params} fuzz cases with parameters"
    );
}

#[test]
fn parsed_infotexts_write_back_to_a_text_that_parses_the_same() {
    let cases = cases();
    let all = cases["write"].as_array().into_iter().flatten();
    let all = all.chain(cases["parse"].as_array().into_iter().flatten());
    let mut count = 0;
    for case in all {
        let first = Infotext::parse(&str_of(&case["text"]));
        let again = Infotext::parse(&first.to_text());
        // The only losses, both A1111's: a value equal to its key is written as the bare key,
        // and an empty value is dropped by the reader.
        let mut expected = first.clone();
        expected.params.retain(|(k, v)| k != v && !v.is_empty());
        if expected.params.len() < 3 {
            continue; // the last line would fall back into the prompt
        }
        assert_eq!(again, expected, "{}", case["name"]);
        count += 1;
    }
    assert!(count >= 15, "only {count} round trips");
}

#[test]
fn formats_floats_like_python_repr() {
    let cases = cases();
    let floats = cases["floats"].as_array().expect("floats");
    assert!(floats.len() >= 20);
    for case in floats {
        let bits = case["bits"].as_u64().expect("bits");
        let value = f64::from_bits(bits);
        assert_eq!(py_float(value), str_of(&case["repr"]), "bits {bits:#x}");
    }
}

#[test]
fn reads_pngs_written_by_pillow() {
    let dir = fixtures().join("from_python");
    let expected = load_json(&dir.join("expected.json"));
    let entries = expected.as_array().expect("entries");
    assert_eq!(entries.len(), 4);
    let mut chunk_types = Vec::new();
    for entry in entries {
        let path = dir.join(str_of(&entry["file"]));
        let want = pairs_of(&entry["texts"]);
        let bytes = std::fs::read(&path).expect("read PNG");
        assert_eq!(read_png_texts(&bytes).expect("texts"), want, "{path:?}");
        assert_eq!(read_png_texts_from_path(&path).expect("texts"), want);
        let parameters = want
            .iter()
            .find(|(k, _)| k == "parameters")
            .expect("parameters");
        check_parse(&str_of(&entry["file"]), &parameters.1, &entry["parameters"]);
        image::load_from_memory(&bytes).expect("image decodes");
        chunk_types.extend(
            entry["chunk_types"]
                .as_array()
                .into_iter()
                .flatten()
                .map(str_of),
        );
    }
    for kind in ["tEXt", "zTXt", "iTXt"] {
        assert!(chunk_types.iter().any(|k| k == kind), "no {kind} fixture");
    }
}

/// The (type, data) of every chunk of a PNG.
fn chunks(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let kind = String::from_utf8_lossy(&bytes[pos + 4..pos + 8]).into_owned();
        out.push((kind, bytes[pos + 8..pos + 8 + len].to_vec()));
        pos += 12 + len;
    }
    out
}

/// The types of the text chunks, checking they sit between IHDR and the first IDAT and that
/// every iTXt is uncompressed with empty language tag and translated keyword.
fn text_chunk_types(bytes: &[u8]) -> Vec<String> {
    let chunks = chunks(bytes);
    assert_eq!(chunks.first().map(|c| c.0.as_str()), Some("IHDR"));
    assert_eq!(chunks.last().map(|c| c.0.as_str()), Some("IEND"));
    let first_idat = chunks.iter().position(|c| c.0 == "IDAT").expect("IDAT");
    let mut types = Vec::new();
    for (i, (kind, data)) in chunks.iter().enumerate() {
        if !["tEXt", "zTXt", "iTXt"].contains(&kind.as_str()) {
            continue;
        }
        assert!(
            0 < i && i < first_idat,
            "{kind} chunk at {i}, IDAT at {first_idat}"
        );
        if kind == "iTXt" {
            let nul = data.iter().position(|&b| b == 0).expect("keyword end");
            assert_eq!(&data[nul..nul + 5], &[0, 0, 0, 0, 0], "iTXt header");
        }
        types.push(kind.clone());
    }
    types
}

/// The pixel pattern of the from_rust PNGs (the Python check recomputes it).
fn pattern(x: u32, y: u32, band: u32) -> u8 {
    ((x * 32 + y * 8 + band * 50) % 256) as u8
}

fn pattern_image(alpha: bool) -> DynamicImage {
    if alpha {
        DynamicImage::ImageRgba8(ImageBuffer::from_fn(8, 8, |x, y| {
            Rgba([0, 1, 2, 3].map(|b| pattern(x, y, b)))
        }))
    } else {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(8, 8, |x, y| {
            Rgb([0, 1, 2].map(|b| pattern(x, y, b)))
        }))
    }
}

/// A realistic infotext as the app would write it.
fn app_infotext(prompt: &str, negative: &str) -> Infotext {
    let params: Vec<(String, String)> = [
        ("Steps", "20".to_owned()),
        ("Sampler", "DPM++ 2M".to_owned()),
        ("Schedule type", "Karras".to_owned()),
        ("CFG scale", py_float(7.0)),
        ("Seed", "1234567890".to_owned()),
        ("Size", "1024x1536".to_owned()),
        ("Model hash", "6ce0161689".to_owned()),
        ("Denoising strength", py_float(0.35)),
        (
            "Lora hashes",
            "add_detail: 7c6bad76eb54, badhands: 3b8aa1d351ef".to_owned(),
        ),
        ("Denoising strength change factor", py_float(0.98)),
        ("Dimension increment factor", py_float(1e-5)),
        ("Version", "v1.10.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Infotext {
        prompt: prompt.to_owned(),
        negative_prompt: negative.to_owned(),
        params,
    }
}

const RECIPE: &str = r#"{"app": "loopback-scaler", "loops": 4, "prompt": "桜, café"}"#;

/// The PNGs of from_rust/: file name, alpha, infotext.
fn rust_png_specs() -> Vec<(&'static str, bool, Infotext)> {
    vec![
        (
            "text_latin1.png",
            false,
            app_infotext(
                "a café in Paris, (masterpiece:1.2), <lora:add_detail:0.8>",
                "blurry",
            ),
        ),
        (
            "itxt_unicode.png",
            true,
            app_infotext("桜の木の下の少女,\n🌸 spring", "低品質,\nぼやけた"),
        ),
    ]
}

fn encode_spec(alpha: bool, info: &Infotext) -> (Vec<u8>, Vec<(String, String)>) {
    let text = info.to_text();
    let texts = [("parameters", text.as_str()), ("loopback-scaler", RECIPE)];
    let bytes = encode_png(&pattern_image(alpha), &texts).expect("encode");
    let owned = texts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (bytes, owned)
}

#[test]
fn rust_written_pngs_round_trip() {
    for (name, alpha, info) in rust_png_specs() {
        let (bytes, texts) = encode_spec(alpha, &info);
        assert_eq!(read_png_texts(&bytes).expect("texts"), texts, "{name}");
        let latin1 = texts[0].1.chars().all(|c| (c as u32) < 256);
        let first = if latin1 { "tEXt" } else { "iTXt" };
        assert_eq!(text_chunk_types(&bytes), [first, "iTXt"], "{name}");
        assert_eq!(Infotext::parse(&texts[0].1), info, "{name}");
        let decoded = image::load_from_memory(&bytes).expect("decode");
        assert_eq!(decoded, pattern_image(alpha), "{name}: pixels");
    }
}

#[test]
fn from_rust_fixtures_still_decode() {
    let dir = fixtures().join("from_rust");
    if std::env::var_os("LOOPBACK_WRITE_FIXTURES").is_some() {
        write_from_rust_fixtures(&dir);
    }
    let expected = load_json(&dir.join("expected.json"));
    let entries = expected.as_array().expect("entries");
    let specs = rust_png_specs();
    assert_eq!(entries.len(), specs.len());
    for (entry, (name, alpha, info)) in entries.iter().zip(specs) {
        assert_eq!(str_of(&entry["file"]), name);
        let bytes = std::fs::read(dir.join(name)).expect("read PNG");
        let (fresh, texts) = encode_spec(alpha, &info);
        assert_eq!(
            pairs_of(&entry["texts"]),
            texts,
            "{name}: expected.json is stale"
        );
        assert_eq!(read_png_texts(&bytes).expect("texts"), texts, "{name}");
        assert_eq!(read_png_texts(&fresh).expect("texts"), texts, "{name}");
        let types: Vec<String> = entry["chunk_types"]
            .as_array()
            .into_iter()
            .flatten()
            .map(str_of)
            .collect();
        assert_eq!(text_chunk_types(&bytes), types, "{name}");
        assert_eq!(text_chunk_types(&fresh), types, "{name}");
        let source = &entry["infotext"];
        assert_eq!(str_of(&source["prompt"]), info.prompt);
        assert_eq!(pairs_of(&source["params"]), info.params);
        assert_eq!(
            image::load_from_memory(&bytes).expect("decode"),
            pattern_image(alpha)
        );
    }
}

/// Writes from_rust/*.png and expected.json (run with LOOPBACK_WRITE_FIXTURES=1).
fn write_from_rust_fixtures(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create from_rust");
    let mut listing = Vec::new();
    for (name, alpha, info) in rust_png_specs() {
        let (bytes, texts) = encode_spec(alpha, &info);
        std::fs::write(dir.join(name), &bytes).expect("write PNG");
        listing.push(json!({
            "file": name,
            "mode": if alpha { "RGBA" } else { "RGB" },
            "width": 8,
            "height": 8,
            "texts": pairs_json(&texts),
            "chunk_types": text_chunk_types(&bytes),
            "infotext": {
                "prompt": info.prompt,
                "negative_prompt": info.negative_prompt,
                "params": pairs_json(&info.params),
            },
        }));
    }
    let text = serde_json::to_string_pretty(&Value::Array(listing)).expect("json") + "\n";
    std::fs::write(dir.join("expected.json"), text).expect("write expected.json");
}

#[test]
fn converts_other_colour_types() {
    let gray = DynamicImage::ImageLuma8(ImageBuffer::from_fn(3, 2, |x, y| {
        image::Luma([(x * 40 + y) as u8])
    }));
    let bytes = encode_png(&gray, &[("parameters", "x")]).expect("encode");
    let decoded = image::load_from_memory(&bytes).expect("decode");
    assert_eq!(decoded, DynamicImage::ImageRgb8(gray.to_rgb8()));

    let gray_alpha = DynamicImage::ImageLumaA16(ImageBuffer::from_fn(2, 2, |x, y| {
        image::LumaA([(x * 30000 + y) as u16, 40000])
    }));
    let bytes = encode_png(&gray_alpha, &[]).expect("encode");
    let decoded = image::load_from_memory(&bytes).expect("decode");
    assert_eq!(decoded, DynamicImage::ImageRgba8(gray_alpha.to_rgba8()));
    assert_eq!(read_png_texts(&bytes).expect("texts"), Vec::new());
}

#[test]
fn rejects_bad_keywords_and_images() {
    let img = pattern_image(false);
    for keyword in ["", "ключ", "a\0b", &"k".repeat(80)] {
        let result = encode_png(&img, &[(keyword, "v")]);
        assert!(matches!(result, Err(Error::Metadata(_))), "{keyword:?}");
    }
    let empty = DynamicImage::new_rgb8(0, 0);
    assert!(encode_png(&empty, &[]).is_err());
}

#[test]
fn garbage_input_errors_cleanly() {
    let (good, _) = encode_spec(true, &rust_png_specs()[1].2);
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not a png at all".to_vec(),
        good[..8].to_vec(),
        good[..20].to_vec(),
        good[..good.len() - 6].to_vec(),
    ];
    // A corrupt CRC in the first text chunk (just after IHDR) and a bad IHDR.
    let mut bad_crc = good.clone();
    let text_end = 33 + 8 + u32::from_be_bytes(good[33..37].try_into().expect("len")) as usize;
    bad_crc[text_end] ^= 0xff;
    inputs.push(bad_crc);
    let mut bad_ihdr = good.clone();
    bad_ihdr[16..20].copy_from_slice(&[0, 0, 0, 0]);
    inputs.push(bad_ihdr);
    let mut huge_len = good.clone();
    huge_len[33..37].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    inputs.push(huge_len);
    for (i, bytes) in inputs.iter().enumerate() {
        let result = read_png_texts(bytes);
        assert!(
            matches!(result, Err(Error::Metadata(_))),
            "input {i}: {result:?}"
        );
    }
    // Every truncation and every single-byte corruption: an error or texts, never a panic.
    for n in 0..good.len() {
        let _ = read_png_texts(&good[..n]);
        let mut flipped = good.clone();
        flipped[n] ^= 0x55;
        let _ = read_png_texts(&flipped);
    }
    let missing = fixtures().join("no-such-file.png");
    assert!(matches!(
        read_png_texts_from_path(&missing),
        Err(Error::Input { .. })
    ));
    let not_png = Path::new(common::ROOT).join("Cargo.toml");
    assert!(matches!(
        read_png_texts_from_path(not_png),
        Err(Error::Input { .. })
    ));
}

#[test]
fn reads_text_chunks_after_the_image_data() {
    let (good, mut texts) = encode_spec(false, &rust_png_specs()[0].2);
    // Copy the first text chunk (just after IHDR) to just before IEND.
    let first_len = u32::from_be_bytes(good[33..37].try_into().expect("len")) as usize;
    let first_chunk = good[33..33 + 12 + first_len].to_vec();
    let iend = good.len() - 12;
    let moved = [&good[..iend], &first_chunk, &good[iend..]].concat();
    texts.push(texts[0].clone());
    assert_eq!(read_png_texts(&moved).expect("texts"), texts);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("after.png");
    std::fs::write(&path, &moved).expect("write");
    assert_eq!(read_png_texts_from_path(&path).expect("texts"), texts);
}

#[test]
fn post_records_are_sorted_json() {
    use loopback_core::imageops::finish::Finishing;
    use loopback_core::metadata::post_record;
    use loopback_core::settings::FilterLevel;
    let finishing = Finishing {
        detail: FilterLevel::Low,
        contour: true,
        sharpness: 1.25,
        ..Finishing::default()
    };
    assert_eq!(
        post_record(&finishing, Some(Path::new("refs/ref.png"))),
        r#"{"blur":"none","brightness":1.0,"color":1.0,"contour":true,"contrast":1.0,"detail":"low","match_colors":"ref.png","sharpness":1.25,"smooth":"none"}"#
    );
    // The record as it was written field by field before `Finishing` came from the table.
    let by_hand = json!({
        "sharpness": finishing.sharpness,
        "brightness": finishing.brightness,
        "color": finishing.color,
        "contrast": finishing.contrast,
        "detail": finishing.detail,
        "smooth": finishing.smooth,
        "blur": finishing.blur,
        "contour": finishing.contour,
        "match_colors": "ref.png",
    });
    assert_eq!(
        post_record(&finishing, Some(Path::new("refs/ref.png"))),
        by_hand.to_string()
    );
    assert_eq!(
        post_record(&Finishing::default(), None),
        r#"{"blur":"none","brightness":1.0,"color":1.0,"contour":false,"contrast":1.0,"detail":"none","match_colors":null,"sharpness":1.0,"smooth":"none"}"#
    );
}

/// A PNG that A1111 wrote (`tests/fixtures/a1111/`): its recipe loads whole, UniPC included.
#[test]
fn a_real_a1111_png_gives_its_settings() {
    let path = Path::new(common::ROOT).join("tests/fixtures/a1111/automatic1111_cropped.png");
    let texts = read_png_texts_from_path(&path).unwrap();
    let (s, warnings) = loopback_core::metadata::settings_from_texts(&texts).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        (s.prompt.as_str(), s.negative_prompt.as_str()),
        ("photo of a duck", "monochrome")
    );
    assert_eq!((s.steps, s.cfg, s.seed), (15, 5.0, 235284042));
    assert_eq!(s.sampler, loopback_core::settings::Sampler::UniPc);
}
