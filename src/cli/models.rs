//! `loopback-scaler models`: list the models, VAEs, LoRAs, ControlNets, TAESD decoders and
//! embeddings found in the search folders (`models/`, as A1111 arranges it) and in the
//! Hugging Face cache.

use std::path::PathBuf;

use loopback_engine::load::hub;
use loopback_engine::load::library::{self, human_bytes};
use loopback_engine::load::resolve::default_search_dirs;
use loopback_engine::load::weights::hash::HashCache;

/// What `models --help` says of the folders searched.
const FOLDERS_HELP: &str = "Searched in each models folder: checkpoints (.safetensors, .ckpt) \
in it and in Stable-diffusion/, diffusers folders in it, VAEs in VAE/, LoRAs in Lora/ and \
LyCORIS/, ControlNets (.safetensors, .pth, diffusers ControlNet folders) in ControlNet/ and \
controlnet/, TAESD decoders in VAE-taesd/, embeddings in embeddings/; and the diffusers models \
in the Hugging Face cache. The KIND column: checkpoint, diffusers, vae, lora, controlnet, \
taesd, embedding.";

/// Arguments of `models`.
#[derive(Debug, clap::Args)]
#[command(after_help = FOLDERS_HELP)]
pub struct ModelsArgs {
    /// Folders to search (default: ./models).
    #[arg(long = "models-dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `models`.
pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    let dirs = if args.dirs.is_empty() {
        default_search_dirs()
    } else {
        args.dirs.clone()
    };
    let cache = hub::default_cache_dir();
    let hashes = HashCache::default_location();
    let entries = library::scan(&dirs, cache.as_deref(), hashes.as_ref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        println!(
            "No models found in {} or the Hugging Face cache.",
            searched.join(", ")
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<32} {:<7} {:>8} {:<10} PATH",
        "KIND", "NAME", "FAMILY", "SIZE", "HASH"
    );
    for e in &entries {
        println!(
            "{:<10} {:<32} {:<7} {:>8} {:<10} {}",
            e.kind.label(),
            e.name,
            e.family.as_deref().unwrap_or("-"),
            human_bytes(e.bytes),
            e.hash.as_deref().unwrap_or("-"),
            e.path.display()
        );
    }
    Ok(())
}
