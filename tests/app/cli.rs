//! The command line as a user runs it: `plan`, `post`, `settings`, `bench --loop`, and bad input.

use crate::common;

use common::{cli, data, files_in, stderr, stdout};
use image::GenericImageView;

#[test]
fn plan_json_for_an_input_image() {
    let coffee = data("coffee.png");
    let out = cli(&[
        "plan",
        "--input",
        coffee.to_str().unwrap(),
        "--seed",
        "42",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    // 600x400 → start 600x400; width limits: 1024 x floor(1024·400/600)=682 → 680.
    assert_eq!(
        json["final"],
        serde_json::json!({"width": 1024, "height": 680})
    );
    let loops = json["loops"].as_array().unwrap();
    assert_eq!(loops.len(), 4);
    assert_eq!(loops[0]["index"], 1);
    assert_eq!(loops[0]["seed"], 42);
    assert_eq!(loops[3]["seed"], 45);
    assert_eq!(loops[0]["steps"], 10);
    // Exactly the documented shape and key order.
    let text = stdout(&out);
    assert!(
        text.starts_with(r#"{"final":{"width":1024,"height":680},"loops":[{"index":1,"width":"#),
        "{text}"
    );
    assert!(
        text.contains(r#","seed":42,"steps":10},{"index":2,"#),
        "{text}"
    );
    assert_eq!(loops[0].as_object().unwrap().len(), 6);
}

#[test]
fn plan_table_with_start_size_and_flags() {
    let out = cli(&[
        "plan",
        "--start-size",
        "512x768",
        "--loops",
        "3",
        "--curve",
        "ease-out-cubic",
        "--max-size",
        "1024x1536",
        "--seed",
        "7",
        "--prompt",
        "a castle",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("start 512x768") && text.contains("final 1024x1536"),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        3
    );
    assert!(
        stderr(&out).is_empty(),
        "no empty-prompt warning: {}",
        stderr(&out)
    );

    let out = cli(&["plan", "--start-size", "512x512"]);
    assert!(stderr(&out).contains("prompt is empty"));
}

#[test]
fn settings_file_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    std::fs::write(
        &file,
        r#"{"loops": 6, "steps": 20, "scale": 1.5, "target_mode": "scale"}"#,
    )
    .unwrap();
    let out = cli(&[
        "settings",
        "--settings",
        file.to_str().unwrap(),
        "--steps",
        "25",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (json["loops"].as_u64(), json["steps"].as_u64()),
        (Some(6), Some(25))
    );
    assert_eq!(json["target_mode"], "scale");
}

#[test]
fn invalid_settings_exit_2_with_one_line() {
    let out = cli(&["plan", "--start-size", "512x512", "--loops", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: invalid setting loops = 0: must be between 1 and 32"
    );
    let out = cli(&["plan", "--input", "/nonexistent/x.png"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: /nonexistent/x.png: no such file"
    );
}

#[test]
fn post_applies_the_chain_and_keeps_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("logo-finished.png");
    let logo = data("logo.png");
    let out = cli(&[
        "post",
        logo.to_str().unwrap(),
        "-o",
        out_png.to_str().unwrap(),
        "--sharpness",
        "1.5",
        "--contrast",
        "1.2",
        "--detail",
        "low",
        "--contour",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result = image::open(&out_png).unwrap();
    assert_eq!(result.dimensions(), (500, 500));
    assert!(result.color().has_alpha());
    let before = image::open(&logo).unwrap().to_rgba8();
    let after = result.to_rgba8();
    assert_ne!(before.as_raw(), after.as_raw());
    // Alpha of a transparent corner stays transparent.
    assert_eq!(after.get_pixel(0, 0)[3], before.get_pixel(0, 0)[3]);
}

#[test]
fn post_writes_jpeg_and_webp_and_matches_colors() {
    let dir = tempfile::tempdir().unwrap();
    let coffee = data("coffee.png");
    let chelsea = data("chelsea.png");
    for name in ["a.jpg", "a.webp", "a.png"] {
        let path = dir.path().join(name);
        let out = cli(&[
            "post",
            coffee.to_str().unwrap(),
            "-o",
            path.to_str().unwrap(),
            "--match-colors",
            chelsea.to_str().unwrap(),
            "--brightness",
            "1.1",
        ]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(image::open(&path).unwrap().dimensions(), (600, 400));
    }
}

#[test]
fn post_refuses_to_overwrite_and_writes_nothing_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let coffee = data("coffee.png");
    let out_png = dir.path().join("out.png");
    std::fs::write(&out_png, b"precious").unwrap();
    let out = cli(&[
        "post",
        coffee.to_str().unwrap(),
        "-o",
        out_png.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"));
    assert_eq!(std::fs::read(&out_png).unwrap(), b"precious");

    let out = cli(&[
        "post",
        coffee.to_str().unwrap(),
        "-o",
        out_png.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(image::open(&out_png).is_ok());

    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let target = dir.path().join("never.png");
    let out = cli(&[
        "post",
        bad.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(stderr(&out).contains("bad.png"));
    assert_eq!(files_in(dir.path()), ["bad.png", "out.png"]);

    let out = cli(&[
        "post",
        coffee.to_str().unwrap(),
        "-o",
        dir.path().join("x.bmp").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unsupported output format"));

    let out = cli(&[
        "post",
        coffee.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
        "--loops",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--loops"), "{}", stderr(&out));
}

/// Windows users keep images in folders like `C:\Users\Zoë\My Pictures`: spaces, non-ASCII
/// names and (on Windows, where `join` writes them) backslashes read, write and appear in
/// errors intact.
#[test]
fn paths_with_spaces_and_non_ascii_names() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("My Pictures").join("Zoë 画像");
    std::fs::create_dir_all(&folder).unwrap();
    let input = folder.join("café au lait.png");
    std::fs::copy(data("coffee.png"), &input).unwrap();
    let output = folder.join("résultat final.webp");
    let out = cli(&[
        "post",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--sharpness",
        "1.5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image::open(&output).unwrap().dimensions(), (600, 400));

    let missing = folder.join("nicht da.png");
    let out = cli(&["plan", "--input", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: {}: no such file", missing.display())
    );
}

#[test]
fn bench_times_a_whole_loop() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sd");
    let out = cli(&[
        "bench",
        "--loop",
        "--model",
        model,
        "--size",
        "64",
        "--loop-steps",
        "10",
        "--denoise",
        "0.5",
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let phases = &json["loop"];
    // 10 scheduled steps at denoise 0.5: the last 5 run.
    assert_eq!(phases["steps_run"], 5);
    let seconds = phases["seconds"].as_f64().unwrap();
    let parts = ["before_steps_s", "step_mean_s", "after_steps_s"]
        .map(|k| phases[k].as_f64().unwrap_or(-1.0));
    assert!(parts.iter().all(|&p| p >= 0.0), "{phases}");
    // Before + 5 steps + after adds up to the whole loop.
    let sum = parts[0] + 5.0 * parts[1] + parts[2];
    assert!((sum - seconds).abs() < 1e-6 * seconds.max(1.0), "{phases}");
    assert_eq!(json["sampler"], "DDIM");
    // Heun: two UNet calls per step but the last.
    let out = cli(&[
        "bench",
        "--loop",
        "--model",
        model,
        "--size",
        "64",
        "--loop-steps",
        "10",
        "--denoise",
        "0.5",
        "--device",
        "cpu",
        "--sampler",
        "heun",
        "--schedule",
        "karras",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (&json["sampler"], &json["schedule"]),
        (&"Heun".into(), &"Karras".into())
    );
    assert_eq!(json["loop"]["steps_run"], 9);
    // A loop needs a model folder.
    let out = cli(&["bench", "--loop", "--size", "64"]);
    assert!(!out.status.success());
}

/// `run` on the tiny SDXL model: two loops at the planned sizes.
#[test]
fn cli_run_with_an_sdxl_folder() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.png");
    let out = cli(&[
        "run",
        "--input",
        data("coffee.png").to_str().unwrap(),
        "--model",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sdxl"),
        "--device",
        "cpu",
        "--start-size",
        "64x64",
        "--target-mode",
        "scale",
        "--scale",
        "1.5",
        "--loops",
        "2",
        "--steps",
        "4",
        "--seed",
        "3",
        "--prompt",
        "a cup of coffee",
        "-o",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let image = image::open(&output).unwrap();
    assert_eq!((image.width(), image.height()), (96, 96));
    // It says which precision `auto` chose on this CPU.
    let auto = loopback_engine::device::Precision::Auto.resolve(false);
    let err = stderr(&out);
    let loaded = err.lines().find(|l| l.starts_with("model loaded in"));
    assert!(
        loaded.is_some_and(|l| l.ends_with(&format!(" s ({})", auto.label()))),
        "{err}"
    );
}

#[test]
fn prompt_command_reads_prompts_as_a1111() {
    // A case of tests/fixtures/prompts/a1111-prompts.json: A1111's own output, byte for byte.
    let out = cli(&[
        "prompt",
        "--json",
        "--steps",
        "30",
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            r#"{"attention":[["a ",1.0],["house",1.5730000000000004],[" ",1.1],["on",1.0],[" a ",1.1],["hill",0.55],[", sun, ",1.1],["sky",1.4641000000000006],[".",1.1]],"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#""schedule":[[30,"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."]]"#),
        "{text}"
    );
    let out = cli(&[
        "prompt",
        "--json",
        "--steps",
        "10",
        "a [cat:dog:0.5] BREAK b",
    ]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        json["schedule"],
        serde_json::json!([[5, "a cat BREAK b"], [10, "a dog BREAK b"]])
    );
    assert_eq!(json["token_counter"], "76/150");

    // With a model: the chunks, and an embedding placed as its three vectors.
    let out = cli(&[
        "prompt",
        "--json",
        "--model",
        "tests/fixtures/tiny-sd",
        "--embeddings-dir",
        "tests/fixtures/prompt-parity/embeddings",
        "a cup, (LBstyle:1.2) BREAK x",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let chunks = &json["chunks"][0]["chunks"];
    assert_eq!(chunks.as_array().unwrap().len(), 2);
    assert_eq!(
        chunks[0]["tokens"],
        serde_json::json!([320, 1937, 267, 0, 0, 0])
    );
    assert_eq!(chunks[0]["embeddings"], serde_json::json!([[3, "lbstyle"]]));
    assert_eq!(json["embeddings"], serde_json::json!(["lbstyle"]));
    let weights: Vec<f64> = serde_json::from_value(chunks[0]["weights"].clone()).unwrap();
    assert_eq!(weights[3..], [1.2f32 as f64; 3]);

    // The text form.
    let out = cli(&["prompt", "(a:1.5) b"]);
    let text = stdout(&out);
    assert!(
        text.contains("tokens: 2/75")
            && text.contains("1.5  \"a\"")
            && text.contains("1.0  \" b\""),
        "{text}"
    );
}

/// `run` on a folder: each image (PNG and JPEG, one with an A1111 recipe in its EXIF) to its
/// own output, a broken file reported by name while the batch goes on, and a second run that
/// skips what is done.
#[test]
fn cli_run_on_a_folder_resumes_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, outputs) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::copy(data("coffee.png"), inputs.join("a.png")).unwrap();
    // A JPEG carrying an A1111 recipe in EXIF (written by the app's own encoder).
    let jpeg = loopback_core::io::encode(
        &image::open(data("chelsea.png")).unwrap(),
        loopback_core::io::OutputFormat::Jpeg,
        &[(
            "parameters",
            "a cat\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 9",
        )],
    )
    .unwrap();
    std::fs::write(inputs.join("b.jpg"), jpeg).unwrap();
    std::fs::write(inputs.join("c.png"), b"not an image").unwrap();
    std::fs::write(inputs.join("notes.txt"), b"ignored").unwrap();
    let run = || {
        cli(&[
            "run",
            "--input",
            inputs.to_str().unwrap(),
            "-o",
            outputs.to_str().unwrap(),
            "--model",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sd"),
            "--device",
            "cpu",
            "--use-metadata",
            "--start-size",
            "64x64",
            "--target-mode",
            "scale",
            "--scale",
            "1.0",
            "--loops",
            "1",
            "--prompt",
            "a photo",
        ])
    };
    let out = run();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("c.png") && err.contains("1 image(s) failed"),
        "{err}"
    );
    assert_eq!(files_in(&outputs), ["a.png", "b.png"]);
    // b.jpg's recipe came through: its seed and sampler are in the output's metadata.
    let texts = loopback_core::metadata::read_texts_from_path(&outputs.join("b.png")).unwrap();
    let parameters = &texts.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        parameters.contains("Sampler: Euler, ") && parameters.contains("Seed: 9"),
        "{parameters}"
    );
    // Again: the finished ones are skipped.
    let out = run();
    let err = stderr(&out);
    assert!(err.contains("0 of 3 image(s) done, 2 skipped"), "{err}");
}
