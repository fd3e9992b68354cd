//! `loopback-scaler settings`: print the resolved settings as JSON, e.g. to start a settings file.

use super::SettingsSource;

/// Arguments of `settings`.
#[derive(Debug, clap::Args)]
pub struct SettingsCmdArgs {
    #[command(flatten)]
    settings: SettingsSource,
}

/// Runs `settings`.
pub fn run(args: &SettingsCmdArgs) -> anyhow::Result<()> {
    println!("{}", args.settings.resolve()?.to_json_pretty());
    Ok(())
}
