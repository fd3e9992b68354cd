//! Reading inputs: formats, orientation, conversions and every kind of bad file.

use crate::common;

use image::{DynamicImage, GenericImageView, ImageEncoder};
use loopback_core::io::{check_output, load_image, save_image, to_diffusion_rgb, write_atomic};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn err_of(path: &std::path::Path) -> String {
    load_image(path).expect_err("should fail").to_string()
}

#[test]
fn reads_png_jpeg_webp() {
    let dir = temp();
    let coffee = load_image(&common::data("coffee.png")).unwrap();
    assert_eq!(coffee.dimensions(), (600, 400));
    let jpg = dir.path().join("c.jpg");
    let webp = dir.path().join("c.webp");
    save_image(&jpg, &coffee, &[], false).unwrap();
    save_image(&webp, &coffee, &[], false).unwrap();
    assert_eq!(load_image(&jpg).unwrap().dimensions(), (600, 400));
    let back = load_image(&webp).unwrap();
    assert_eq!(back.to_rgb8(), coffee.to_rgb8(), "lossless WebP round trip");
}

/// Inserts an EXIF APP1 segment with the given orientation right after the JPEG SOI marker.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    exif.extend_from_slice(&[0, 1]); // one IFD entry
    exif.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]); // Orientation, SHORT, count 1
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // padding, next IFD = 0
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn jpeg_exif_orientation_is_applied() {
    let dir = temp();
    let img = image::RgbImage::from_fn(40, 16, |x, _| {
        image::Rgb(if x < 20 { [255, 0, 0] } else { [0, 0, 255] })
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .write_image(img.as_raw(), 40, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    let path = dir.path().join("rotated.jpg");
    std::fs::write(&path, with_exif_orientation(&jpeg, 6)).unwrap();
    let loaded = load_image(&path).unwrap();
    assert_eq!(
        loaded.dimensions(),
        (16, 40),
        "orientation 6 rotates by 90°"
    );
    // Rotated 90° clockwise: the red left half is now on top.
    let rgb = loaded.to_rgb8();
    assert!(rgb.get_pixel(8, 2)[0] > 200 && rgb.get_pixel(8, 37)[2] > 200);
}

#[test]
fn sixteen_bit_grayscale_and_alpha_become_8_bit_rgb() {
    let dir = temp();
    let gray16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(9, 5, |x, _| {
        image::Luma([x as u16 * 8000])
    });
    let path = dir.path().join("g16.png");
    DynamicImage::ImageLuma16(gray16).save(&path).unwrap();
    let loaded = load_image(&path).unwrap();
    let rgb = to_diffusion_rgb(&loaded);
    assert_eq!(rgb.dimensions(), (9, 5));
    let p = rgb.get_pixel(8, 0);
    assert_eq!(p[0], p[1]);
    assert_eq!(p[0], (64000.0f64 / 257.0).round() as u8);

    let logo = load_image(&common::data("logo.png")).unwrap();
    assert!(logo.color().has_alpha());
    let flat = to_diffusion_rgb(&logo);
    // The logo's fully transparent corner becomes white.
    assert_eq!(flat.get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn bad_files_give_one_line_errors_naming_the_file() {
    let dir = temp();
    let missing = dir.path().join("missing.png");
    assert!(err_of(&missing).contains("missing.png: no such file"));

    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert!(err_of(&empty).ends_with("empty.png: the file is empty"));

    let text = dir.path().join("notes.png");
    std::fs::write(&text, b"hello, this is not an image\n").unwrap();
    assert!(err_of(&text).contains("not an image"), "{}", err_of(&text));

    let coffee = std::fs::read(common::data("coffee.png")).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &coffee[..coffee.len() / 2]).unwrap();
    let msg = err_of(&truncated);
    assert!(
        msg.contains("truncated.png") && msg.contains("truncated or corrupt"),
        "{msg}"
    );

    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, common::huge_png_header(20_000, 20_000)).unwrap();
    let msg = err_of(&huge);
    assert!(
        msg.contains("20000x20000") && msg.contains("100-megapixel"),
        "{msg}"
    );

    let folder = dir.path().join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    assert!(err_of(&folder).contains("is a folder"));

    let gif = dir.path().join("a.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    assert!(err_of(&gif).contains("not supported") || err_of(&gif).contains("not an image"));

    for path in [&missing, &empty, &text, &truncated, &huge, &folder, &gif] {
        assert!(!err_of(path).contains('\n'));
    }
}

#[test]
fn writes_are_atomic_and_never_clobber() {
    let dir = temp();
    let out = dir.path().join("out.png");
    write_atomic(&out, b"first", false).unwrap();
    let err = write_atomic(&out, b"second", false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"first");
    write_atomic(&out, b"third", true).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"third");
    assert_eq!(
        common::files_in(dir.path()),
        ["out.png"],
        "no temporary files left"
    );

    assert!(
        check_output(&dir.path().join("nope/out.png"), false)
            .unwrap_err()
            .to_string()
            .contains("folder does not exist")
    );
    assert!(check_output(&dir.path().join("out.tiff"), false).is_err());
}

/// On Windows a file another program holds open without sharing cannot be replaced: saving
/// over it fails with one line naming the file and the likely cause, the old file stays
/// whole, and no temporary file is left behind.
#[cfg(windows)]
#[test]
fn replacing_a_file_open_elsewhere_fails_cleanly() {
    use std::os::windows::fs::OpenOptionsExt;
    let dir = temp();
    let out = dir.path().join("viewed in another program.png");
    write_atomic(&out, b"first", false).unwrap();
    // What an image viewer does: read access, no sharing (share mode 0).
    let held = std::fs::OpenOptions::new()
        .read(true)
        .share_mode(0)
        .open(&out)
        .unwrap();
    let err = write_atomic(&out, b"second", true).unwrap_err().to_string();
    assert!(
        err.contains("viewed in another program.png") && err.contains("open in another program"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    drop(held);
    assert_eq!(std::fs::read(&out).unwrap(), b"first");
    assert_eq!(
        common::files_in(dir.path()),
        ["viewed in another program.png"]
    );
    write_atomic(&out, b"third", true).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"third");
}
