//! Request bytes to an 8-bit RGB image, the way OpenCLIP's reference gets one:
//! `Image.open(f).convert("RGB")`.
//!
//! This module owns format detection (from the bytes, never from a content type), the decoding
//! limits (a decompression bomb is refused from its header, before any pixel buffer exists),
//! truncation (refused, as PIL refuses it, instead of decoding half an image), the EXIF
//! orientation policy, and the conversion of every decoded colour type to RGB with PIL's rules:
//! grey is replicated, alpha is dropped without compositing, palettes are expanded, 16-bit
//! samples keep their high byte (16-bit grey is clipped to 255, as PIL's `I;16` -> `RGB` does),
//! Adobe CMYK JPEGs get the naive `(255 - C)(255 - K) / 255` (done by zune-jpeg, within one level
//! of PIL). Animated GIF and WebP yield their first frame only, and only it is decoded.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// Whether to rotate an image by its EXIF orientation tag before preprocessing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExifPolicy {
    /// Rotate and flip as the tag says, so a phone photo is not embedded sideways (the default).
    #[default]
    Apply,
    /// Use the stored pixels as they are, as OpenCLIP's reference preprocessing does.
    Ignore,
}

/// Bounds on what one request may make the decoder allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width x height accepted, checked against the header before decoding.
    pub max_pixels: u64,
    /// Largest allocation the decoders may make (the decoded buffer included).
    pub max_alloc_bytes: u64,
}

impl DecodeLimits {
    /// Limits for `max_pixels`, with room for the widest decoded form (16-bit RGBA, 8 bytes a
    /// pixel) plus decoder scratch.
    pub fn for_pixels(max_pixels: u64) -> DecodeLimits {
        DecodeLimits {
            max_pixels,
            max_alloc_bytes: max_pixels.saturating_mul(8).saturating_add(64 << 20),
        }
    }
}

impl Default for DecodeLimits {
    /// 50 megapixels: larger than phone photos (48 MP sensors), far below what exhausts memory.
    fn default() -> DecodeLimits {
        DecodeLimits::for_pixels(50_000_000)
    }
}

/// Why some bytes did not become an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Zero bytes.
    #[error("the image is empty (0 bytes)")]
    Empty,
    /// The bytes start like no supported format.
    #[error("unrecognised image format (supported: JPEG, PNG, GIF, WebP, BMP, TIFF)")]
    UnknownFormat,
    /// A recognised format this service does not decode, or a feature of one it does not support.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The header declares more pixels than the limit allows.
    #[error("image is {width}x{height}, more than the limit of {max_pixels} pixels")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit in force.
        max_pixels: u64,
    },
    /// Decoding would allocate more memory than allowed.
    #[error("decoding this image needs more memory than allowed: {0}")]
    MemoryLimit(String),
    /// The data ends before the image does.
    #[error("image file is truncated")]
    Truncated,
    /// The data is malformed.
    #[error("corrupt {format} image: {detail}")]
    Corrupt {
        /// The detected format.
        format: &'static str,
        /// What the decoder reported.
        detail: String,
    },
}

/// Decodes `bytes` into an RGB image the way `PIL.Image.open(f).convert("RGB")` does, refusing
/// oversized, truncated and unknown input with a typed error, and rotating by EXIF orientation
/// if `exif` says so.
pub fn decode_rgb(
    bytes: &[u8],
    limits: &DecodeLimits,
    exif: ExifPolicy,
) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff(bytes)?;
    let name = format_name(format);
    if format == ImageFormat::Jpeg && jpeg_scan(bytes) == JpegScan::Truncated {
        return Err(ImageError::Truncated);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits);
    // Only the header is read here.
    let mut decoder = reader.into_decoder().map_err(|e| map_error(e, name))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt {
            format: name,
            detail: format!("declared size {width}x{height}"),
        });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    if decoder.total_bytes() > limits.max_alloc_bytes {
        return Err(ImageError::MemoryLimit(format!(
            "{} bytes for the decoded pixels, limit {}",
            decoder.total_bytes(),
            limits.max_alloc_bytes
        )));
    }
    let orientation = match exif {
        // A tag that cannot be read is treated as absent: the pixels are still good.
        ExifPolicy::Apply => decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms),
        ExifPolicy::Ignore => image::metadata::Orientation::NoTransforms,
    };
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| map_error(e, name))?;
    let mut rgb = DynamicImage::ImageRgb8(to_rgb_like_pil(decoded));
    rgb.apply_orientation(orientation);
    Ok(rgb.into_rgb8())
}

/// Detects the format from the leading bytes; only the formats this service decodes pass.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    match image::guess_format(bytes) {
        Ok(
            f @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Bmp
            | ImageFormat::Tiff),
        ) => Ok(f),
        Ok(other) => Err(ImageError::Unsupported(format!("{other:?} images"))),
        Err(_) => Err(ImageError::UnknownFormat),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "image",
    }
}

fn map_error(err: image::ImageError, format: &'static str) -> ImageError {
    use image::ImageError as E;
    match err {
        E::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Truncated,
        E::Limits(e) => ImageError::MemoryLimit(e.to_string()),
        E::Unsupported(e) => ImageError::Unsupported(e.to_string()),
        other => {
            let detail = other.to_string();
            if looks_truncated(&detail) {
                ImageError::Truncated
            } else {
                ImageError::Corrupt { format, detail }
            }
        }
    }
}

/// Decoders report running out of data as a decoding error with a message, not a kind.
fn looks_truncated(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "unexpected eof",
        "unexpected end",
        "end of file",
        "truncated",
        "no more data",
    ]
    .iter()
    .any(|needle| d.contains(needle))
}

/// PIL's `convert("RGB")` for every colour type the decoders produce.
fn to_rgb_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    // One RGB triple per pixel of `raw` (`channels` values each), written by `f` from the
    // pixel's values, into a buffer sized once (a collect of a flat_map grew it as it went).
    fn per_pixel<T: Copy>(raw: &[T], channels: usize, f: impl Fn(&[T]) -> [u8; 3]) -> Vec<u8> {
        let mut out = vec![0u8; raw.len() / channels * 3];
        for (o, p) in out.chunks_exact_mut(3).zip(raw.chunks_exact(channels)) {
            o.copy_from_slice(&f(p));
        }
        out
    }
    let from = |data: Vec<u8>| {
        RgbImage::from_raw(w, h, data).expect("one RGB triple was produced per decoded pixel")
    };
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => from(per_pixel(rgba.as_raw(), 4, |p| [p[0], p[1], p[2]])),
        DynamicImage::ImageLuma8(l) => from(per_pixel(l.as_raw(), 1, |p| [p[0]; 3])),
        DynamicImage::ImageLumaA8(la) => from(per_pixel(la.as_raw(), 2, |p| [p[0]; 3])),
        // PIL opens 16-bit grey as I;16, whose conversion to RGB clips at 255 instead of scaling.
        DynamicImage::ImageLuma16(l) => {
            from(per_pixel(l.as_raw(), 1, |p| [p[0].min(255) as u8; 3]))
        }
        // Every other 16-bit mode is unpacked by PIL keeping the high byte.
        DynamicImage::ImageLumaA16(la) => {
            from(per_pixel(la.as_raw(), 2, |p| [(p[0] >> 8) as u8; 3]))
        }
        DynamicImage::ImageRgb16(rgb) => {
            from(rgb.as_raw().iter().map(|&v| (v >> 8) as u8).collect())
        }
        DynamicImage::ImageRgba16(rgba) => from(per_pixel(rgba.as_raw(), 4, |p| {
            [p[0], p[1], p[2]].map(|v| (v >> 8) as u8)
        })),
        // Float images (some TIFFs) have no PIL RGB equivalent; scale [0, 1] to [0, 255].
        other => other.into_rgb8(),
    }
}

/// What a walk over a JPEG's marker segments found.
#[derive(Debug, PartialEq, Eq)]
enum JpegScan {
    /// The segments and entropy-coded scans run into an EOI marker.
    Complete,
    /// The data ends first; libjpeg would ask for more bytes and PIL reports a truncated file.
    Truncated,
    /// The structure is broken in another way; the decoder will give the detailed error.
    Malformed,
}

/// Walks the JPEG marker structure to its EOI without decoding anything.
///
/// zune-jpeg, as the image crate configures it, fills missing data with grey; PIL instead
/// fails when libjpeg needs bytes after the end of the file, and libjpeg reads up to EOI.
fn jpeg_scan(bytes: &[u8]) -> JpegScan {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return JpegScan::Malformed;
    }
    let n = bytes.len();
    let mut i = 2;
    loop {
        // Skip anything up to the next marker (libjpeg warns about such bytes and goes on),
        // then any 0xFF fill bytes.
        match bytes[i..].iter().position(|&b| b == 0xFF) {
            Some(p) => i += p,
            None => return JpegScan::Truncated,
        }
        while i < n && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return JpegScan::Truncated;
        };
        i += 1;
        match marker {
            0xD9 => return JpegScan::Complete,
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD8 => continue,
            0x00 => return JpegScan::Malformed,
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2) else {
            return JpegScan::Truncated;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 {
            return JpegScan::Malformed;
        }
        i += len;
        if i > n {
            return JpegScan::Truncated;
        }
        if marker == 0xDA {
            // Entropy-coded data: 0xFF is followed by 0x00 (stuffing) or RSTn inside the scan;
            // any other marker ends it.
            loop {
                match bytes[i..].iter().position(|&b| b == 0xFF) {
                    Some(p) => i += p,
                    None => return JpegScan::Truncated,
                }
                match bytes.get(i + 1) {
                    None => return JpegScan::Truncated,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).expect("encoding to memory");
        out.into_inner()
    }

    #[test]
    fn zero_bytes_are_an_empty_error() {
        let e = decode_rgb(&[], &DecodeLimits::default(), ExifPolicy::Apply);
        assert!(matches!(e, Err(ImageError::Empty)));
    }

    #[test]
    fn random_bytes_are_an_unknown_format() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let e = decode_rgb(&bytes, &DecodeLimits::default(), ExifPolicy::Apply);
        assert!(matches!(e, Err(ImageError::UnknownFormat)), "{e:?}");
    }

    #[test]
    fn a_png_signature_alone_is_an_error_not_a_panic() {
        let e = decode_rgb(
            b"\x89PNG\r\n\x1a\n",
            &DecodeLimits::default(),
            ExifPolicy::Apply,
        );
        assert!(e.is_err());
    }

    #[test]
    fn rgba_converts_by_dropping_alpha_without_compositing() {
        let img = image::RgbaImage::from_pixel(3, 2, image::Rgba([200, 100, 50, 0]));
        let png = encode(DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let rgb = decode_rgb(&png, &DecodeLimits::default(), ExifPolicy::Ignore).expect("valid");
        assert!(rgb.pixels().all(|p| p.0 == [200, 100, 50]));
    }

    #[test]
    fn sixteen_bit_grey_clips_like_pil_and_sixteen_bit_rgb_keeps_the_high_byte() {
        let grey = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![200u16, 300])
            .expect("2 pixels");
        let png = encode(DynamicImage::ImageLuma16(grey), ImageFormat::Png);
        let rgb = decode_rgb(&png, &DecodeLimits::default(), ExifPolicy::Ignore).expect("valid");
        assert_eq!(rgb.as_raw(), &[200, 200, 200, 255, 255, 255]);

        let color =
            image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(1, 1, vec![0x12ff, 0x3400, 0xffff])
                .expect("1 pixel");
        let png = encode(DynamicImage::ImageRgb16(color), ImageFormat::Png);
        let rgb = decode_rgb(&png, &DecodeLimits::default(), ExifPolicy::Ignore).expect("valid");
        assert_eq!(rgb.as_raw(), &[0x12, 0x34, 0xff]);
    }

    #[test]
    fn a_jpeg_without_its_end_marker_is_truncated() {
        let img = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 9, 7]));
        let jpeg = encode(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg);
        assert_eq!(jpeg_scan(&jpeg), JpegScan::Complete);
        for cut in [2, 3, 10, jpeg.len() / 2] {
            assert_eq!(
                jpeg_scan(&jpeg[..jpeg.len() - cut]),
                JpegScan::Truncated,
                "cut {cut}"
            );
            let e = decode_rgb(
                &jpeg[..jpeg.len() - cut],
                &DecodeLimits::default(),
                ExifPolicy::Apply,
            );
            assert!(matches!(e, Err(ImageError::Truncated)), "cut {cut}: {e:?}");
        }
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailing bytes after EOI");
        assert_eq!(jpeg_scan(&trailing), JpegScan::Complete);
    }

    #[test]
    fn a_palette_png_with_transparency_converts_like_pil() {
        // Written by Pillow: 4x2, 2-bit palette, index 1 transparent (tRNS).
        const PNG: [u8; 107] = [
            0x89, 0x50, 0x4e, 0x47, 0xd, 0xa, 0x1a, 0xa, 0x0, 0x0, 0x0, 0xd, 0x49, 0x48, 0x44,
            0x52, 0x0, 0x0, 0x0, 0x4, 0x0, 0x0, 0x0, 0x2, 0x2, 0x3, 0x0, 0x0, 0x0, 0x2, 0xc6, 0x95,
            0xf0, 0x0, 0x0, 0x0, 0xc, 0x50, 0x4c, 0x54, 0x45, 0xa, 0x14, 0x1e, 0xc8, 0x64, 0x32,
            0x0, 0xff, 0x0, 0xff, 0xff, 0xff, 0x5a, 0xe, 0x83, 0x11, 0x0, 0x0, 0x0, 0x2, 0x74,
            0x52, 0x4e, 0x53, 0xff, 0x0, 0xe5, 0xb7, 0x30, 0x4a, 0x0, 0x0, 0x0, 0xc, 0x49, 0x44,
            0x41, 0x54, 0x78, 0x9c, 0x63, 0x90, 0x66, 0x78, 0x2, 0x0, 0x1, 0x39, 0x1, 0x0, 0x45,
            0x64, 0x91, 0x9b, 0x0, 0x0, 0x0, 0x0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
        ];
        // Pillow 13: Image.open(f).convert("RGB").tobytes()
        const PIL_RGB: [u8; 24] = [
            10, 20, 30, 200, 100, 50, 0, 255, 0, 255, 255, 255, 255, 255, 255, 0, 255, 0, 200, 100,
            50, 10, 20, 30,
        ];
        let rgb = decode_rgb(&PNG, &DecodeLimits::default(), ExifPolicy::Apply).expect("valid");
        assert_eq!(rgb.as_raw()[..], PIL_RGB[..]);
    }

    #[test]
    fn an_animated_gif_yields_its_first_frame() {
        use image::codecs::gif::GifEncoder;
        let frame = |rgba: [u8; 4]| {
            image::Frame::new(image::RgbaImage::from_pixel(4, 3, image::Rgba(rgba)))
        };
        let mut gif = Vec::new();
        GifEncoder::new(&mut gif)
            .encode_frames([frame([255, 0, 0, 255]), frame([0, 0, 255, 255])])
            .expect("encoding to memory");
        let rgb = decode_rgb(&gif, &DecodeLimits::default(), ExifPolicy::Apply).expect("valid");
        assert_eq!(rgb.dimensions(), (4, 3));
        assert!(rgb.pixels().all(|p| p.0 == [255, 0, 0]));
    }

    #[test]
    fn the_pixel_limit_is_checked_against_the_header() {
        let img = RgbImage::new(100, 100);
        let png = encode(DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let e = decode_rgb(&png, &DecodeLimits::for_pixels(9_999), ExifPolicy::Apply);
        assert!(matches!(
            e,
            Err(ImageError::TooLarge {
                width: 100,
                height: 100,
                ..
            })
        ));
    }
}
