//! Compares the Rust engine against the PyTorch OpenCLIP reference for one model folder:
//!
//! ```text
//! cargo run --release --example parity -- [--model DIR] [--reference DIR/reference] \
//!     [--photos DIR] [--image-precision auto|f32|bf16|int8|int16] [--text-precision auto|f32|bf16|int8|int16]
//! ```
//!
//! `--model` defaults to `models/xlmr-b32-random` in the repo (the full-size export of
//! onnx/README.md), `--reference` to the model's `reference/` folder, `--photos` to the committed
//! `tests/fixtures/photos`.
//!
//! Prints what each tower runs (and the start-up check's lowest cosine), the cosine of every
//! text and image embedding with PyTorch's, and exits non-zero if texts fall below 0.99999 or
//! images below 0.9999 with both towers in f32 (the tolerances of the engine's issue), or
//! texts below 0.9999 or images below 0.9995 otherwise (the tolerances of the default, `auto`).

#[path = "../tests/common/parity.rs"]
mod parity;

use std::path::PathBuf;

use clipserve::engine::{calibration, Arithmetic, Engine, EngineSettings, Precision, TowerPool};

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
    let precision = |flag: &str| {
        let v = arg(flag).unwrap_or_else(|| "auto".into());
        serde_json::from_value::<Precision>(serde_json::Value::String(v.clone()))
            .unwrap_or_else(|_| panic!("{flag} {v}: auto, f32, bf16, int8 or int16"))
    };
    let settings = EngineSettings {
        image_precision: precision("--image-precision"),
        text_precision: precision("--text-precision"),
        ..EngineSettings::default()
    };
    let engine = Engine::load(&model, &settings).expect("model loads");
    eprintln!(
        "loaded {} in {:.1} s",
        model.display(),
        started.elapsed().as_secs_f64()
    );
    let chosen = engine.precision();
    for (tower, p) in [("image", chosen.image), ("text", chosen.text)] {
        eprintln!(
            "{tower}: {} ({:?}; checks {:?}; speed-ups {:?})",
            p.active.as_str(),
            p.reason,
            p.checks,
            p.speedups
        );
    }
    // What the start-up check costs per arithmetic beyond building the plans: one run of the
    // calibration set through each tower, as the check makes it (on every core).
    let pool = TowerPool::new(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pixels = calibration::pixels(&engine.folder.preprocess).expect("calibration photos");
    let pixels: Vec<&[f32]> = pixels.iter().map(|p| p.as_slice()).collect();
    let ids: Vec<_> = calibration::texts()
        .into_iter()
        .map(|t| engine.tokenizer.encode(t).expect("tokenizes"))
        .collect();
    let ids: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();
    let t = std::time::Instant::now();
    pool.run(true, || engine.image.embed(&pixels))
        .expect("image tower runs");
    let image_ms = t.elapsed().as_millis();
    let t = std::time::Instant::now();
    pool.run(true, || engine.text.embed(&ids))
        .expect("text tower runs");
    eprintln!(
        "calibration set through the served towers: image {} photos {image_ms} ms ({}), text {} texts {} ms ({})",
        pixels.len(),
        chosen.image.active.as_str(),
        ids.len(),
        t.elapsed().as_millis(),
        chosen.text.active.as_str()
    );
    let all_f32 = [chosen.image.active, chosen.text.active] == [Arithmetic::F32; 2];
    let (text_min, image_min) = if all_f32 {
        (0.99999, 0.9999)
    } else {
        (0.9999, 0.9995)
    };
    let reference = parity::load_reference(&reference_dir);
    let report = parity::run(&engine, &reference, &photos);
    report.print();
    let ok = report.min_text_cosine() >= text_min && report.min_image_cosine() >= image_min;
    if !ok {
        eprintln!("PARITY FAILED");
        std::process::exit(1);
    }
    eprintln!("parity ok");
}
