//! `run --input FOLDER -o OUTFOLDER`: every image of a folder, each with its own settings (its
//! metadata with `--use-metadata`), the model loaded once.
//!
//! Each image writes `OUTFOLDER/<name>.png`. An image whose output exists is skipped (so a run
//! stopped by Ctrl-C or a crash resumes where it stopped) unless `--overwrite`. An image that
//! cannot be read or run is reported by name and the batch goes on; the exit code is 2 when any
//! failed. Ctrl-C stops the batch after keeping the current image's finished loops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;

use loopback_engine::load::{lora, resolve};

use super::run::{
    Job, Ran, RunArgs, check_memory, ctrl_c_flag, execute, limit_vae, load_model, model_shape,
    prepare, scan_embeddings,
};

/// Prints a failed image's error, naming the file unless the message already does.
fn report(file: &Path, e: &anyhow::Error) {
    let message = format!("{e:#}");
    if message.contains(&*file.to_string_lossy()) {
        eprintln!("error: {message}");
    } else {
        eprintln!("error: {}: {message}", file.display());
    }
}

/// Runs every image of `args.input` into the folder `args.output`; images without metadata
/// take the settings given, with a note, even with `--use-metadata`.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let out_dir = &args.output;
    if out_dir.exists() && !out_dir.is_dir() {
        anyhow::bail!(
            "{}: with a folder as --input, -o must be a folder",
            out_dir.display()
        );
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create folder", out_dir.display()))?;
    let files = loopback_core::io::images_in(&args.input)?;
    if files.is_empty() {
        anyhow::bail!("{}: no PNG, JPEG or WebP images", args.input.display());
    }
    let output_of = |file: &Path| {
        let stem = file.file_stem().unwrap_or_default().to_string_lossy();
        out_dir.join(format!("{stem}.png"))
    };
    // Read every image and its settings first: the model loads once, with every LoRA the
    // prompts ask for.
    let (mut jobs, mut failed, mut skipped) = (Vec::new(), Vec::new(), 0);
    for file in &files {
        let output = output_of(file);
        if output.exists() && !args.overwrite {
            eprintln!("skip {}: {} exists", file.display(), output.display());
            skipped += 1;
            continue;
        }
        let save_loops = args
            .save_loops
            .as_ref()
            .map(|d| d.join(file.file_stem().unwrap_or_default()));
        match prepare(args, file, &output, save_loops, false) {
            Ok(job) => jobs.push(job),
            Err(e) => {
                report(file, &e);
                failed.push(file.clone());
            }
        }
    }
    let shape = model_shape(args)?;
    jobs.retain(
        |job| match check_memory(args, &shape.clone().with_run(&job.settings), job) {
            Ok(()) => true,
            Err(e) => {
                report(&job.input_path, &e);
                failed.push(job.input_path.clone());
                false
            }
        },
    );
    if !jobs.is_empty() {
        run_jobs(args, &shape, &jobs, &mut failed)?;
    }
    let done = files.len() - failed.len() - skipped;
    eprintln!(
        "{done} of {} image(s) done, {skipped} skipped (already done), {} failed",
        files.len(),
        failed.len()
    );
    if !failed.is_empty() {
        let names: Vec<String> = failed.iter().map(|f| f.display().to_string()).collect();
        anyhow::bail!("{} image(s) failed: {}", failed.len(), names.join(", "));
    }
    Ok(())
}

/// Loads the model once and runs `jobs` in order; a failed job is added to `failed`.
fn run_jobs(
    args: &RunArgs,
    shape: &loopback_engine::run::memory::ModelShape,
    jobs: &[Job],
    failed: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let cancel = ctrl_c_flag();
    let mut specs = args.loras.clone();
    for job in jobs {
        for spec in lora::specs_for_prompt(
            &job.settings.prompt,
            &args.loras,
            &resolve::default_search_dirs(),
        )? {
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
    }
    // One model for every image: the first one's ControlNet (an image whose settings name
    // another fails with a message saying so).
    let controlnet = jobs.first().map_or("", |j| j.settings.controlnet.as_str());
    let model = load_model(args, specs, controlnet, &cancel)?;
    limit_vae(args, shape, &model);
    let embeddings = Arc::new(scan_embeddings(args));
    for (i, job) in jobs.iter().enumerate() {
        eprintln!(
            "[{}/{}] {} → {}",
            i + 1,
            jobs.len(),
            job.input_path.display(),
            job.output.display()
        );
        match execute(args, &model, job, Arc::clone(&embeddings), &cancel) {
            Ok(Ran::Finished) => {}
            Ok(Ran::Cancelled) => {
                eprintln!("batch stopped; run it again to resume");
                return Ok(());
            }
            Err(e) => {
                report(&job.input_path, &e);
                failed.push(job.input_path.clone());
            }
        }
        if cancel.load(Ordering::SeqCst) {
            eprintln!("batch stopped; run it again to resume");
            return Ok(());
        }
    }
    Ok(())
}
