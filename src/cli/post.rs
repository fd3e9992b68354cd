//! `loopback-scaler post`: the finishing chain on any image, so a result can be re-tuned
//! without re-running any loop.

use std::path::{Path, PathBuf};

use image::DynamicImage;
use loopback_core::imageops::{color::ColorReference, finish};
use loopback_core::io::{self, load_image};
use loopback_core::metadata;

use super::SettingsSource;

/// Arguments of `post`.
#[derive(Debug, clap::Args)]
pub struct PostArgs {
    /// The image to finish (PNG, JPEG or WebP; RGBA keeps its alpha).
    #[arg(value_name = "INPUT")]
    input: PathBuf,
    /// Where to write the result; the format comes from the extension (.png, .jpg, .webp).
    #[arg(short = 'o', long = "output", value_name = "OUTPUT")]
    output: PathBuf,
    /// Match the colours to this image first (A1111's colour correction).
    #[arg(long = "match-colors", value_name = "REFERENCE")]
    match_colors: Option<PathBuf>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    settings: SettingsSource,
}

/// Runs `post`.
pub fn run(args: &PostArgs) -> anyhow::Result<()> {
    let settings = args.settings.resolve()?;
    // Fail on a bad output path before doing any work.
    let format = io::check_output(&args.output, args.overwrite)?;
    let input = load_image(&args.input)?;
    let reference = args.match_colors.as_deref().map(load_image).transpose()?;

    let mut image = io::to_rgb_or_rgba8(&input);
    if let Some(reference) = &reference {
        image = match_colors(&image, reference);
    }
    let finished = finish::apply_dynamic(&image, &settings.finishing());

    let mut texts = carried_texts(&args.input);
    let record = metadata::post_record(&settings.finishing(), args.match_colors.as_deref());
    texts.push((metadata::POST_KEY.to_string(), record));
    let texts: Vec<(&str, &str)> = texts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let bytes = io::encode(&finished, format, &texts)?;
    io::write_atomic(&args.output, &bytes, args.overwrite)?;
    Ok(())
}

/// Colour-corrects the RGB channels to `reference`, keeping any alpha channel.
fn match_colors(image: &DynamicImage, reference: &DynamicImage) -> DynamicImage {
    // A1111 builds the reference with OpenCV, which ignores alpha: take the RGB channels as they are.
    let reference = ColorReference::new(&reference.to_rgb8());
    match image {
        DynamicImage::ImageRgba8(rgba) => {
            let corrected = reference.apply(&image.to_rgb8());
            DynamicImage::ImageRgba8(io::with_alpha(&corrected, rgba))
        }
        _ => DynamicImage::ImageRgb8(reference.apply(&image.to_rgb8())),
    }
}

/// The metadata texts of the input (PNG text chunks, JPEG/WebP EXIF, stealth PNG), kept in the
/// output (an earlier `post` record is dropped).
fn carried_texts(input: &Path) -> Vec<(String, String)> {
    metadata::read_texts_from_path(input)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != metadata::POST_KEY)
        .collect()
}
