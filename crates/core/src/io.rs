//! Reading images with clear errors, and writing outputs atomically.
//!
//! Every error names the file and the reason in one line. Inputs are PNG, JPEG or WebP; EXIF
//! orientation is applied; a header that claims more than [`MAX_PIXELS`] is refused before any
//! pixel is decoded. Outputs go to a temporary file in the target folder and are renamed into
//! place, so a failed or interrupted write never leaves a half-written file, and an existing
//! file is only replaced when the caller allows it.

use std::io::{BufReader, Write};
use std::path::Path;

use image::{
    DynamicImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader, Limits, RgbImage, RgbaImage,
};

use crate::{Error, Result};

/// The largest image accepted, in pixels (100 megapixels).
pub const MAX_PIXELS: u64 = 100_000_000;

/// Reads an image file, applying its EXIF orientation.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let meta = std::fs::metadata(path).map_err(|e| Error::input(path, open_reason(&e)))?;
    if meta.is_dir() {
        return Err(Error::input(path, "is a folder, not an image file"));
    }
    if meta.len() == 0 {
        return Err(Error::input(path, "the file is empty"));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::input(path, open_reason(&e)))?;
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| Error::input(path, format!("cannot read: {e}")))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        Some(other) => {
            return Err(Error::input(
                path,
                format!("{other:?} images are not supported (use PNG, JPEG or WebP)"),
            ));
        }
        None => return Err(Error::input(path, "not an image (unrecognised format)")),
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| Error::input(path, format!("not a valid image: {e}")))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(Error::input(
            path,
            format!(
                "the image claims to be {width}x{height} ({} megapixels), over the {}-megapixel limit",
                pixels / 1_000_000,
                MAX_PIXELS / 1_000_000
            ),
        ));
    }
    if width == 0 || height == 0 {
        return Err(Error::input(path, "the image has no pixels"));
    }
    // The pixel count is checked above; allow the decoder the memory such an image needs.
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    decoder
        .set_limits(limits)
        .map_err(|e| Error::input(path, format!("cannot decode: {e}")))?;
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| Error::input(path, format!("truncated or corrupt image: {e}")))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image)
}

fn open_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot open: {e}"),
    }
}

/// The image as 8-bit RGB for diffusion: 16-bit and grayscale are converted, and an alpha
/// channel is flattened onto white as A1111 does (`images.flatten`: paste with the alpha as
/// mask onto a white background, Pillow's rounding).
pub fn to_diffusion_rgb(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let (width, height) = rgba.dimensions();
    let mut out = RgbImage::new(width, height);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(src[3]);
        for c in 0..3 {
            dst[c] = div255(255 * (255 - alpha) + u32::from(src[c]) * alpha);
        }
    }
    out
}

/// Pillow's `DIV255`: `v / 255` rounded, exact for `v ≤ 255 · 255`.
fn div255(v: u32) -> u8 {
    let t = v + 128;
    (((t >> 8) + t) >> 8) as u8
}

/// The image as 8-bit RGB, or RGBA when it has an alpha channel (for the finishing chain).
pub fn to_rgb_or_rgba8(image: &DynamicImage) -> DynamicImage {
    if image.color().has_alpha() {
        DynamicImage::ImageRgba8(image.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(image.to_rgb8())
    }
}

/// Formats the app writes, chosen by the output file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// PNG, with metadata text chunks.
    Png,
    /// JPEG, quality 95 (no alpha).
    Jpeg,
    /// Lossless WebP.
    WebP,
}

impl OutputFormat {
    /// The format for `path`'s extension, or an error naming the file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(OutputFormat::Png),
            Some("jpg" | "jpeg") => Ok(OutputFormat::Jpeg),
            Some("webp") => Ok(OutputFormat::WebP),
            _ => Err(Error::output(
                path,
                "unsupported output format (use a .png, .jpg or .webp file name)",
            )),
        }
    }
}

/// Checks before any work is done that `path` can be written: a known extension, an existing
/// folder, and no existing file unless `overwrite`.
pub fn check_output(path: &Path, overwrite: bool) -> Result<OutputFormat> {
    let format = OutputFormat::from_path(path)?;
    let parent = parent_dir(path);
    if !parent.is_dir() {
        return Err(Error::output(path, "the folder does not exist"));
    }
    if path.is_dir() {
        return Err(Error::output(path, "is a folder"));
    }
    if path.exists() && !overwrite {
        return Err(Error::output(
            path,
            "already exists (use --overwrite to replace it)",
        ));
    }
    Ok(format)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Encodes `image` in `format` with its metadata: PNG carries `texts` as text chunks; JPEG
/// and WebP carry the `parameters` text in EXIF as A1111 writes it, and the recipe with it
/// (other texts are dropped).
pub fn encode(
    image: &DynamicImage,
    format: OutputFormat,
    texts: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let image = to_rgb_or_rgba8(image);
    match format {
        OutputFormat::Png => crate::metadata::png_text::encode_png(&image, texts),
        OutputFormat::Jpeg => {
            let mut bytes = Vec::new();
            let rgb = to_diffusion_rgb(&image);
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95);
            if let Some(exif) = crate::metadata::exif::exif_for_texts(texts) {
                // The JPEG encoder always takes EXIF.
                let _ = encoder.set_exif_metadata(exif);
            }
            encoder
                .encode_image(&rgb)
                .map_err(|e| Error::ImageOp(format!("JPEG encoding failed: {e}")))?;
            Ok(bytes)
        }
        OutputFormat::WebP => {
            let mut bytes = Vec::new();
            let mut encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
            if let Some(exif) = crate::metadata::exif::exif_for_texts(texts) {
                // The WebP encoder always takes EXIF.
                let _ = encoder.set_exif_metadata(exif);
            }
            image
                .write_with_encoder(encoder)
                .map_err(|e| Error::ImageOp(format!("WebP encoding failed: {e}")))?;
            Ok(bytes)
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
/// An existing file is replaced only when `overwrite` is true.
pub fn write_atomic(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let parent = parent_dir(path);
    let mut temp = tempfile::Builder::new()
        .prefix(".loopback-scaler-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .map_err(|e| {
            Error::output(
                path,
                format!("cannot create a file in {}: {e}", parent.display()),
            )
        })?;
    // Temporary files are created private (0600); a saved image gets the usual 0644.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = temp
            .as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|e| Error::output(path, format!("cannot write: {e}")))?;
    let result = if overwrite {
        temp.persist(path).map(drop)
    } else {
        temp.persist_noclobber(path).map(drop)
    };
    result.map_err(|e| match e.error.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Error::output(path, "already exists (use --overwrite to replace it)")
        }
        // Windows refuses to replace a file another program holds open (an image viewer,
        // say); the old file stays whole and the temporary one is removed.
        std::io::ErrorKind::PermissionDenied if cfg!(windows) && overwrite && path.exists() => {
            Error::output(
                path,
                format!(
                    "cannot replace it: is it open in another program? ({})",
                    e.error
                ),
            )
        }
        _ => Error::output(path, format!("cannot write: {}", e.error)),
    })
}

/// Encodes and writes an image atomically; the format comes from the extension.
pub fn save_image(
    path: &Path,
    image: &DynamicImage,
    texts: &[(&str, &str)],
    overwrite: bool,
) -> Result<()> {
    let format = check_output(path, overwrite)?;
    let bytes = encode(image, format, texts)?;
    write_atomic(path, &bytes, overwrite)
}

/// The image files of `dir` (PNG, JPEG, WebP by extension), in name order.
pub fn images_in(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::input(dir, format!("cannot read the folder: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase)
                    .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg" | "webp"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Builds an RGBA image from RGB colours and a separate alpha plane of the same size.
pub fn with_alpha(rgb: &RgbImage, alpha_from: &RgbaImage) -> RgbaImage {
    RgbaImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        image::Rgba([r, g, b, alpha_from.get_pixel(x, y)[3]])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div255_matches_pillow_rounding() {
        for v in [0u32, 127, 128, 255 * 255, 1000, 32640] {
            assert_eq!(
                u32::from(div255(v)),
                (v as f64 / 255.0).round() as u32,
                "{v}"
            );
        }
    }

    #[test]
    fn flatten_onto_white() {
        let rgba = RgbaImage::from_raw(3, 1, vec![10, 20, 30, 0, 10, 20, 30, 255, 0, 0, 0, 128])
            .unwrap_or_default();
        let rgb = to_diffusion_rgb(&DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.as_raw(), &[255, 255, 255, 10, 20, 30, 127, 127, 127]);
    }

    #[test]
    fn output_formats_by_extension() {
        assert_eq!(
            OutputFormat::from_path(Path::new("a.PNG")).ok(),
            Some(OutputFormat::Png)
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("a.jpeg")).ok(),
            Some(OutputFormat::Jpeg)
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("a.webp")).ok(),
            Some(OutputFormat::WebP)
        );
        assert!(OutputFormat::from_path(Path::new("a.gif")).is_err());
        assert!(OutputFormat::from_path(Path::new("noext")).is_err());
    }
}
