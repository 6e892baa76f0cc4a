//! The encoders on the workloads `bench/py_baselines.py` runs through ONNX Runtime and PyTorch
//! (same deterministic inputs, same workload names), for each engine variant, printed as one
//! JSON object so `bench/run.sh` can put every runtime side by side.
//!
//! ```text
//! CLIPSERVE_BENCH_MODEL=models/xlmr-b32-random \
//!   cargo bench --bench compare -- --variants bucketed,symbolic --budget 6 --json out.json
//! ```
//!
//! Not a criterion bench: one run of an image batch of 32 takes seconds, and what the harness
//! needs is the median of a few runs per workload next to the other runtimes' medians.
//!
//! With `--photos a.jpg,b.png,...` each variant also runs `image_photo_b1`: what the server does
//! for a lone image request, minus HTTP and the queue (one photo decoded, preprocessed and
//! embedded as a lone run, the photos in turn), with the decoding-and-preprocessing part and the
//! model part timed apart. Only tract has it: the other runtimes have no preprocessing of ours.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clipserve::engine::{Buckets, Engine, EngineSettings, Precision, TowerPool};
use clipserve::service::{prepare_image, InputRules};

/// (name, tower, batch, tokens): the same list as `bench/py_baselines.py`'s WORKLOADS, plus
/// batch 8.
const WORKLOADS: &[(&str, &str, usize, usize)] = &[
    ("image_b1", "image", 1, 0),
    ("image_b8", "image", 8, 0),
    ("image_b32", "image", 32, 0),
    ("text_16tok_b32", "text", 32, 16),
    ("text_77tok_b1", "text", 1, 77),
];

/// Deterministic pixels in [-1, 1), as `py_baselines.pixels`.
fn pixels(batch: usize) -> Vec<Vec<f32>> {
    let n = 3 * 224 * 224;
    (0..batch)
        .map(|b| {
            (0..n)
                .map(|i| ((((b * n + i) as u64 * 7919) % 1000) as f32) / 500.0 - 1.0)
                .collect()
        })
        .collect()
}

/// Deterministic token ids, as `py_baselines.token_ids`.
fn token_ids(batch: usize, tokens: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|r| {
            let mut row = vec![0u32; tokens];
            for (j, id) in row.iter_mut().enumerate().take(tokens - 1).skip(1) {
                *id = 5 + ((r as u64 * 104729 + j as u64 * 7919) % 250000) as u32;
            }
            row[tokens - 1] = 2;
            row
        })
        .collect()
}

/// An engine configuration to compare.
struct Variant {
    name: String,
    settings: EngineSettings,
    intra_op_threads: usize,
}

/// Both towers in f32, as exported (the default, `auto`, may pick bf16).
fn f32_settings() -> EngineSettings {
    EngineSettings {
        image_precision: Precision::F32,
        text_precision: Precision::F32,
        ..EngineSettings::default()
    }
}

fn variants() -> Vec<Variant> {
    let defaults = clipserve::config::Settings::default().model;
    // The server's own buckets, with both towers in f32 (the default, `auto`, may pick bf16).
    let bucketed = EngineSettings {
        image_precision: Precision::F32,
        text_precision: Precision::F32,
        ..clipserve::service::engine_settings(&defaults)
    };
    let mut variants = vec![
        Variant {
            name: "bucketed".into(),
            settings: bucketed.clone(),
            intra_op_threads: 1,
        },
        Variant {
            name: "symbolic".into(),
            settings: f32_settings(),
            intra_op_threads: 1,
        },
        Variant {
            // Text plans of concrete shapes (tract picks kernels per shape), from
            // CLIPSERVE_BENCH_TEXT_BATCH and CLIPSERVE_BENCH_TEXT_SEQ (comma lists).
            name: "text_fixed".into(),
            settings: EngineSettings {
                image_buckets: bucketed.image_buckets.clone(),
                text_buckets: Buckets {
                    batch: env_list("CLIPSERVE_BENCH_TEXT_BATCH", &[1, 32]),
                    seq: env_list("CLIPSERVE_BENCH_TEXT_SEQ", &[16, 77]),
                },
                ..f32_settings()
            },
            intra_op_threads: 1,
        },
        Variant {
            // Image plans of concrete batch sizes, from CLIPSERVE_BENCH_IMAGE_BATCH (a comma
            // list): batch 32 then runs as one plan, not four runs of 8.
            name: "image_fixed".into(),
            settings: EngineSettings {
                image_buckets: Buckets {
                    batch: env_list("CLIPSERVE_BENCH_IMAGE_BATCH", &[1, 8, 32]),
                    seq: Vec::new(),
                },
                text_buckets: bucketed.text_buckets.clone(),
                ..f32_settings()
            },
            intra_op_threads: 1,
        },
    ];
    // Both towers' products by weights in each lossy arithmetic (`model.image_precision` and
    // `text_precision` set to it: bf16 where the CPU has AVX512-BF16, int8 and int16 where it
    // has AVX512-VNNI, f32 elsewhere), on one thread and, as a lone run in the server, on two:
    // `bucketed_<arithmetic>` and `bucketed_<arithmetic>_intra2`.
    let lossy = [Precision::Bf16, Precision::Int8, Precision::Int16];
    for (threads, suffix) in [(1, ""), (2, "_intra2")] {
        if threads == 2 {
            variants.push(Variant {
                name: "bucketed_intra2".into(),
                settings: bucketed.clone(),
                intra_op_threads: 2,
            });
        }
        for precision in lossy {
            let arithmetic = precision.lossy().expect("a lossy setting");
            variants.push(Variant {
                name: format!("bucketed_{}{suffix}", arithmetic.as_str()),
                settings: EngineSettings {
                    image_precision: precision,
                    text_precision: precision,
                    ..bucketed.clone()
                },
                intra_op_threads: threads,
            });
        }
    }
    variants
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

struct Args {
    variants: Vec<String>,
    only: Vec<String>,
    budget: Duration,
    min_runs: usize,
    json: Option<PathBuf>,
    /// Photo files for `image_photo_b1` (none: the workload is skipped).
    photos: Vec<PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        variants: vec!["bucketed".into(), "symbolic".into()],
        only: Vec::new(),
        budget: Duration::from_secs(4),
        min_runs: 3,
        json: None,
        photos: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let list = |v: Option<String>| -> Vec<String> {
            v.unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        match a.as_str() {
            "--variants" => args.variants = list(it.next()),
            "--only" => args.only = list(it.next()),
            "--budget" => {
                let secs: f64 = it.next().and_then(|s| s.parse().ok()).unwrap_or(4.0);
                args.budget = Duration::from_secs_f64(secs);
            }
            "--min-runs" => args.min_runs = it.next().and_then(|s| s.parse().ok()).unwrap_or(3),
            "--json" => args.json = it.next().map(PathBuf::from),
            "--photos" => args.photos = list(it.next()).into_iter().map(PathBuf::from).collect(),
            // `cargo bench` passes --bench; criterion-style filters are ignored too.
            _ => {}
        }
    }
    args
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The `q` quantile of `xs` (nearest rank).
fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// Times `f` until `budget` has passed and `min_runs` are done, at most `max_runs` (the caller
/// has run it once already, for its output).
fn time_runs(mut f: impl FnMut(), budget: Duration, min_runs: usize, max_runs: usize) -> Vec<f64> {
    let started = Instant::now();
    let mut times = Vec::new();
    while (times.len() < min_runs || started.elapsed() < budget) && times.len() < max_runs {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times
}

fn run_variant(model: &std::path::Path, v: &Variant, args: &Args) -> serde_json::Value {
    // The pool a run that has its tower to itself gets in the server (`TowerPool`), the
    // batch's run made on one of its threads.
    let pool = TowerPool::new(v.intra_op_threads);
    let started = Instant::now();
    let engine = Engine::load(model, &v.settings).expect("the bench model loads");
    let load_s = started.elapsed().as_secs_f64();
    let mut workloads = serde_json::Map::new();
    for &(name, tower, batch, tokens) in WORKLOADS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let (first, times) = if tower == "image" {
            let px = pixels(batch);
            let views: Vec<&[f32]> = px.iter().map(|p| p.as_slice()).collect();
            let embed = || {
                pool.run(true, || {
                    engine.image.embed(&views).expect("image batch runs")
                })
            };
            let first = embed();
            let times = time_runs(
                || {
                    embed();
                },
                args.budget,
                args.min_runs,
                MAX_RUNS,
            );
            (first, times)
        } else {
            let ids = token_ids(batch, tokens);
            let views: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();
            let embed = || pool.run(true, || engine.text.embed(&views).expect("text batch runs"));
            let first = embed();
            let times = time_runs(
                || {
                    embed();
                },
                args.budget,
                args.min_runs,
                MAX_RUNS,
            );
            (first, times)
        };
        let runs = times.len();
        let p99 = percentile(&times, 0.99);
        let med = median(times);
        eprintln!(
            "tract {} {name}: {:.2} items/s ({runs} runs)",
            v.name,
            batch as f64 / med
        );
        workloads.insert(
            name.into(),
            serde_json::json!({
                "batch": batch,
                "runs": runs,
                "median_s": med,
                "p99_s": p99,
                "items_per_s": batch as f64 / med,
                "embedding0": first[0].as_slice(),
            }),
        );
    }
    if !args.photos.is_empty() && (args.only.is_empty() || args.only.iter().any(|o| o == PHOTO)) {
        workloads.insert(PHOTO.into(), photo_runs(&v.name, &engine, &pool, args));
    }
    serde_json::json!({
        "variant": v.name,
        "intra_op_threads": v.intra_op_threads,
        "load_s": load_s,
        "workloads": workloads,
    })
}

/// The workload of `--photos`.
const PHOTO: &str = "image_photo_b1";

/// Most timed runs of an encoder workload.
const MAX_RUNS: usize = 200;

/// Most timed runs of `image_photo_b1`, whose p99 the report uses.
const PHOTO_MAX_RUNS: usize = 2000;

/// `image_photo_b1`: each run decodes and preprocesses the next photo as the server does
/// (`prepare_image`, the model folder's preprocessing, the default settings' input rules) and
/// embeds it as a lone run, for the whole budget (up to 2,000 runs, enough for a p99 that is
/// not just the slowest few). Reports the whole run's median and p99, and the medians of its
/// two parts.
fn photo_runs(variant: &str, engine: &Engine, pool: &TowerPool, args: &Args) -> serde_json::Value {
    let photos: Vec<Vec<u8>> = args
        .photos
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())))
        .collect();
    let settings = clipserve::config::Settings::default();
    let rules = InputRules::new(&settings.limits, &settings.model);
    let run = |i: usize| -> (f64, f64) {
        let started = Instant::now();
        let pixels = prepare_image(
            &photos[i % photos.len()],
            &engine.folder.preprocess,
            &rules,
            i,
        )
        .expect("a bench photo decodes")
        .into_vec();
        let prepared = Instant::now();
        let views = [pixels.as_slice()];
        pool.run(true, || {
            engine.image.embed(&views).expect("image batch runs")
        });
        let prep = (prepared - started).as_secs_f64();
        (prep, prepared.elapsed().as_secs_f64())
    };
    // Each photo once, untimed: the first decode of a format pays for its tables.
    for i in 0..photos.len() {
        run(i);
    }
    let (mut prep, mut model) = (Vec::new(), Vec::new());
    let whole = time_runs(
        || {
            let (p, m) = run(prep.len());
            prep.push(p);
            model.push(m);
        },
        args.budget,
        args.min_runs,
        PHOTO_MAX_RUNS,
    );
    let runs = whole.len();
    let p99 = percentile(&whole, 0.99);
    let med = median(whole);
    eprintln!(
        "tract {variant} {PHOTO}: median {:.1} ms, p99 {:.1} ms ({runs} runs)",
        med * 1e3,
        p99 * 1e3
    );
    serde_json::json!({
        "batch": 1,
        "runs": runs,
        "photos": photos.len(),
        "median_s": med,
        "p99_s": p99,
        "items_per_s": 1.0 / med,
        "prep_median_s": median(prep),
        "model_median_s": median(model),
    })
}

fn main() {
    let args = args();
    let model = std::env::var_os("CLIPSERVE_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny")
        });
    let mut results = Vec::new();
    for v in variants() {
        if args.variants.contains(&v.name) {
            results.push(run_variant(&model, &v, &args));
        }
    }
    let out = serde_json::json!({
        "runtime": "tract",
        "model": model.display().to_string(),
        "variants": results,
    });
    match &args.json {
        Some(path) => std::fs::write(path, out.to_string()).expect("writing the JSON report"),
        None => println!("{out}"),
    }
}
