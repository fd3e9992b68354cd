//! `loopback-scaler run`: the whole loopback job, headless, with a progress bar.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;

use anyhow::Context as _;
use image::{DynamicImage, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use loopback_core::io::{self, load_image};
use loopback_core::metadata;
use loopback_core::plan::{self, PlanInput};
use loopback_engine::load::checkpoint::CheckpointOptions;
use loopback_engine::load::embeddings::{self, Embeddings};
use loopback_engine::load::hub::{DownloadEvent, Preset};
use loopback_engine::load::lora::{self, LoraSpec};
use loopback_engine::load::open::LoadedModel;
use loopback_engine::load::request::{self, LoadEvent, ModelRequest};
use loopback_engine::load::resolve;
use loopback_engine::model::vae::VaeOptions;
use loopback_engine::run::memory::{self, EncoderWeights, ModelShape};
use loopback_engine::run::runner::{self, Event, RunRequest};
use loopback_engine::scheduler::PredictionType;

use super::SettingsSource;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The input image (PNG, JPEG or WebP), or a folder: every image in it is run, each to
    /// `-o FOLDER/<name>.png` (finished ones are skipped unless --overwrite).
    #[arg(long, value_name = "IMAGE|FOLDER")]
    pub(super) input: PathBuf,
    /// The model: a preset (sd15, sd21, sd-turbo, sdxl, sdxl-turbo; downloaded once into the
    /// Hugging Face cache), a diffusers folder, a single-file checkpoint (.safetensors or a
    /// PyTorch .ckpt; SD 1.x, 2.x or SDXL), or the name of either in ./models (or
    /// ./models/Stable-diffusion).
    #[arg(long, value_name = "PRESET|PATH")]
    model: String,
    /// A replacement VAE: a .safetensors file (original or diffusers layout) or a diffusers
    /// VAE folder.
    #[arg(long, value_name = "FILE|FOLDER")]
    vae: Option<PathBuf>,
    /// For a single-file checkpoint: a diffusers folder whose configs, scheduler and
    /// tokenizer describe it (for models with unusual attention heads or norm groups).
    #[arg(long, value_name = "FOLDER")]
    model_config: Option<PathBuf>,
    /// For a single-file checkpoint: what the model predicts (the weights cannot tell;
    /// default epsilon, v for SD 2.x).
    #[arg(long, value_enum)]
    prediction: Option<Prediction>,
    /// Use only models already in the Hugging Face cache; never download.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    pub(super) target: super::target::Target,
    /// Where to write the final image (with the recipe in its metadata): a file, or with a
    /// folder `--input`, a folder.
    #[arg(short = 'o', long = "output", value_name = "OUT.png|FOLDER")]
    pub(super) output: PathBuf,
    /// Also save every loop's image into this folder.
    #[arg(long, value_name = "DIR")]
    pub(super) save_loops: Option<PathBuf>,
    /// Take prompt and settings from the input's metadata (A1111 `parameters` or this app's
    /// recipe); settings files and flags still override them.
    #[arg(long)]
    pub(super) use_metadata: bool,
    /// Replace existing output files.
    #[arg(long)]
    pub(super) overwrite: bool,
    /// A LoRA to merge into the model, with its weight (default 1); repeatable. The prompt's
    /// `<lora:NAME:WEIGHT>` tags are found by name in ./models/Lora and ./models and added.
    #[arg(long = "lora", value_name = "FILE[:WEIGHT]", value_parser = LoraSpec::parse_cli)]
    pub(super) loras: Vec<LoraSpec>,
    /// A folder of textual-inversion embeddings, besides ./models/embeddings and
    /// ./embeddings; repeatable. A prompt calls an embedding by its file name.
    #[arg(long = "embeddings-dir", value_name = "DIR")]
    pub(super) embeddings_dirs: Vec<PathBuf>,
    /// Memory the run may use (e.g. 8G). Default on the CPU: what is available now; on a GPU
    /// the check is skipped unless this is given.
    #[arg(long, value_name = "SIZE", value_parser = memory::parse_bytes)]
    memory_limit: Option<u64>,
    #[command(flatten)]
    settings: SettingsSource,
}

/// Runs `run` on one image (a folder `--input` goes to `run_folder`).
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let job = prepare(
        args,
        &args.input,
        &args.output,
        args.save_loops.clone(),
        true,
    )?;
    // Refuse a plan that cannot fit before loading (or downloading) anything.
    let shape = model_shape(args)?.with_run(&job.settings);
    check_memory(args, &shape, &job)?;
    let cancel = ctrl_c_flag();
    let loras = lora::specs_for_prompt(
        &job.settings.prompt,
        &args.loras,
        &resolve::default_search_dirs(),
    )?;
    let model = load_model(args, loras, &job.settings.controlnet, &cancel)?;
    // One run with fixed prompts: the text encoders are freed once the prompts are encoded.
    model.model.text_encoders.set_release_after_use(true);
    limit_vae(args, &shape, &model);
    let embeddings = Arc::new(scan_embeddings(args));
    match execute(args, &model, &job, embeddings, &cancel)? {
        Ran::Finished => Ok(()),
        Ran::Cancelled => Ok(()),
    }
}

/// One image to run: its settings (seed resolved), pixels, plan and where its results go.
pub(super) struct Job {
    /// The input file.
    pub input_path: PathBuf,
    /// The final image's path.
    pub output: PathBuf,
    /// Where each loop's image is saved, if anywhere.
    pub save_loops: Option<PathBuf>,
    /// The settings, the seed resolved.
    pub settings: loopback_core::Settings,
    /// The input image.
    pub input: Arc<DynamicImage>,
    /// The loop plan.
    pub plan: plan::Plan,
}

/// How a job ended without an error.
pub(super) enum Ran {
    /// The final image was written.
    Finished,
    /// Ctrl-C: the finished loops were kept.
    Cancelled,
}

/// Reads `input` and its settings (its metadata with `--use-metadata`, then the settings file
/// and flags), checks that `output` can be written, and plans the loops. An input without
/// metadata is an error when `require_metadata`, else a note (the settings given are used).
pub(super) fn prepare(
    args: &RunArgs,
    input: &Path,
    output: &Path,
    save_loops: Option<PathBuf>,
    require_metadata: bool,
) -> anyhow::Result<Job> {
    let base = if args.use_metadata {
        match metadata_settings(input, &args.embeddings_dirs) {
            Ok(settings) => settings,
            Err(e) if !require_metadata => {
                eprintln!("note: {e:#}; using the settings given");
                Default::default()
            }
            Err(e) => return Err(e),
        }
    } else {
        Default::default()
    };
    let settings = args.settings.resolve_over(base)?;
    io::check_output(output, args.overwrite)?;
    if let Some(dir) = &save_loops {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    }
    let image = Arc::new(load_image(input)?);
    for warning in settings.warnings() {
        eprintln!("warning: {warning}");
    }
    if let Some(advice) =
        Preset::parse(&args.model).and_then(|p| p.advice(settings.steps, settings.cfg))
    {
        eprintln!("note: {advice}");
    }
    let seed = plan::resolve_seed(settings.seed);
    let settings = loopback_core::Settings {
        seed: i64::from(seed),
        ..settings
    };
    let plan = plan::plan_for(&settings, PlanInput::of_image(&image), seed)?;
    Ok(Job {
        input_path: input.to_path_buf(),
        output: output.to_path_buf(),
        save_loops,
        settings,
        input: image,
        plan,
    })
}

/// The model's shape from its configs, without loading weights (a checkpoint given with
/// `--model-config` is described by that folder's configs).
pub(super) fn model_shape(args: &RunArgs) -> anyhow::Result<ModelShape> {
    let spec = match &args.model_config {
        Some(folder) => folder.display().to_string(),
        None => args.model.clone(),
    };
    Ok(ModelShape::resolve(&spec, &resolve::default_search_dirs())?)
}

/// Refuses a job whose plan cannot fit the memory available.
pub(super) fn check_memory(args: &RunArgs, shape: &ModelShape, job: &Job) -> anyhow::Result<()> {
    let limit = memory::run_limit(args.target.device, args.memory_limit);
    let dtypes = memory::device_dtypes(args.target.device, args.target.precision);
    let batch = memory::unet_batch(job.settings.cfg);
    memory::check_plan(
        shape,
        &job.plan,
        dtypes,
        batch,
        limit,
        EncoderWeights::Released,
    )
    .map_err(loopback_core::Error::from)?;
    Ok(())
}

/// One flag for Ctrl-C, shared by the download and the runs.
pub(super) fn ctrl_c_flag() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    cancel
}

/// With `--memory-limit`, the VAE's automatic tiling plans for the same limit (minus the
/// loaded weights).
pub(super) fn limit_vae(args: &RunArgs, shape: &ModelShape, model: &LoadedModel) {
    if args.memory_limit.is_some() {
        let dtypes = memory::device_dtypes(args.target.device, args.target.precision);
        let weights = shape.resident_weight_bytes(dtypes.weights, EncoderWeights::Released);
        model.model.vae.set_options(VaeOptions {
            memory_limit: args.memory_limit.map(|l| l.saturating_sub(weights)),
            ..model.model.vae.options()
        });
    }
}

/// The textual-inversion embeddings of the default folders and `--embeddings-dir`, with a
/// warning per file that cannot be used.
pub(super) fn scan_embeddings(args: &RunArgs) -> Embeddings {
    let embeddings = Embeddings::scan(&embeddings::search_dirs(&args.embeddings_dirs));
    for warning in &embeddings.warnings {
        eprintln!("warning: {warning}");
    }
    embeddings
}

/// Runs `job` on `model` with a progress bar, and writes its result (or, after a cancel or a
/// failure, keeps its finished loops).
pub(super) fn execute(
    args: &RunArgs,
    model: &Arc<LoadedModel>,
    job: &Job,
    embeddings: Arc<Embeddings>,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<Ran> {
    let total_steps: u64 = job.plan.loops.iter().map(|l| u64::from(l.steps)).sum();
    // The run reports from a thread of its own; this one draws the progress bar.
    let (tx, events) = channel();
    let request = RunRequest {
        input: Arc::clone(&job.input),
        settings: job.settings.clone(),
        embeddings,
    };
    let (model_ref, cancel_ref) = (Arc::clone(model), Arc::clone(cancel));
    let worker = std::thread::Builder::new()
        .name("loopback-runner".into())
        .spawn(move || {
            runner::run_and_report(
                &model_ref,
                &request,
                &mut |event| {
                    let _ = tx.send(event);
                },
                &cancel_ref,
            );
        })
        .ok();

    let bar = ProgressBar::new(total_steps.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {pos}/{len} steps, {elapsed} elapsed, ETA {prefix}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut finished_loops: Vec<Arc<RgbImage>> = Vec::new();
    let mut outcome = None;
    for event in &events {
        match event {
            Event::LoopStarted { spec, loops } => bar.set_message(format!(
                "loop {}/{} {}x{} d={:.2}",
                spec.index, loops, spec.width, spec.height, spec.denoise
            )),
            Event::StepFinished { eta, .. } => {
                bar.inc(1);
                if let Some(eta) = eta {
                    bar.set_prefix(format!("{}s", eta.as_secs()));
                }
            }
            Event::LoopFinished { index, image } => {
                if let Some(dir) = &job.save_loops {
                    save_loop(dir, index, &image, args.overwrite)?;
                }
                finished_loops.push(image);
            }
            Event::Finished(output) => outcome = Some(Ok(output)),
            Event::Cancelled { .. } => outcome = Some(Err(None)),
            Event::Failed { message, .. } => outcome = Some(Err(Some(message))),
            Event::Preview { .. } => {}
        }
    }
    bar.finish_and_clear();
    if let Some(worker) = worker {
        let _ = worker.join();
    }

    match outcome {
        Some(Ok(output)) => {
            let texts = output.recipe.png_texts();
            let texts: Vec<(&str, &str)> = texts
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            io::save_image(&job.output, &output.finished, &texts, args.overwrite)?;
            eprintln!(
                "wrote {} ({}x{}, seed {})",
                job.output.display(),
                output.finished.width(),
                output.finished.height(),
                output.recipe.seed
            );
            Ok(Ran::Finished)
        }
        Some(Err(message)) => {
            let kept = keep_loops(args, job, &finished_loops)?;
            match message {
                None => {
                    eprintln!(
                        "cancelled after {} finished loop(s){kept}",
                        finished_loops.len()
                    );
                    Ok(Ran::Cancelled)
                }
                Some(message) => anyhow::bail!("{message}{kept}"),
            }
        }
        None => anyhow::bail!("the run ended without a result"),
    }
}

/// Settings from the input image's metadata; warns about embeddings its prompts used that are
/// not in the embedding folders (`extra_dirs` besides the default ones).
pub(super) fn metadata_settings(
    path: &Path,
    extra_dirs: &[PathBuf],
) -> anyhow::Result<loopback_core::Settings> {
    let texts = metadata::read_texts_from_path(path).unwrap_or_default();
    let (settings, warnings) = metadata::settings_from_texts(&texts).with_context(|| {
        format!(
            "{}: no A1111 or loopback-scaler metadata to use",
            path.display()
        )
    })?;
    let names = metadata::embeddings_named(&texts);
    let missing = embeddings::missing(&names, &embeddings::search_dirs(extra_dirs));
    for warning in warnings.iter().chain(&missing) {
        eprintln!("warning: {}: {warning}", path.display());
    }
    Ok(settings)
}

/// Gets the model (with `loras` merged and the ControlNet `controlnet` names, if any) ready
/// through the engine's loader, with a download progress bar for presets not yet cached.
pub(super) fn load_model(
    args: &RunArgs,
    loras: Vec<LoraSpec>,
    controlnet: &str,
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<Arc<LoadedModel>> {
    let request = ModelRequest {
        offline: args.offline,
        vae: args.vae.clone(),
        checkpoint: CheckpointOptions {
            config: args.model_config.clone(),
            prediction: args.prediction.map(Prediction::to_engine),
        },
        loras,
        controlnet: (!controlnet.trim().is_empty()).then(|| controlnet.to_string()),
        precision: args.target.precision,
        ..ModelRequest::new(args.model.clone(), args.target.device)
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let model = request::load_blocking(&request, cancel, &mut |event| match event {
        LoadEvent::Download(DownloadEvent::Started { file, total_bytes }) => {
            bar.set_message(file);
            bar.set_length(total_bytes.unwrap_or(0));
            bar.set_position(0);
        }
        LoadEvent::Download(DownloadEvent::Progress { downloaded, .. }) => {
            bar.set_position(downloaded)
        }
        LoadEvent::Loading { path, device } => {
            bar.finish_and_clear();
            eprintln!("loading {} on {device}", path.display());
        }
        // The precision it runs in, which `auto` chose (bf16 on a CPU with AMX).
        LoadEvent::Loaded { seconds, model } => eprintln!(
            "model loaded in {seconds:.1} s ({})",
            model.model.precision_label()
        ),
        LoadEvent::Note(message) => {
            bar.suspend(|| eprintln!("note: {message}"));
        }
        _ => {}
    });
    bar.finish_and_clear();
    Ok(model?)
}

fn save_loop(dir: &Path, index: u32, image: &RgbImage, overwrite: bool) -> anyhow::Result<()> {
    let path = dir.join(format!("loop-{index:02}.png"));
    io::save_image(
        &path,
        &DynamicImage::ImageRgb8(image.clone()),
        &[],
        overwrite,
    )?;
    Ok(())
}

/// After a cancel or failure: keeps the finished loops next to the output when no
/// `--save-loops` folder already has them; returns a note saying where they are.
fn keep_loops(args: &RunArgs, job: &Job, loops: &[Arc<RgbImage>]) -> anyhow::Result<String> {
    if loops.is_empty() {
        return Ok(String::new());
    }
    if let Some(dir) = &job.save_loops {
        return Ok(format!("; finished loops are in {}", dir.display()));
    }
    let stem = job
        .output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = job
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for (i, image) in loops.iter().enumerate() {
        let path = dir.join(format!("{stem}-loop-{:02}.png", i + 1));
        io::save_image(
            &path,
            &DynamicImage::ImageRgb8((**image).clone()),
            &[],
            args.overwrite,
        )?;
    }
    Ok(format!(
        "; finished loops saved as {}/{stem}-loop-NN.png",
        dir.display()
    ))
}

/// `--prediction`: what a single-file checkpoint's model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Prediction {
    /// The noise (SD 1.x, SD 2.x 512-pixel base, SDXL).
    Epsilon,
    /// The velocity (SD 2.x 768-pixel models).
    V,
}

impl Prediction {
    fn to_engine(self) -> PredictionType {
        match self {
            Prediction::Epsilon => PredictionType::Epsilon,
            Prediction::V => PredictionType::VPrediction,
        }
    }
}
