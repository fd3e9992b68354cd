//! CLIP tokenizer parity: every prompt of `tests/fixtures/tokenizer/clip_cases.json` (written
//! by `tools/parity/tokenizer.py` with `transformers`' slow `CLIPTokenizer` and ftfy) must give
//! the same ids, padded ids, A1111 chunks and decoded text, with both loaders.

use crate::common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use loopback_engine::conditioning::tokenizer::{CONTEXT_TOKENS, ClipTokenizer};
use serde::Deserialize;

/// The fixture file.
#[derive(Deserialize)]
struct Fixture {
    transformers_version: String,
    cases: Vec<Case>,
}

/// One prompt and what the reference made of it.
#[derive(Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<u32>,
    decoded: String,
    padded_sd1: Vec<u32>,
    padded_sd2: Vec<u32>,
    chunks_sd1: Option<Vec<Vec<u32>>>,
    chunks_sd2: Option<Vec<Vec<u32>>>,
}

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(common::ROOT).join(relative)
}

fn fixture() -> Fixture {
    let path = manifest_path("tests/fixtures/tokenizer/clip_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn bundled() -> ClipTokenizer {
    ClipTokenizer::bundled().expect("bundled tokenizer")
}

fn as_vecs(chunks: &[[u32; CONTEXT_TOKENS]]) -> Vec<Vec<u32>> {
    chunks.iter().map(|c| c.to_vec()).collect()
}

/// Checks every fixture case against `tokenizer`; returns the number of cases.
fn check_all(tokenizer: &ClipTokenizer, label: &str) -> usize {
    let fixture = fixture();
    assert!(!fixture.transformers_version.is_empty());
    let (sd1_pad, sd2_pad) = (tokenizer.eos_id(), 0);
    for case in &fixture.cases {
        let what = format!("{label}: prompt {:?}", case.prompt);
        assert_eq!(tokenizer.encode(&case.prompt), case.ids, "{what}: ids");
        let padded = tokenizer.encode_padded(&case.prompt, sd1_pad);
        assert_eq!(padded.to_vec(), case.padded_sd1, "{what}: SD1 padding");
        let padded = tokenizer.encode_padded(&case.prompt, sd2_pad);
        assert_eq!(padded.to_vec(), case.padded_sd2, "{what}: SD2 padding");
        assert_eq!(tokenizer.decode(&case.ids), case.decoded, "{what}: decode");
        if let Some(chunks) = &case.chunks_sd1 {
            let got = as_vecs(&tokenizer.encode_chunks(&case.prompt, sd1_pad));
            assert_eq!(&got, chunks, "{what}: SD1 chunks");
        }
        if let Some(chunks) = &case.chunks_sd2 {
            let got = as_vecs(&tokenizer.encode_chunks(&case.prompt, sd2_pad));
            assert_eq!(&got, chunks, "{what}: SD2 chunks");
        }
    }
    fixture.cases.len()
}

#[test]
fn bundled_tokenizer_matches_transformers() {
    let cases = check_all(&bundled(), "bundled");
    assert!(cases >= 60, "only {cases} cases");
}

#[test]
fn fixture_covers_chunking() {
    let fixture = fixture();
    let chunked: Vec<&Case> = fixture
        .cases
        .iter()
        .filter(|c| c.chunks_sd1.as_ref().is_some_and(|c| c.len() > 1))
        .collect();
    assert!(
        chunked.len() >= 10,
        "only {} multi-chunk cases",
        chunked.len()
    );
}

#[test]
fn vocab_merges_loader_matches_bundled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (vocab, merges) = write_vocab_files(dir.path());
    let from_files = ClipTokenizer::from_vocab_merges(&vocab, &merges).expect("load files");
    let bundled = bundled();
    assert_eq!(from_files.vocab_size(), 49_408);
    assert_eq!(bundled.vocab_size(), 49_408);
    let cases = check_all(&from_files, "vocab.json/merges.txt");
    assert!(cases >= 60);
}

#[test]
fn standard_ids() {
    let tokenizer = bundled();
    assert_eq!(tokenizer.bos_id(), 49_406);
    assert_eq!(tokenizer.eos_id(), 49_407);
    assert_eq!(tokenizer.token_id("!"), Some(0));
    assert_eq!(tokenizer.token_id(",</w>"), Some(267));
    assert_eq!(tokenizer.token_id("no such token"), None);
}

#[test]
fn empty_prompt_gives_one_chunk() {
    let tokenizer = bundled();
    let chunks = tokenizer.encode_chunks("", 0);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0][..3], [49_406, 49_407, 0]);
    assert!(chunks[0][2..].iter().all(|&id| id == 0));
}

#[test]
fn loader_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.json");
    let err = ClipTokenizer::from_vocab_merges(&missing, &missing).expect_err("missing file");
    assert!(err.to_string().contains("missing.json"), "{err}");

    let bad_json = dir.path().join("vocab.json");
    let merges = dir.path().join("merges.txt");
    std::fs::write(&bad_json, "[1, 2]").expect("write");
    std::fs::write(&merges, "#version: 0.2\na b\n").expect("write");
    let err = ClipTokenizer::from_vocab_merges(&bad_json, &merges).expect_err("bad json");
    assert!(err.to_string().contains("vocab.json"), "{err}");

    std::fs::write(&bad_json, r#"{"a": 0, "b": 1}"#).expect("write");
    let err = ClipTokenizer::from_vocab_merges(&bad_json, &merges).expect_err("no specials");
    assert!(err.to_string().contains("<|startoftext|>"), "{err}");
}

// ------------------------------------------------------------------------------------------
// vocab.json and merges.txt derived from the .gz independently of the library (as in
// tools/parity/tokenizer.py and assets/clip/README.md).

/// Writes vocab.json and merges.txt into `dir`; returns their paths.
fn write_vocab_files(dir: &Path) -> (PathBuf, PathBuf) {
    let gz = std::fs::read(manifest_path(
        "crates/engine/assets/clip/bpe_simple_vocab_16e6.txt.gz",
    ))
    .expect("read gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("gunzip");
    let merges: Vec<&str> = text.split('\n').skip(1).take(48_894).collect();

    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(char::to_string).collect();
    tokens.extend(chars.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    tokens.push("<|startoftext|>".into());
    tokens.push("<|endoftext|>".into());
    let vocab: BTreeMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    assert_eq!(vocab.len(), 49_408);

    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    std::fs::write(&vocab_path, serde_json::to_string(&vocab).expect("json")).expect("write");
    std::fs::write(
        &merges_path,
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .expect("write");
    (vocab_path, merges_path)
}

/// CLIP's byte stand-ins in vocabulary order.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut out: Vec<char> = (0..256)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    let others = (0..256).filter(|&b| !printable(b)).count() as u32;
    out.extend((0..others).filter_map(|n| char::from_u32(256 + n)));
    out
}
