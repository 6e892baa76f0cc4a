//! The precision each tower runs in, chosen at load on the weights being served (the committed
//! tiny model here): `auto` tries the lossy arithmetics (bf16, int8, int16) whose instructions the CPU
//! has and which it runs at least `MIN_SPEEDUP` times as fast as f32 (`ops::speedups`,
//! measured once per process), the fastest first, and keeps the first whose calibration
//! embeddings stay within `model.precision_min_cosine` of the f32 ones; the engine reports what
//! it chose and what it measured. Which of these holds is this CPU's and this build's (a debug
//! build times its own unoptimized kernels): the tests recompute each arithmetic's lowest
//! cosine from engines forced into it, and expect what those figures and the measured speed-ups
//! give.

mod common;

use clipserve::embedding::Embedding;
use clipserve::engine::calibration;
use clipserve::engine::{
    Arithmetic, Engine, EngineSettings, Lossy, Precision, PrecisionReport, Reason, MIN_SPEEDUP,
};
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

const LOSSY: [Arithmetic; 3] = Arithmetic::LOSSY;

fn requesting(arithmetic: Arithmetic) -> Precision {
    match arithmetic {
        Arithmetic::Bf16 => Precision::Bf16,
        Arithmetic::Int8 => Precision::Int8,
        Arithmetic::Int16 => Precision::Int16,
        Arithmetic::F32 => Precision::F32,
    }
}

/// The lossy arithmetics this CPU has the instructions of, saying on stderr which it lacks.
fn supported() -> Vec<Arithmetic> {
    LOSSY
        .into_iter()
        .filter(|a| {
            let here = a.supported();
            if !here {
                eprintln!(
                    "SKIPPED the {} case: this CPU lacks its instructions",
                    a.as_str()
                );
            }
            here
        })
        .collect()
}

/// The arithmetics `auto` tries here, in order: supported, fast enough, the fastest first.
fn candidates() -> Vec<Arithmetic> {
    let speedups = clipserve::engine::ops::speedups();
    let mut fast: Vec<(Arithmetic, f64)> = supported()
        .into_iter()
        .filter_map(|a| speedups.of(a).map(|s| (a, s)))
        .filter(|&(a, s)| {
            let fast = s >= MIN_SPEEDUP;
            if !fast {
                eprintln!("this CPU runs {} products {s:.2} times as fast as f32: `auto` does not try them", a.as_str());
            }
            fast
        })
        .collect();
    fast.sort_by(|a, b| b.1.total_cmp(&a.1));
    fast.into_iter().map(|(a, _)| a).collect()
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

/// Each tower's lowest cosine between the calibration set's embeddings by an engine forced
/// into each supported lossy arithmetic and by one forced into f32, computed here from the
/// embeddings: `(image, text)`.
fn recomputed() -> (Lossy<Option<f64>>, Lossy<Option<f64>>) {
    let exact = load(&both(Precision::F32));
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
    let lowest = |a: Vec<Embedding>, b: Vec<Embedding>| {
        a.iter()
            .zip(&b)
            .map(|(x, y)| cosine_f64(x.as_slice(), y.as_slice()))
            .fold(f64::INFINITY, f64::min)
    };
    let (exact_images, exact_texts) = (
        exact.image.embed(&photos).unwrap(),
        exact.text.embed(&ids).unwrap(),
    );
    let (mut image, mut text) = (Lossy::default(), Lossy::default());
    for arithmetic in supported() {
        let lossy = load(&both(requesting(arithmetic)));
        let report = lossy.precision();
        assert_eq!(
            (report.image.active, report.text.active),
            (arithmetic, arithmetic)
        );
        let i = lowest(exact_images.clone(), lossy.image.embed(&photos).unwrap());
        let t = lowest(exact_texts.clone(), lossy.text.embed(&ids).unwrap());
        eprintln!(
            "recomputed lowest cosine in {}: image {i:.9}, text {t:.9}",
            arithmetic.as_str()
        );
        assert!(
            i < 1.0 && t < 1.0,
            "{arithmetic:?} changed nothing: {i} {t}"
        );
        image.set(arithmetic, Some(i));
        text.set(arithmetic, Some(t));
    }
    (image, text)
}

/// `got` is `want` within 1e-6, or both absent.
fn same_cosines(got: Lossy<Option<f64>>, want: Lossy<Option<f64>>) -> bool {
    LOSSY.iter().all(|&a| match (got.of(a), want.of(a)) {
        (Some(g), Some(w)) => (g - w).abs() <= 1e-6,
        (g, w) => g == w,
    })
}

/// What `auto` at `threshold` must have chosen for a tower whose lossy arithmetics' lowest
/// cosines are `cosines`: the arithmetic, why, and the checks it ran.
fn expected(
    cosines: Lossy<Option<f64>>,
    threshold: f64,
) -> (Arithmetic, Reason, Lossy<Option<f64>>) {
    let candidates = candidates();
    if candidates.is_empty() {
        let reason = if supported().is_empty() {
            Reason::UnsupportedCpu
        } else {
            Reason::NotFaster
        };
        return (Arithmetic::F32, reason, Lossy::default());
    }
    let mut checks = Lossy::default();
    for a in candidates {
        let lowest = cosines.of(a).expect("recomputed");
        checks.set(a, Some(lowest));
        if lowest >= threshold {
            return (a, Reason::CheckPassed, checks);
        }
    }
    (Arithmetic::F32, Reason::CheckFailed, checks)
}

/// The report of an engine loaded with `auto` at `threshold` is what the recomputed cosines
/// and the speed-ups give, tower by tower.
fn assert_auto(
    report: &PrecisionReport,
    recomputed: &(Lossy<Option<f64>>, Lossy<Option<f64>>),
    threshold: f64,
) {
    let speedups = clipserve::engine::ops::speedups();
    for (tower, p, cosines) in [
        ("image", report.image, recomputed.0),
        ("text", report.text, recomputed.1),
    ] {
        let (active, reason, checks) = expected(cosines, threshold);
        assert_eq!(p.requested, Precision::Auto, "{tower}");
        assert_eq!((p.active, p.reason), (active, reason), "{tower}: {p:?}");
        assert!(
            same_cosines(p.checks, checks),
            "{tower}: {p:?}, recomputed {checks:?}"
        );
        let highest = LOSSY
            .into_iter()
            .filter_map(|a| checks.of(a))
            .reduce(f64::max);
        match (p.check_min_cosine(), highest) {
            (Some(got), Some(want)) => assert!((got - want).abs() <= 1e-6, "{tower}: {p:?}"),
            (got, want) => assert_eq!(got, want, "{tower}: {p:?}"),
        }
        assert_eq!(p.speedups, speedups, "{tower}: the one figure of this CPU");
        if active != Arithmetic::F32 {
            assert!(p.check_min_cosine().unwrap() >= threshold, "{tower}: {p:?}");
        }
    }
}

/// `auto` runs, tower by tower, the fastest lossy arithmetic this CPU runs fast enough whose
/// check passes, with the lowest cosines recomputed here; and its plans are that arithmetic's.
#[test]
fn auto_picks_the_fastest_arithmetic_whose_check_passes() {
    let recomputed = recomputed();
    let engine = load(&EngineSettings::default());
    let report = engine.precision();
    assert_auto(&report, &recomputed, 0.9999);
    for (tower, graph, active) in [
        ("image", engine.image.graph(), report.image.active),
        ("text", engine.text.graph(), report.text.active),
    ] {
        assert_eq!(graph.arithmetic(), active, "{tower}");
    }
    let blocks = 2;
    if report.image.active != Arithmetic::F32 {
        // Per block: the attention's input and output projections and the MLP's two layers;
        // plus the patch embedding and the final projection.
        let rewritten = engine.image.graph().rewritten();
        assert_eq!(rewritten.by_weights, 4 * blocks + 2);
        assert_eq!(rewritten.of_activations, 2 * blocks);
    }
    if report.text.active != Arithmetic::F32 {
        // Per block: the query, key, value and output projections and the MLP's two layers;
        // plus the two layers of the projection head.
        let rewritten = engine.text.graph().rewritten();
        assert_eq!(rewritten.by_weights, 6 * blocks + 2);
        assert_eq!(rewritten.of_activations, 2 * blocks);
    }
    if [report.image.active, report.text.active] == [Arithmetic::F32; 2] {
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
        if !clipserve::engine::ops::f32_supported() {
            assert_eq!(
                (rewritten.by_weights, rewritten.of_activations),
                (0, 0),
                "{tower}"
            );
        }
    }
}

/// At a threshold no lossy arithmetic reaches, both towers run f32, after checking every
/// arithmetic `auto` tries here.
#[test]
fn an_unreachable_threshold_keeps_both_towers_in_f32() {
    let engine = load(&EngineSettings {
        precision_min_cosine: 1.0,
        ..EngineSettings::default()
    });
    let report = engine.precision();
    let candidates = candidates();
    for (tower, p) in [("image", report.image), ("text", report.text)] {
        assert_eq!(p.active, Arithmetic::F32, "{tower}: {p:?}");
        if candidates.is_empty() {
            assert!(
                matches!(p.reason, Reason::NotFaster | Reason::UnsupportedCpu),
                "{tower}: {p:?}"
            );
            assert_eq!(p.check_min_cosine(), None, "{tower}");
        } else {
            assert_eq!(p.reason, Reason::CheckFailed, "{tower}");
            for a in &candidates {
                let lowest = p.checks.of(*a).expect("checked");
                assert!(lowest < 1.0, "{tower} {a:?}: {lowest}");
            }
        }
    }
    // The lossy plans were dropped: no product runs in bf16 or integers.
    assert_f32_plans(&engine);
}

#[test]
fn f32_runs_no_check() {
    let engine = load(&both(Precision::F32));
    let report = engine.precision();
    for p in [report.image, report.text] {
        assert_eq!(
            (p.active, p.check_min_cosine(), p.checks, p.reason),
            (
                Arithmetic::F32,
                None,
                Lossy::default(),
                Reason::F32Requested
            )
        );
    }
}

/// `bf16`, `int8` and `int16` keep their arithmetic whatever the check finds, and report as their
/// lowest cosine the one recomputed here from engines forced to f32 and to it.
#[test]
fn a_requested_arithmetic_reports_the_cosine_recomputed_from_both_engines() {
    let (image, text) = recomputed();
    for arithmetic in LOSSY {
        let engine = load(&both(requesting(arithmetic)));
        let report = engine.precision();
        for (tower, p, want) in [("image", report.image, image), ("text", report.text, text)] {
            if !arithmetic.supported() {
                assert_eq!(
                    (p.active, p.reason),
                    (Arithmetic::F32, Reason::UnsupportedCpu),
                    "{tower}"
                );
                continue;
            }
            assert_eq!(
                (p.active, p.reason),
                (arithmetic, Reason::Requested),
                "{tower}"
            );
            let got = p.check_min_cosine().expect("the check ran");
            let want = want.of(arithmetic).expect("recomputed");
            assert!(
                (got - want).abs() <= 1e-6,
                "{tower} ({arithmetic:?}): reported {got:.9}, recomputed {want:.9}"
            );
            assert_eq!(p.checks.of(arithmetic), Some(got), "{tower}");
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

/// `/info` says what each tower runs and what the checks found, as the engine chose it;
/// `/metrics` has a gauge per tower and lossy arithmetic. With an unreachable threshold both
/// say f32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_metrics_say_what_each_tower_runs() {
    let recomputed = recomputed();
    for threshold in [0.9999, 1.0] {
        let server = common::TestServer::start(|s| s.model.precision_min_cosine = threshold).await;
        let info: serde_json::Value = reqwest::get(server.url("/info"))
            .await
            .expect("info answers")
            .json()
            .await
            .expect("info is JSON");
        let metrics = reqwest::get(server.url("/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        let speedups = clipserve::engine::ops::speedups();
        for (tower, cosines) in [("image", recomputed.0), ("text", recomputed.1)] {
            let (active, reason, checks) = expected(cosines, threshold);
            let p = &info["precision"][tower];
            assert_eq!(p["active"], active.as_str(), "{threshold} {tower}: {info}");
            assert_eq!(
                p["reason"],
                serde_json::to_value(reason).unwrap(),
                "{tower}: {p}"
            );
            let mut reported = Lossy::default();
            for a in LOSSY {
                reported.set(a, p["checks"][a.as_str()].as_f64());
            }
            assert!(
                same_cosines(reported, checks),
                "{tower}: {p}, recomputed {checks:?}"
            );
            assert_eq!(
                p["check_min_cosine"].is_null(),
                checks == Lossy::default(),
                "{tower}: {p}"
            );
            for arithmetic in LOSSY {
                let gauge = arithmetic.as_str();
                assert_eq!(
                    p["speedups"][gauge].as_f64(),
                    speedups.of(arithmetic),
                    "{tower}: {p}"
                );
                let line = format!(
                    "clipserve_tower_{gauge}{{tower=\"{tower}\"}} {}",
                    u8::from(active == arithmetic)
                );
                assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
            }
        }
        server.stop().await.expect("stops");
    }
}
