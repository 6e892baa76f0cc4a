//! The precision each tower runs in, chosen at load on the weights being served (the committed
//! tiny model here): `auto` keeps bf16 products only where the CPU has AVX512-BF16, runs them
//! at least `MIN_BF16_SPEEDUP` times as fast as f32 ones (`bf16::speedup`, measured once per
//! process), and the calibration set's bf16 embeddings stay within `model.precision_min_cosine`
//! of the f32 ones; the engine reports what it chose and what it measured. Which of these holds
//! is this CPU's and this build's (a debug build times its own unoptimized kernels): each test
//! expects what the speed-up measured in its process gives, and `bf16` runs the check
//! everywhere.

mod common;

use clipserve::engine::calibration;
use clipserve::engine::{Arithmetic, Engine, EngineSettings, Precision, Reason, MIN_BF16_SPEEDUP};
use clipserve::preprocess::image::{decode_rgb, DecodeLimits, ExifPolicy};
use common::{fixture, parity};

fn load(settings: &EngineSettings) -> Engine {
    Engine::load(&fixture("models/tiny"), settings).unwrap_or_else(|e| panic!("tiny: {e}"))
}

fn both(precision: Precision) -> EngineSettings {
    EngineSettings {
        image_precision: precision,
        text_precision: precision,
        ..EngineSettings::default()
    }
}

fn bf16_cpu() -> bool {
    let supported = clipserve::engine::bf16::supported();
    if !supported {
        eprintln!("SKIPPED the bf16 case: this CPU has no AVX512-BF16, so every tower runs f32");
    }
    supported
}

/// Whether `auto` may keep bf16 here: the CPU has AVX512-BF16 and runs bf16 products fast
/// enough.
fn bf16_fast() -> bool {
    let speedup = clipserve::engine::bf16::speedup();
    let fast = speedup.is_some_and(|s| s >= MIN_BF16_SPEEDUP);
    if bf16_cpu() && !fast {
        eprintln!("this CPU runs bf16 products {speedup:?} times as fast as f32: `auto` runs f32");
    }
    fast
}

/// Cosine in f64 of two embeddings, without assuming unit length.
fn cosine_f64(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn auto_picks_bf16_for_both_towers_where_the_cpu_runs_it_faster() {
    let engine = load(&EngineSettings::default());
    let report = engine.precision();
    let speedup = clipserve::engine::bf16::speedup();
    for (tower, p) in [("image", report.image), ("text", report.text)] {
        assert_eq!(p.requested, Precision::Auto, "{tower}");
        assert_eq!(
            p.bf16_speedup, speedup,
            "{tower}: the one figure of this CPU"
        );
        if bf16_fast() {
            assert_eq!(p.active, Arithmetic::Bf16, "{tower}: {p:?}");
            assert_eq!(p.reason, Reason::CheckPassed, "{tower}");
            let lowest = p.check_min_cosine.expect("the check ran");
            assert!((0.9999..=1.0).contains(&lowest), "{tower}: {lowest}");
        } else if bf16_cpu() {
            assert_eq!(p.active, Arithmetic::F32, "{tower}: {p:?}");
            assert_eq!(p.reason, Reason::Bf16NotFaster, "{tower}");
            assert_eq!(p.check_min_cosine, None, "{tower}: nothing to check");
        } else {
            assert_eq!(p.active, Arithmetic::F32, "{tower}");
            assert_eq!(p.reason, Reason::NoBf16Cpu, "{tower}");
            assert_eq!(p.check_min_cosine, None, "{tower}");
        }
    }
    let (image, text) = (engine.image.graph(), engine.text.graph());
    let want = if bf16_fast() {
        Arithmetic::Bf16
    } else {
        Arithmetic::F32
    };
    assert_eq!((image.arithmetic(), text.arithmetic()), (want, want));
    if bf16_fast() {
        // Image, per block: the attention's input and output projections and the MLP's two
        // layers; plus the patch embedding and the final projection. Text, per block: the
        // query, key, value and output projections and the MLP's two layers; plus the two
        // layers of the projection head.
        let blocks = 2;
        assert_eq!(image.rewritten().by_weights, 4 * blocks + 2);
        assert_eq!(text.rewritten().by_weights, 6 * blocks + 2);
        // Both towers, per block: the attention's scores and their weighting of the values.
        assert_eq!(image.rewritten().of_activations, 2 * blocks);
        assert_eq!(text.rewritten().of_activations, 2 * blocks);
    } else {
        assert_f32_plans(&engine);
    }
}

/// Both towers' plans are f32 ones: nothing handed from one product to the next in bf16 (the
/// products are our f32 ones where the CPU has AVX-512, tract's elsewhere; tests/engine.rs
/// counts them).
fn assert_f32_plans(engine: &Engine) {
    for (tower, graph) in [
        ("image", engine.image.graph()),
        ("text", engine.text.graph()),
    ] {
        assert_eq!(graph.arithmetic(), Arithmetic::F32, "{tower}");
        let rewritten = graph.rewritten();
        assert_eq!(rewritten.handoffs, 0, "{tower}");
        if !clipserve::engine::bf16::f32_supported() {
            assert_eq!(
                (rewritten.by_weights, rewritten.of_activations),
                (0, 0),
                "{tower}"
            );
        }
    }
}

#[test]
fn an_unreachable_threshold_keeps_both_towers_in_f32() {
    let engine = load(&EngineSettings {
        precision_min_cosine: 1.0,
        ..EngineSettings::default()
    });
    let report = engine.precision();
    for (tower, p) in [("image", report.image), ("text", report.text)] {
        assert_eq!(p.active, Arithmetic::F32, "{tower}: {p:?}");
        if bf16_fast() {
            assert_eq!(p.reason, Reason::CheckFailed, "{tower}");
            let lowest = p.check_min_cosine.expect("the check ran");
            assert!(lowest < 1.0, "{tower}: {lowest}");
        } else if bf16_cpu() {
            assert_eq!(p.reason, Reason::Bf16NotFaster, "{tower}");
        }
    }
    // The bf16 plans were dropped: no product runs in bf16.
    assert_f32_plans(&engine);
}

#[test]
fn f32_runs_no_check() {
    let engine = load(&both(Precision::F32));
    let report = engine.precision();
    for p in [report.image, report.text] {
        assert_eq!(
            (p.active, p.check_min_cosine, p.reason),
            (Arithmetic::F32, None, Reason::F32Requested)
        );
    }
}

/// The reported lowest cosine is the one a caller finds by embedding the calibration set with
/// an engine forced to f32 and one forced to bf16.
#[test]
fn the_reported_lowest_cosine_is_the_one_recomputed_from_both_engines() {
    if !bf16_cpu() {
        return;
    }
    let exact = load(&both(Precision::F32));
    let fast = load(&both(Precision::Bf16));
    let auto = load(&EngineSettings::default());

    let photos: Vec<_> = calibration::PHOTOS
        .iter()
        .map(|(name, bytes)| {
            let rgb = decode_rgb(bytes, &DecodeLimits::default(), ExifPolicy::Ignore)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            exact.folder.preprocess.tensor(&rgb)
        })
        .collect();
    let photos: Vec<&[f32]> = photos.iter().map(|p| p.as_slice()).collect();
    let texts = calibration::texts();
    let ids: Vec<_> = texts
        .iter()
        .map(|t| exact.tokenizer.encode(t).expect("tokenizes"))
        .collect();
    // Short queries and texts that fill the context.
    assert!(ids.iter().any(|t| t.len() <= 16));
    assert!(ids.iter().filter(|t| t.len() == 77).count() >= 8);
    let ids: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();

    let lowest = |a: Vec<clipserve::embedding::Embedding>,
                  b: Vec<clipserve::embedding::Embedding>| {
        a.iter()
            .zip(&b)
            .map(|(x, y)| cosine_f64(x.as_slice(), y.as_slice()))
            .fold(f64::INFINITY, f64::min)
    };
    let image = lowest(
        exact.image.embed(&photos).unwrap(),
        fast.image.embed(&photos).unwrap(),
    );
    let text = lowest(
        exact.text.embed(&ids).unwrap(),
        fast.text.embed(&ids).unwrap(),
    );
    eprintln!("recomputed lowest cosine: image {image:.9}, text {text:.9}");
    assert!(
        image < 1.0 && text < 1.0,
        "bf16 changed nothing: {image} {text}"
    );
    // `auto` checks only where bf16 is fast enough; `bf16` always.
    let checked = if bf16_fast() {
        vec![&fast, &auto]
    } else {
        vec![&fast]
    };
    for engine in checked {
        let report = engine.precision();
        for (tower, p, want) in [("image", report.image, image), ("text", report.text, text)] {
            let got = p.check_min_cosine.expect("the check ran");
            assert!(
                (got - want).abs() <= 1e-6,
                "{tower} ({:?}): reported {got:.9}, recomputed {want:.9}",
                p.requested
            );
        }
    }
}

/// With the defaults, embeddings stay within 0.9995 (images) and 0.9999 (texts) of PyTorch's
/// f32 ones, whatever precision `auto` picked.
#[test]
fn the_default_precision_stays_close_to_pytorch() {
    let reference = parity::load_reference(&fixture("reference/tiny"));
    let engine = load(&EngineSettings::default());
    let report = parity::run(&engine, &reference, &fixture("photos"));
    report.print();
    assert!(report.images.len() >= 20 && report.texts.len() >= 10);
    assert!(
        report.min_image_cosine() >= 0.9995,
        "images: {}",
        report.min_image_cosine()
    );
    assert!(
        report.min_text_cosine() >= 0.9999,
        "texts: {}",
        report.min_text_cosine()
    );
}

#[test]
fn a_threshold_outside_the_cosine_range_is_refused() {
    let err = Engine::load(
        &fixture("models/tiny"),
        &EngineSettings {
            precision_min_cosine: 1.5,
            ..EngineSettings::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("precision_min_cosine"), "{err}");
}

/// `/info` says what each tower runs and what the check found; `/metrics` has a gauge per tower.
/// With an unreachable threshold both say f32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_metrics_say_what_each_tower_runs() {
    for (min_cosine, bf16_expected) in [(None, bf16_fast()), (Some(1.0), false)] {
        let server = common::TestServer::start(|s| {
            if let Some(m) = min_cosine {
                s.model.precision_min_cosine = m;
            }
        })
        .await;
        let info: serde_json::Value = reqwest::get(server.url("/info"))
            .await
            .expect("info answers")
            .json()
            .await
            .expect("info is JSON");
        let want = if bf16_expected { "bf16" } else { "f32" };
        let metrics = reqwest::get(server.url("/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        for tower in ["image", "text"] {
            let p = &info["precision"][tower];
            assert_eq!(p["active"], want, "{min_cosine:?} {tower}: {info}");
            let reported = p["check_min_cosine"].as_f64();
            let speedup = clipserve::engine::bf16::speedup();
            assert_eq!(p["bf16_speedup"].as_f64(), speedup, "{tower}: {p}");
            if bf16_cpu() && !bf16_fast() {
                assert!(p["check_min_cosine"].is_null(), "{tower}: {p}");
                assert_eq!(p["reason"], "bf16_not_faster", "{tower}");
            } else if bf16_cpu() {
                let lowest = reported.expect("the check ran");
                assert!(lowest < 1.0, "{tower}: {lowest}");
                let reason = if bf16_expected {
                    "check_passed"
                } else {
                    "check_failed"
                };
                assert_eq!(p["reason"], reason, "{tower}");
            } else {
                assert!(p["check_min_cosine"].is_null(), "{tower}: {p}");
                assert_eq!(p["reason"], "no_bf16_cpu", "{tower}");
            }
            let gauge = format!(
                "clipserve_tower_bf16{{tower=\"{tower}\"}} {}",
                u8::from(bf16_expected)
            );
            assert!(metrics.contains(&gauge), "no `{gauge}` in:\n{metrics}");
        }
        server.stop().await.expect("stops");
    }
}
