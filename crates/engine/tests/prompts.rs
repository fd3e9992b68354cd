//! A1111's prompt language: the engine reads 120 prompts exactly as A1111's parser does
//! (`tests/fixtures/prompts/a1111-prompts.json`: emphasis weights bit for bit, and the
//! schedules of prompt editing and alternation).

use std::path::Path;

use loopback_engine::conditioning::syntax::{parse_attention, schedule};

use crate::common::ROOT;

fn cases() -> Vec<serde_json::Value> {
    let path = Path::new(ROOT).join("tests/fixtures/prompts/a1111-prompts.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn attention_matches_a1111_on_120_prompts() {
    let cases = cases();
    assert_eq!(cases.len(), 120);
    let mut wrong = Vec::new();
    for case in &cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected: Vec<(String, f64)> =
            serde_json::from_value(case["attention"].clone()).unwrap();
        let got = parse_attention(prompt);
        // Weights compared exactly: A1111's multiplications in A1111's order.
        if got != expected {
            wrong.push(format!(
                "{prompt:?}\n  got      {got:?}\n  expected {expected:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 120 differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn schedules_match_a1111_on_120_prompts() {
    let mut wrong = Vec::new();
    for case in &cases() {
        let prompt = case["prompt"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let expected: Vec<(usize, String)> =
            serde_json::from_value(case["schedule"].clone()).unwrap();
        let got = schedule(prompt, steps);
        if got != expected {
            wrong.push(format!(
                "{prompt:?} ({steps} steps)\n  got      {got:?}\n  expected {expected:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 120 differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
