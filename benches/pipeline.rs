//! Criterion benchmarks of each stage a request goes through: image decode, resize and
//! normalize (reported per megapixel of input), loading the tokenizer, text cleaning and
//! tokenization, and the two encoders at batch 1, 8 and 32.
//!
//! ```text
//! cargo bench --bench pipeline                                  # encoders on the tiny fixture
//! CLIPSERVE_BENCH_MODEL=/path/to/full-size cargo bench --bench pipeline -- encoders
//! ```
//!
//! The encoders default to the committed tiny model (so the bench runs anywhere); the figures
//! that matter come from a full-size export. `bench/run.sh` compares the encoders with ONNX
//! Runtime and PyTorch side by side (benches/compare.rs); this file tracks each stage alone.

use std::path::PathBuf;

use clipserve::engine::{Engine, EngineSettings};
use clipserve::preprocess::image::{decode_rgb, DecodeLimits, ExifPolicy};
use clipserve::preprocess::pixels::PreprocessConfig;
use clipserve::preprocess::text::TextTokenizer;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fixture photos of several formats and sizes.
const PHOTOS: &[&str] = &[
    "pillow_hopper.jpg",
    "skimage_rocket.jpg",
    "skimage_chelsea.png",
    "pillow_hopper.webp",
];

/// Queries of a search front-end, in several languages and lengths.
const TEXTS: &[&str] = &[
    "a photo of a cat",
    "una foto de un gato en la playa al atardecer",
    "猫の写真",
    "фотография кошки на диване",
    "Ein Hund spielt im Schnee mit einem roten Ball, während Kinder im Hintergrund lachen.",
    "صورة قطة",
];

fn preprocessing(c: &mut Criterion) {
    let config = PreprocessConfig::default();
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("preprocess");
    for name in PHOTOS {
        let bytes = std::fs::read(repo().join("tests/fixtures/photos").join(name)).unwrap();
        let decoded = decode_rgb(&bytes, &limits, ExifPolicy::Apply).unwrap();
        let megapixels = u64::from(decoded.width()) * u64::from(decoded.height());
        // Elements = input pixels, so criterion reports pixels/s (divide by 1e6 for MP/s).
        group.throughput(Throughput::Elements(megapixels));
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode_rgb(&bytes, &limits, ExifPolicy::Apply).unwrap())
        });
        group.bench_function(format!("resize_crop/{name}"), |b| {
            b.iter(|| config.crop(&decoded))
        });
        let crop = config.crop(&decoded);
        group.bench_function(format!("normalize/{name}"), |b| {
            b.iter(|| config.normalize(&crop))
        });
        group.bench_function(format!("all/{name}"), |b| {
            b.iter(|| {
                let img = decode_rgb(&bytes, &limits, ExifPolicy::Apply).unwrap();
                config.tensor(&img)
            })
        });
    }
    group.finish();
}

fn tokenization(c: &mut Criterion) {
    let path = repo().join("tests/fixtures/models/tiny/textual/tokenizer.json");
    let tokenizer = TextTokenizer::from_file(&path, 77).unwrap();
    let mut group = c.benchmark_group("tokenize");
    // Start-up cost: parsing XLM-R's 9 MB tokenizer.json and building the model.
    group.sample_size(10);
    group.bench_function("load", |b| {
        b.iter(|| TextTokenizer::from_file(&path, 77).unwrap())
    });
    group.sample_size(100);
    group.throughput(Throughput::Elements(TEXTS.len() as u64));
    group.bench_function("clean_and_encode/6_queries", |b| {
        b.iter(|| {
            TEXTS
                .iter()
                .map(|t| tokenizer.encode(t).unwrap().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

fn encoders(c: &mut Criterion) {
    let model = std::env::var_os("CLIPSERVE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/fixtures/models/tiny"));
    let defaults = clipserve::config::Settings::default().model;
    let settings = EngineSettings {
        image_precision: Default::default(),
        ..clipserve::service::engine_settings(&defaults)
    };
    let engine = Engine::load(&model, &settings).unwrap();
    let pixels: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let ids: Vec<Vec<u32>> = TEXTS
        .iter()
        .map(|t| engine.tokenizer.encode(t).unwrap().as_slice().to_vec())
        .collect();
    let mut group = c.benchmark_group("encoders");
    group.sample_size(10);
    for batch in [1usize, 8, 32] {
        group.throughput(Throughput::Elements(batch as u64));
        let images: Vec<&[f32]> = vec![pixels.as_slice(); batch];
        group.bench_function(format!("image/b{batch}"), |b| {
            b.iter(|| engine.image.embed(&images).unwrap())
        });
        let texts: Vec<&[u32]> = (0..batch).map(|i| ids[i % ids.len()].as_slice()).collect();
        group.bench_function(format!("text_queries/b{batch}"), |b| {
            b.iter_batched(
                || texts.clone(),
                |t| engine.text.embed(&t).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, preprocessing, tokenization, encoders);
criterion_main!(benches);
