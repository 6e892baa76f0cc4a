//! Compares the Rust engine against the PyTorch OpenCLIP reference for one model folder:
//!
//! ```text
//! cargo run --release --example parity -- [--model DIR] [--reference DIR/reference] \
//!     [--photos DIR] [--image-precision f32|bf16]
//! ```
//!
//! `--model` defaults to `models/xlmr-b32-random` in the repo (the full-size export of
//! onnx/README.md), `--reference` to the model's `reference/` folder, `--photos` to the committed
//! `tests/fixtures/photos`.
//!
//! Prints the cosine of every text and image embedding with PyTorch's, and exits non-zero if
//! texts fall below 0.99999 or images below 0.9999 (the tolerances of the engine's issue).

#[path = "../tests/common/parity.rs"]
mod parity;

use std::path::PathBuf;

use clipserve::engine::{Engine, EngineSettings, Precision};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = arg("--model")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("models/xlmr-b32-random"));
    let reference_dir = arg("--reference")
        .map(PathBuf::from)
        .unwrap_or_else(|| model.join("reference"));
    let photos = arg("--photos")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("tests/fixtures/photos"));
    let started = std::time::Instant::now();
    let image_precision = match arg("--image-precision").as_deref() {
        None | Some("f32") => Precision::F32,
        Some("bf16") => Precision::Bf16,
        Some(other) => panic!("--image-precision {other}: f32 or bf16"),
    };
    let settings = EngineSettings {
        image_precision,
        ..EngineSettings::default()
    };
    let engine = Engine::load(&model, &settings).expect("model loads");
    eprintln!(
        "loaded {} in {:.1} s",
        model.display(),
        started.elapsed().as_secs_f64()
    );
    let reference = parity::load_reference(&reference_dir);
    let report = parity::run(&engine, &reference, &photos);
    report.print();
    let ok = report.min_text_cosine() >= 0.99999 && report.min_image_cosine() >= 0.9999;
    if !ok {
        eprintln!("PARITY FAILED");
        std::process::exit(1);
    }
    eprintln!("parity ok");
}
