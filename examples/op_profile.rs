//! Where a tower's run spends its time, op by op: loads a model folder as the server does
//! (default settings, precision `auto` unless `--precision` says `f32`, `bf16`, `int8` or `int16`; image plans at
//! batch 1 and 8), runs one plan on one
//! thread with every node timed, and prints the time per kind of op, slowest first.
//!
//! ```sh
//! cargo run --release --example op_profile -- --model models/xlmr-b32-random
//! cargo run --release --example op_profile -- --model DIR --tower text --batch 32 --seq 16
//! cargo run --release --example op_profile -- --model DIR --detail   # ops split by their shapes
//! cargo run --release --example op_profile -- --model DIR --batch 1 --threads 2  # a lone run
//! cargo run --release --example op_profile -- --model DIR --precision f32  # f32 tiles (tract's without AVX-512)
//! cargo run --release --example op_profile -- --model DIR --precision int8  # int8 tiles (AVX512-VNNI; int16 alike)
//! ```
//!
//! One thread unless `--threads` says otherwise, so the shares are the tower's own and not the pool's scheduling. For the image
//! tower it also prints the arithmetic rate against the 8.35 GFLOP an image costs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clipserve::engine::{Buckets, Engine, EngineSettings, Precision, TowerPool};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

/// Time and node count per kind of op (or per op and shapes with `--detail`).
type PerOp = HashMap<String, (Duration, usize)>;

/// Multiply-adds x 2 of one image through the ViT-B/32 tower, as narrowed (issue 14).
const IMAGE_GFLOP: f64 = 8.35;

fn main() -> anyhow::Result<()> {
    let mut model = PathBuf::from("models/xlmr-b32-random");
    let (mut tower, mut batch, mut seq, mut runs) = ("image".to_string(), 8usize, 16usize, 5usize);
    let mut detail = false;
    let mut nodes = false;
    let mut threads = 1usize;
    let mut precision = Precision::Auto;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--model" => model = value()?.into(),
            "--tower" => tower = value()?,
            "--batch" => batch = value()?.parse()?,
            "--seq" => seq = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            "--detail" => detail = true,
            "--nodes" => nodes = true,
            "--threads" => threads = value()?.parse()?,
            "--precision" => {
                let v = value()?;
                precision = serde_json::from_value(serde_json::Value::String(v.clone()))
                    .map_err(|_| anyhow::anyhow!("--precision {v}: expected auto, f32, bf16, int8 or int16"))?;
            }
            other => anyhow::bail!(
                "unknown argument {other}; expected --model, --tower, --batch, --seq, --runs, --detail, --nodes, --threads, --precision"
            ),
        }
    }
    let settings = EngineSettings {
        image_buckets: Buckets {
            batch: vec![1, 8],
            seq: Vec::new(),
        },
        text_buckets: Buckets {
            batch: Vec::new(),
            seq: vec![8, 16, 32, 77],
        },
        image_precision: precision,
        text_precision: precision,
        ..EngineSettings::default()
    };
    let engine = Engine::load(&model, &settings)?;
    let precision = engine.precision();
    let (graph, input, active) = match tower.as_str() {
        "image" => {
            let (h, w) = engine.folder.preprocess.size();
            let (h, w) = (h as usize, w as usize);
            let pixels: Vec<f32> = (0..batch * 3 * h * w)
                .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
                .collect();
            let input = tract_ndarray::Array4::from_shape_vec((batch, 3, h, w), pixels)?;
            (
                engine.image.graph(),
                Tensor::from(input),
                precision.image.active,
            )
        }
        "text" => {
            let ids: Vec<i64> = (0..batch * seq)
                .map(|i| match i % seq {
                    0 => 0,
                    p if p == seq - 1 => 2,
                    p => 5 + ((i * 104_729 + p) % 250_000) as i64,
                })
                .collect();
            let input = tract_ndarray::Array2::from_shape_vec((batch, seq), ids)?;
            let input = Tensor::from(input)
                .cast_to_dt(engine.text.graph().input_type())?
                .into_owned();
            (engine.text.graph(), input, precision.text.active)
        }
        other => anyhow::bail!("--tower {other}: expected image or text"),
    };
    let s = if tower == "text" { seq } else { 0 };
    let run = graph.schedule(batch, s)?.remove(0);
    anyhow::ensure!(
        run.items == batch,
        "no single plan takes a batch of {batch}; the plans are {:?}",
        graph.plan_shapes()
    );
    println!(
        "{tower} tower of {}, plan for batch {} (seq {}), {} arithmetic, {threads} thread(s) (a run alone on the tower pool), {runs} timed runs after one warm-up",
        model.display(),
        run.batch,
        run.seq,
        active.as_str()
    );
    let plan = &run.plan;
    if nodes {
        // The plan's graph, one node a line: what each op reads and the shape it writes.
        for node in plan.model().nodes() {
            let inputs: Vec<String> = node
                .inputs
                .iter()
                .map(|o| format!("{}/{}", o.node, o.slot))
                .collect();
            let fact = node.outputs.first().map(|o| format!("{:?}", o.fact));
            println!(
                "{:>5} {:<40} {} {} <- [{}] {}",
                node.id,
                node.name,
                node.op().name(),
                node.op().info().unwrap_or_default().join(" "),
                inputs.join(", "),
                fact.unwrap_or_default()
            );
        }
        return Ok(());
    }
    let timed_runs = || -> TractResult<(PerOp, Duration, Duration)> {
        let mut per_op = PerOp::new();
        let (mut total, mut warm_up) = (Duration::ZERO, Duration::ZERO);
        let mut state = TypedSimpleState::new(plan)?;
        for i in 0..=runs {
            let mut timed: Vec<(String, Duration)> = Vec::new();
            let started = Instant::now();
            state.run_plan_with_eval(
                tvec![input.clone().into()],
                |ctx, op_state, node, inputs| {
                    let t = Instant::now();
                    let out = eval(ctx, op_state, node, inputs);
                    let mut key = node.op().name().to_string();
                    if detail {
                        key = format!("{key} {}", node.op().info().unwrap_or_default().join(" "));
                    }
                    timed.push((key, t.elapsed()));
                    out
                },
            )?;
            if i == 0 {
                warm_up = started.elapsed();
            } else {
                total += started.elapsed();
                for (op, d) in timed {
                    let e = per_op.entry(op).or_default();
                    e.0 += d;
                    e.1 += 1;
                }
            }
        }
        Ok((per_op, total, warm_up))
    };
    let (per_op, total, warm_up) = TowerPool::new(threads).run(true, timed_runs)?;
    let mut rows: Vec<_> = per_op.into_iter().collect();
    rows.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
    let per_run = total.as_secs_f64() / runs as f64;
    println!(
        "{:<28} {:>10} {:>7} {:>8}",
        "op", "ms/run", "share", "nodes"
    );
    for (op, (d, n)) in &rows {
        let ms = d.as_secs_f64() * 1000.0 / runs as f64;
        println!(
            "{op:<28} {ms:>10.2} {:>6.1}% {:>8}",
            100.0 * d.as_secs_f64() / total.as_secs_f64(),
            n / runs
        );
    }
    println!(
        "total {:.1} ms per run, {:.1} ms per item (the warm-up run: {:.1} ms)",
        per_run * 1000.0,
        per_run * 1000.0 / batch as f64,
        warm_up.as_secs_f64() * 1000.0
    );
    if tower == "image" {
        println!(
            "{:.1} GFLOP/s on {threads} thread(s) ({IMAGE_GFLOP} GFLOP per image)",
            IMAGE_GFLOP * batch as f64 / per_run
        );
    }
    Ok(())
}
