//! A1111's "stealth" PNG info (the `stealth_pnginfo` extension): the `parameters` text hidden
//! in the lowest bits of the pixels, for images whose text chunks get stripped on upload.
//!
//! The bits are read column by column (x outer, y inner): in alpha mode one bit per pixel
//! from the alpha channel, in RGB mode three (R, G, B). They spell a 15-byte signature
//! (`stealth_pnginfo` / `stealth_pngcomp` in alpha, `stealth_rgbinfo` / `stealth_rgbcomp` in
//! RGB; `comp` means gzip), a 32-bit big-endian bit count, then that many bits of UTF-8 text.

use std::io::Read;

use image::DynamicImage;

/// The signature's length in bits.
const SIGNATURE_BITS: usize = 15 * 8;

/// The hidden `parameters` text of `image`, if it has one.
pub fn read_stealth(image: &DynamicImage) -> Option<String> {
    if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        let (w, h) = rgba.dimensions();
        let bits = (0..w).flat_map(|x| (0..h).map(move |y| (x, y)));
        let alpha = bits.map(|(x, y)| rgba.get_pixel(x, y)[3] & 1);
        if let Some(text) = decode(alpha, "stealth_pnginfo", "stealth_pngcomp") {
            return Some(text);
        }
    }
    let rgb = image.to_rgb8();
    let (w, h) = rgb.dimensions();
    let bits = (0..w)
        .flat_map(|x| (0..h).map(move |y| (x, y)))
        .flat_map(|(x, y)| rgb.get_pixel(x, y).0.map(|c| c & 1));
    decode(bits, "stealth_rgbinfo", "stealth_rgbcomp")
}

/// Reads signature, length and text from a stream of bits.
fn decode(mut bits: impl Iterator<Item = u8>, plain: &str, gzip: &str) -> Option<String> {
    let mut take_bytes = |n_bits: usize| -> Option<Vec<u8>> {
        let mut bytes = vec![0u8; n_bits.div_ceil(8)];
        for i in 0..n_bits {
            let bit = bits.next()?;
            bytes[i / 8] |= bit << (7 - i % 8);
        }
        Some(bytes)
    };
    let signature = take_bytes(SIGNATURE_BITS)?;
    let compressed = if signature == plain.as_bytes() {
        false
    } else if signature == gzip.as_bytes() {
        true
    } else {
        return None;
    };
    let len = take_bytes(32)?;
    let n_bits = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let data = take_bytes(n_bits)?;
    let text = if compressed {
        let mut out = String::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_string(&mut out)
            .ok()?;
        out
    } else {
        String::from_utf8_lossy(&data).into_owned()
    };
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    /// Hides `payload` in the alpha bits of a new image, column by column.
    fn hide(signature: &str, payload: &[u8]) -> DynamicImage {
        let mut bits = Vec::new();
        let mut push = |bytes: &[u8]| {
            for b in bytes {
                bits.extend((0..8).rev().map(|i| (b >> i) & 1));
            }
        };
        push(signature.as_bytes());
        push(&((payload.len() * 8) as u32).to_be_bytes());
        push(payload);
        let (w, h) = (16u32, 64u32);
        let mut img = RgbaImage::from_pixel(w, h, Rgba([10, 20, 30, 254]));
        for (i, bit) in bits.iter().enumerate() {
            let (x, y) = (i as u32 / h, i as u32 % h);
            img.get_pixel_mut(x, y)[3] |= bit;
        }
        DynamicImage::ImageRgba8(img)
    }

    #[test]
    fn hidden_text_is_found_plain_and_gzipped() {
        let text = "a cat\nSteps: 20, Seed: 5";
        assert_eq!(
            read_stealth(&hide("stealth_pnginfo", text.as_bytes())).as_deref(),
            Some(text)
        );
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
            e.write_all(text.as_bytes()).unwrap();
        }
        assert_eq!(
            read_stealth(&hide("stealth_pngcomp", &gz)).as_deref(),
            Some(text)
        );
        assert_eq!(read_stealth(&hide("something_else!", b"x")), None);
        assert_eq!(read_stealth(&DynamicImage::new_rgb8(4, 4)), None);
    }
}
