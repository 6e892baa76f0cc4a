//! Parity against the PyTorch OpenCLIP reference written by `onnx/export.py`
//! (`<reference>/reference.json` + `<reference>/pixels/*.png`), shared by the engine test
//! (tiny fixture model) and `examples/parity.rs` (full-size model, outside CI).

#![allow(dead_code)]
use std::path::Path;

use clipserve::engine::Engine;
use clipserve::preprocess::image::{decode_rgb, DecodeLimits, ExifPolicy};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Reference {
    pub texts: Vec<TextCase>,
    pub images: Vec<ImageCase>,
    #[serde(default)]
    pub errors: Vec<ErrorCase>,
    pub logit_scale: Option<f32>,
}

#[derive(Deserialize)]
pub struct TextCase {
    pub text: String,
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

#[derive(Deserialize)]
pub struct ImageCase {
    pub file: String,
    pub pixels: String,
    pub embedding: Vec<f32>,
}

#[derive(Deserialize)]
pub struct ErrorCase {
    pub file: String,
    pub error: String,
}

/// Reads `<dir>/reference.json`.
pub fn load_reference(dir: &Path) -> Reference {
    let path = dir.join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// What a parity run measured.
pub struct ParityReport {
    /// (text, cosine of Rust vs PyTorch embedding of the reference ids, Rust ids == reference ids)
    pub texts: Vec<(String, f64, bool)>,
    /// (file, cosine of Rust embedding through Rust preprocessing vs PyTorch)
    pub images: Vec<(String, f64)>,
}

impl ParityReport {
    pub fn min_text_cosine(&self) -> f64 {
        self.texts.iter().map(|t| t.1).fold(f64::INFINITY, f64::min)
    }
    pub fn min_image_cosine(&self) -> f64 {
        self.images
            .iter()
            .map(|t| t.1)
            .fold(f64::INFINITY, f64::min)
    }
    pub fn print(&self) {
        for (text, c, same_ids) in &self.texts {
            let short: String = text.chars().take(40).collect();
            eprintln!(
                "text  {c:.7}  ids {}  {short:?}",
                if *same_ids { "=" } else { "≠" }
            );
        }
        for (file, c) in &self.images {
            eprintln!("image {c:.7}  {file}");
        }
        eprintln!(
            "min text cosine {:.7} over {}, min image cosine {:.7} over {}",
            self.min_text_cosine(),
            self.texts.len(),
            self.min_image_cosine(),
            self.images.len()
        );
    }
}

/// Embeds every reference text (from the reference's own ids, so the tower is compared alone)
/// and every reference photo (through the Rust decoder and preprocessing, EXIF ignored as the
/// reference does), in batches.
pub fn run(engine: &Engine, reference: &Reference, photos: &Path) -> ParityReport {
    let ids: Vec<&[u32]> = reference.texts.iter().map(|t| t.ids.as_slice()).collect();
    let text_embeddings = engine.text.embed(&ids).expect("text tower runs");
    let texts = reference
        .texts
        .iter()
        .zip(text_embeddings)
        .map(|(case, e)| {
            let rust_ids = engine.tokenizer.encode(&case.text).expect("tokenizes");
            (
                case.text.clone(),
                cosine(e.as_slice(), &case.embedding),
                rust_ids.as_slice() == case.ids.as_slice(),
            )
        })
        .collect();
    let tensors: Vec<_> = reference
        .images
        .iter()
        .map(|case| {
            let bytes = std::fs::read(photos.join(&case.file)).expect("photo exists");
            let rgb = decode_rgb(&bytes, &DecodeLimits::default(), ExifPolicy::Ignore)
                .unwrap_or_else(|e| panic!("{}: {e}", case.file));
            engine.folder.preprocess.tensor(&rgb)
        })
        .collect();
    let views: Vec<&[f32]> = tensors.iter().map(|t| t.as_slice()).collect();
    let image_embeddings = engine.image.embed(&views).expect("image tower runs");
    let images = reference
        .images
        .iter()
        .zip(image_embeddings)
        .map(|(case, e)| (case.file.clone(), cosine(e.as_slice(), &case.embedding)))
        .collect();
    ParityReport { texts, images }
}
