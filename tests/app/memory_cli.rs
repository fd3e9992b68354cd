//! The memory planner on the command line: `plan` shows the estimate, `run` refuses a plan
//! that cannot fit before loading anything.

use crate::common;

use common::{cli, data, stderr, stdout};

#[test]
fn plan_shows_the_memory_estimate() {
    let out = cli(&[
        "plan",
        "--start-size",
        "512x512",
        "--max-size",
        "1024x1024",
        "--device",
        "cpu",
        "--precision",
        "f32",
        "--memory-limit",
        "64G",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let loops = json["memory"]["loops"].as_array().unwrap();
    assert_eq!(loops.len(), json["loops"].as_array().unwrap().len());
    // SD 1.5 in f32: 4.3 GB of weights at least.
    let f32_peak = loops[0]["peak_bytes"].as_u64().unwrap();
    assert!(f32_peak > 4_000_000_000);
    assert!(loops.iter().all(|l| l["fits"] == true));

    // bf16 on the CPU: bf16 weights on f32 activations, counted so (bench --loop measured
    // 57 % of f32's peak).
    let out = cli(&[
        "plan",
        "--start-size",
        "512x512",
        "--max-size",
        "1024x1024",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--memory-limit",
        "64G",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let memory = &json["memory"];
    assert_eq!(
        (&memory["weights_dtype"], &memory["dtype"]),
        (&"BF16".into(), &"F32".into())
    );
    let bf16_peak = memory["loops"][0]["peak_bytes"].as_u64().unwrap();
    let ratio = bf16_peak as f64 / f32_peak as f64;
    assert!((0.45..0.7).contains(&ratio), "bf16 / f32 = {ratio}");

    let out = cli(&[
        "plan",
        "--start-size",
        "512x512",
        "--device",
        "cpu",
        "--memory-limit",
        "2G",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("memory") && text.contains("too big"),
        "{text}"
    );
}

#[test]
fn run_refuses_a_plan_that_cannot_fit_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.png");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd");
    let out = cli(&[
        "run",
        "--input",
        data("coffee.png").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--memory-limit",
        "16M",
        "--prompt",
        "a cup",
        "-o",
        output.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains("not enough memory") && line.contains("available"),
        "{err}"
    );
    assert!(!err.contains("loading"), "nothing was loaded: {err}");
    assert!(!output.exists());
}
