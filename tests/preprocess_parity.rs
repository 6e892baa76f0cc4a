//! Image preprocessing against OpenCLIP's Python reference.
//!
//! `tests/fixtures/photos/` holds the photos, `tests/fixtures/reference/tiny/reference.json`
//! lists for each the 224x224 uint8 crop that open_clip's eval transform produced (before
//! `ToTensor`), stored as `tests/fixtures/reference/tiny/pixels/<photo>.png`, and the photos that
//! PIL refused. The Rust crop must be within 1/255 on average and 4/255 at most of the reference
//! (JPEG decoders differ by a few levels); for lossless formats it must be identical, which pins
//! the resampling to Pillow's exactly. The rest covers the decoder's edges: EXIF orientation,
//! decompression bombs, 1x1 images, truncated and meaningless bytes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clipserve::preprocess::image::{decode_rgb, DecodeLimits, ExifPolicy, ImageError};
use clipserve::preprocess::pixels::PreprocessConfig;
use image::{DynamicImage, ImageFormat, RgbImage};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn photo(name: &str) -> Vec<u8> {
    let path = fixtures().join("photos").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[derive(Deserialize)]
struct Reference {
    images: Vec<ReferenceImage>,
    errors: Vec<ReferenceError>,
}

#[derive(Deserialize)]
struct ReferenceImage {
    file: String,
    pixels: String,
}

#[derive(Deserialize)]
struct ReferenceError {
    file: String,
}

fn reference() -> Reference {
    let path = fixtures().join("reference/tiny/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the reference crops are exported by the Python exporter",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The image files in `tests/fixtures/photos` (it also holds a manifest and licences).
fn photo_names() -> Vec<String> {
    let dir = fixtures().join("photos");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| {
            e.expect("listing photos")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| {
            let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
            matches!(
                ext.as_str(),
                "jpg" | "jpeg" | "png" | "gif" | "webp" | "bmp" | "tif" | "tiff"
            )
        })
        .collect();
    names.sort();
    names
}

/// The model folder's own `visual/preprocess_cfg.json`, which the reference was made with.
fn model_config() -> PreprocessConfig {
    let path = fixtures().join("models/tiny/visual/preprocess_cfg.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    PreprocessConfig::from_json(json).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_lossless(file: &str) -> bool {
    let ext = file.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    matches!(ext.as_str(), "png" | "bmp" | "gif" | "tif" | "tiff")
}

/// Mean and maximum absolute difference, in uint8 levels.
fn diff(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let (sum, max) = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .fold((0u64, 0u8), |(s, m), d| (s + u64::from(d), m.max(d)));
    (sum as f64 / a.as_raw().len() as f64, max)
}

#[test]
fn every_photo_crops_like_open_clip() {
    let reference = reference();
    let config = model_config();
    assert_eq!(
        config,
        PreprocessConfig::default(),
        "open_clip's settings for this model"
    );
    let limits = DecodeLimits::default();
    let mut failures = Vec::new();
    eprintln!(
        "{:<36} {:>10} {:>4}  (in levels of 1/255)",
        "photo", "mean", "max"
    );
    for entry in &reference.images {
        let img = match decode_rgb(&photo(&entry.file), &limits, ExifPolicy::Ignore) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{}: decode failed: {e}", entry.file));
                continue;
            }
        };
        let crop = config.crop(&img);
        let want_path = fixtures().join("reference/tiny").join(&entry.pixels);
        let want = image::open(&want_path)
            .unwrap_or_else(|e| panic!("{}: {e}", want_path.display()))
            .into_rgb8();
        let (mean, max) = diff(&crop, &want);
        eprintln!("{:<36} {:>10.4} {:>4}", entry.file, mean, max);
        let max_allowed = if is_lossless(&entry.file) { 0 } else { 4 };
        if mean > 1.0 || max > max_allowed {
            failures.push(format!(
                "{}: mean {mean:.4}/255, max {max}/255 (allowed 1.0 and {max_allowed})",
                entry.file
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_reference_covers_every_photo() {
    let reference = reference();
    let listed: BTreeSet<&str> = reference
        .images
        .iter()
        .map(|i| i.file.as_str())
        .chain(reference.errors.iter().map(|e| e.file.as_str()))
        .collect();
    let names = photo_names();
    assert!(names.len() >= 20, "only {} photos found", names.len());
    for name in names {
        assert!(listed.contains(name.as_str()), "{name} has no reference");
    }
}

#[test]
fn photos_pil_refuses_are_refused_here_too() {
    let reference = reference();
    assert!(reference
        .errors
        .iter()
        .any(|e| e.file == "pillow_truncated_jpeg.jpg"));
    for entry in &reference.errors {
        let result = decode_rgb(
            &photo(&entry.file),
            &DecodeLimits::default(),
            ExifPolicy::Ignore,
        );
        assert!(result.is_err(), "{} decoded, PIL refuses it", entry.file);
    }
    let truncated = decode_rgb(
        &photo("pillow_truncated_jpeg.jpg"),
        &DecodeLimits::default(),
        ExifPolicy::Apply,
    );
    assert!(
        matches!(truncated, Err(ImageError::Truncated)),
        "{truncated:?}"
    );
}

#[test]
fn exif_apply_turns_every_orientation_upright() {
    let limits = DecodeLimits::default();
    let upright = decode_rgb(&photo("pillow_hopper.jpg"), &limits, ExifPolicy::Apply)
        .expect("upright photo decodes");
    for n in 2..=8 {
        let bytes = photo(&format!("pillow_hopper_orientation_{n}.jpg"));
        let applied = decode_rgb(&bytes, &limits, ExifPolicy::Apply).expect("decodes");
        let ignored = decode_rgb(&bytes, &limits, ExifPolicy::Ignore).expect("decodes");
        let (applied_mean, _) = diff(&applied, &upright);
        let (ignored_mean, _) = diff(&ignored, &upright);
        // The rotated copies were re-encoded, so "the same" means a few levels on average
        // (PIL's exif_transpose gives 4.6 to 4.9 here too).
        assert!(
            applied_mean < 8.0 && applied_mean * 5.0 < ignored_mean,
            "orientation {n}: applied {applied_mean:.2}, ignored {ignored_mean:.2}"
        );
    }
    let rectangle = photo("pillow_orientation_rectangle.jpg");
    let applied = decode_rgb(&rectangle, &limits, ExifPolicy::Apply).expect("decodes");
    let ignored = decode_rgb(&rectangle, &limits, ExifPolicy::Ignore).expect("decodes");
    assert_eq!(
        (applied.dimensions(), ignored.dimensions()),
        ((1, 2), (2, 1))
    );
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encoding to memory");
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A small valid file whose header is rewritten to declare `side` x `side` pixels.
fn bomb(format: ImageFormat, side: u16) -> Vec<u8> {
    let small = DynamicImage::ImageRgb8(RgbImage::new(8, 8));
    let mut bytes = encode(small, format);
    match format {
        ImageFormat::Png => {
            // IHDR data starts at 16 and its CRC (over type and data) at 29.
            bytes[16..20].copy_from_slice(&u32::from(side).to_be_bytes());
            bytes[20..24].copy_from_slice(&u32::from(side).to_be_bytes());
            let crc = crc32(&bytes[12..29]);
            bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        }
        ImageFormat::Gif => {
            // Logical screen width and height, little-endian, after the 6-byte signature.
            bytes[6..8].copy_from_slice(&side.to_le_bytes());
            bytes[8..10].copy_from_slice(&side.to_le_bytes());
        }
        ImageFormat::Jpeg => {
            let sof = bytes
                .windows(2)
                .position(|w| w == [0xFF, 0xC0])
                .expect("baseline JPEG has SOF0");
            // Marker, length (2), precision (1), then height and width.
            bytes[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
            bytes[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
        }
        other => panic!("no bomb recipe for {other:?}"),
    }
    bytes
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_bomb_header_is_refused_before_allocating() {
    for (format, side) in [
        (ImageFormat::Png, 50_000),
        (ImageFormat::Gif, 50_000),
        (ImageFormat::Jpeg, 65_000),
    ] {
        let bytes = bomb(format, side);
        let rss_before = peak_rss_kib();
        let started = Instant::now();
        let result = decode_rgb(&bytes, &DecodeLimits::default(), ExifPolicy::Apply);
        assert!(
            matches!(result, Err(ImageError::TooLarge { width, height, .. })
                if width == u32::from(side) && height == u32::from(side)),
            "{format:?}: {result:?}"
        );
        // Allocating and filling the declared buffer (7.5 GB and more) would show in both.
        assert!(started.elapsed() < Duration::from_secs(2), "{format:?}");
        if let (Some(before), Some(after)) = (rss_before, peak_rss_kib()) {
            // saturating: the kernel updates VmHWM lazily, so a later read can be lower.
            assert!(
                after.saturating_sub(before) < 256 * 1024,
                "{format:?}: peak RSS grew"
            );
        }
        // With the pixel limit lifted, the allocation limit still refuses it up front.
        let limits = DecodeLimits {
            max_pixels: u64::MAX,
            max_alloc_bytes: 1 << 30,
        };
        let result = decode_rgb(&bytes, &limits, ExifPolicy::Apply);
        assert!(
            matches!(result, Err(ImageError::MemoryLimit(_))),
            "{format:?}: {result:?}"
        );
    }
}

#[test]
fn one_by_one_images_decode_and_preprocess() {
    let pixel = RgbImage::from_pixel(1, 1, image::Rgb([200, 120, 40]));
    let config = PreprocessConfig::default();
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
        ImageFormat::WebP,
    ] {
        let bytes = encode(DynamicImage::ImageRgb8(pixel.clone()), format);
        let img = decode_rgb(&bytes, &DecodeLimits::default(), ExifPolicy::Apply)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(img.dimensions(), (1, 1), "{format:?}");
        let crop = config.crop(&img);
        assert!(
            crop.pixels().all(|p| p == img.get_pixel(0, 0)),
            "{format:?}"
        );
        let tensor = config.tensor(&img);
        assert_eq!((tensor.height(), tensor.width()), (224, 224));
        assert_eq!(tensor.as_slice().len(), 3 * 224 * 224);
    }
}

#[test]
fn empty_random_and_foreign_bytes_are_typed_errors() {
    let limits = DecodeLimits::default();
    let decode = |bytes: &[u8]| decode_rgb(bytes, &limits, ExifPolicy::Apply);
    assert!(matches!(decode(b""), Err(ImageError::Empty)));
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert!(matches!(decode(&random), Err(ImageError::UnknownFormat)));
    assert!(matches!(
        decode(b"hello, world"),
        Err(ImageError::UnknownFormat)
    ));
    assert!(matches!(
        decode(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n"),
        Err(ImageError::Unsupported(_))
    ));
    // A recognised signature followed by garbage: an error, not a panic.
    for magic in [
        &b"\x89PNG\r\n\x1a\n"[..],
        b"GIF89a",
        b"\xFF\xD8\xFF",
        b"BM",
        b"II*\0",
    ] {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&random[..200]);
        assert!(decode(&bytes).is_err(), "{magic:?}");
    }
}

#[test]
fn truncated_photos_never_panic_and_truncated_jpegs_are_errors() {
    for name in photo_names() {
        let bytes = photo(&name);
        for i in 1..16 {
            let cut = &bytes[..bytes.len() * i / 16];
            let result = decode_rgb(cut, &DecodeLimits::default(), ExifPolicy::Apply);
            if name.ends_with(".jpg") {
                assert!(result.is_err(), "{name} cut to {} bytes decoded", cut.len());
            }
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn every_resize_mode_matches_open_clip_exactly() {
    // FNV-1a of the uint8 output of open_clip.image_transform(is_train=False, **config) without
    // ToTensor/Normalize, on Image.frombytes of the same synthetic pixels (open_clip 3.3.0,
    // Pillow 13, torchvision 0.29).
    let configs = [
        serde_json::json!({"size": 224}),
        serde_json::json!({"size": 224, "resize_mode": "longest", "fill_color": 7}),
        serde_json::json!({"size": 224, "resize_mode": "squash", "interpolation": "bilinear"}),
        serde_json::json!({"size": [256, 192], "resize_mode": "shortest"}),
        serde_json::json!({"size": [200, 240], "resize_mode": "longest", "fill_color": 255,
            "interpolation": "bilinear"}),
    ];
    let expected: [((u32, u32), [u64; 5]); 2] = [
        (
            (7, 5),
            [
                0xc21e9bcf3518c5db,
                0xdef4a8c12bec8992,
                0xafbffaa0806f55ce,
                0x17b67d4ca99a59b8,
                0xbea6d9063daff854,
            ],
        ),
        (
            (300, 451),
            [
                0x550ec9ad38ea293b,
                0x8001ded4da0fba85,
                0xf50cbcf4aa21d8f4,
                0x007f3d1936530b30,
                0x20e861dcc4d8228f,
            ],
        ),
    ];
    for ((w, h), hashes) in expected {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 37 + y * 11) as u8,
                (x * 5 + y * 53) as u8,
                ((x ^ y) * 29) as u8,
            ])
        });
        for (config, want) in configs.iter().zip(hashes) {
            let cfg = PreprocessConfig::from_json(config.clone()).expect("valid config");
            let crop = cfg.crop(&img);
            let (height, width) = cfg.size();
            assert_eq!(crop.dimensions(), (width, height), "{config}");
            assert_eq!(fnv1a(crop.as_raw()), want, "{w}x{h} with {config}");
        }
    }
}
