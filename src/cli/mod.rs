//! Command-line parsing and dispatch. Each subcommand lives in its own module.

mod bench;
mod bench_loop;
mod gui;
mod models;
mod plan;
mod post;
mod prompt;
mod run;
mod run_folder;
mod settings;
mod target;

use std::path::PathBuf;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use loopback_core::settings::{FIELDS, Group, Settings, SettingsArgs, Size};

/// Loopback Scaler: enlarge an image and add detail by looping Stable Diffusion img2img,
/// then finish it with Pillow-exact filters.
#[derive(Debug, Parser)]
#[command(name = "loopback-scaler", version, about, long_about = None)]
struct Cli {
    /// Without a command, the desktop app opens.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the loop plan: the final size and each loop's size, denoise, seed and steps.
    Plan(plan::PlanArgs),
    /// Run the loops: img2img again and again, each loop larger, then the finishing chain.
    Run(Box<run::RunArgs>),
    /// Apply the finishing chain (enhancements, filters, colour matching) to any image.
    Post(post::PostArgs),
    /// Time UNet steps, VAE encode/decode or a whole loop; report seconds and peak memory as JSON.
    Bench(bench::BenchArgs),
    /// Print the resolved settings as JSON (defaults, then --settings FILE, then flags).
    Settings(settings::SettingsCmdArgs),
    /// List the models, VAEs, LoRAs, ControlNets, embeddings and TAESD decoders in ./models and
    /// the Hugging Face cache.
    Models(models::ModelsArgs),
    /// Show how a prompt is read (A1111's emphasis, BREAK, prompt editing, alternation,
    /// embeddings): its weights, its schedule, its token count and, with --model, its chunks.
    Prompt(prompt::PromptArgs),
    /// Open the desktop app (also what running without a command does).
    Gui(gui::GuiArgs),
}

/// Settings flags shared by every command that takes settings.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsSource {
    /// A settings file (JSON, as printed by `loopback-scaler settings`); flags override it.
    #[arg(long = "settings", value_name = "FILE.json")]
    pub settings_file: Option<PathBuf>,
    /// Maximum final size, WIDTHxHEIGHT: sets --max-width and --max-height.
    #[arg(long = "max-size", value_name = "WxH", help_heading = "Size")]
    pub max_size: Option<Size>,
    #[command(flatten)]
    pub flags: SettingsArgs,
}

impl SettingsSource {
    /// Defaults, then the settings file, then the flags; validated.
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        self.resolve_over(Settings::default())
    }

    /// `base`, then the settings file (which replaces it whole), then the flags; validated.
    pub fn resolve_over(&self, base: Settings) -> anyhow::Result<Settings> {
        let mut settings = match &self.settings_file {
            Some(path) => Settings::from_json_file(path)?,
            None => base,
        };
        let mut flags = self.flags.clone();
        if let Some(size) = self.max_size {
            flags.max_width = flags.max_width.or(Some(size.width));
            flags.max_height = flags.max_height.or(Some(size.height));
        }
        flags.apply(&mut settings);
        settings.validate()?;
        Ok(settings)
    }
}

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<()> {
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let Some(command) = cli.command else {
        return gui::run(&gui::GuiArgs::default());
    };
    match command {
        Command::Gui(args) => gui::run(&args),
        Command::Plan(args) => plan::run(&args),
        // A folder of images is a batch.
        Command::Run(args) if args.input.is_dir() => run_folder::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Post(args) => {
            let sub = matches
                .subcommand_matches("post")
                .cloned()
                .unwrap_or_default();
            reject_non_finishing_flags(&sub)?;
            post::run(&args)
        }
        Command::Settings(args) => settings::run(&args),
        Command::Models(args) => models::run(&args),
        Command::Prompt(args) => prompt::run(&args),
    }
}

/// The clap command, with the settings flags that `post` ignores hidden from its help.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("post", |post| {
        post.mut_args(|arg| {
            let id = arg.get_id().as_str();
            match FIELDS.iter().find(|f| f.key == id) {
                Some(field) if field.group != Group::Finish => arg.hide(true),
                _ if id == "max_size" => arg.hide(true),
                _ => arg,
            }
        })
    })
}

/// `post` only re-applies the finishing chain: refuse loop and img2img flags rather than
/// silently ignoring them.
fn reject_non_finishing_flags(matches: &ArgMatches) -> anyhow::Result<()> {
    let given = |id: &str| {
        matches.try_contains_id(id).unwrap_or(false)
            && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    };
    for field in FIELDS.iter().filter(|f| f.group != Group::Finish) {
        if given(field.key) {
            anyhow::bail!(
                "--{} is a {} setting; `post` only takes the finishing settings",
                field.flag,
                field.group.heading()
            );
        }
    }
    if given("max_size") {
        anyhow::bail!("--max-size is a size setting; `post` only takes the finishing settings");
    }
    Ok(())
}

/// An error chain as one line.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text.replace('\n', " ")
}
