//! How much faster the lossy products (bf16, int8, int16) are than the f32 ones on this CPU,
//! measured once per process ([`speedups`]). All are ours (the f32 one in the FMA tiles of
//! `kernel/fma.rs`), as a tower runs them.
//!
//! AVX512-BF16 does not make products faster everywhere. On Zen 4, `vdpbf16ps` does twice the
//! multiply-adds of an f32 FMA per cycle (bench/bf16_peak.c against bench/fma_peak.c: 234
//! against 117 GFLOP/s a core), and the image tower serves about 1.8x the images in bf16. On an
//! Intel Xeon of family 6 model 207 (Emerald Rapids, in a VM that does not expose AMX) it does
//! half as many (86 against 176 GFLOP/s), and the server did better in f32: 18.4 against 16.6
//! images/s, 60 against 48 unique queries/s (bench/RESULTS.md, row 57); its AVX512-VNNI
//! (`vpdpbusd`) does 538 G byte operations a second (bench/vnni_peak.c), and an int8 product
//! ran 2.3x as fast as an f32 one (row 62). So `auto` (`super::super::precision`) tries a lossy
//! arithmetic only where this probe finds it faster: the image tower's largest product (the
//! MLP's first layer, 768 by 3072, on 400 rows: 8 images' tokens), planned alone in each
//! arithmetic and run on one thread, as a busy server's workers run, a warm-up each and then
//! five runs of each in turn; the ratios of the fastest runs. About 0.3 s an arithmetic, once,
//! and only for those the CPU has the instructions of (a debug build times a smaller product:
//! [`PROBE`]). Timing the towers themselves at start-up was tried and dropped: on that Xeon,
//! runs of the calibration set on the check's two threads ranked bf16 ahead for the image tower
//! (1.05-1.27x) while the server served more images in f32, ranked the text tower differently
//! from one start to the next (0.92-1.09x), and made start-up 2 s longer.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::bail;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::rewrite;
use crate::engine::precision::{Arithmetic, Lossy};
use crate::engine::threads::TowerPool;

/// The probe's product: rows, summed length, outputs. A debug build's kernels are not
/// optimized (bf16 and f32 alike, about 80x slower), so it times 16 rows, not 400: its figure is
/// that build's kernels', and its tests do not spend 20 s a process on it.
const PROBE: (usize, usize, usize) = (if cfg!(debug_assertions) { 16 } else { 400 }, 768, 3072);
/// Timed runs of each arithmetic, in turn.
const ROUNDS: usize = 5;
/// How many times slower than f32 a first bf16 run may be before that run decides alone: no
/// CPU where it is gains anything from the rounds that would follow.
const HOPELESS: u32 = 4;

/// f32 time over each lossy arithmetic's time for the same product on this CPU (above 1: it is
/// faster), `None` for one whose instructions the CPU lacks (or, logged, if the probe could not
/// run). Measured on the first call only: every later one, and so both towers, get the same
/// figures.
pub fn speedups() -> Lossy<Option<f64>> {
    static SPEEDUPS: OnceLock<Lossy<Option<f64>>> = OnceLock::new();
    *SPEEDUPS.get_or_init(|| {
        let wanted: Vec<Arithmetic> = Arithmetic::LOSSY
            .into_iter()
            .filter(|a| a.supported())
            .collect();
        if wanted.is_empty() {
            return Lossy::default();
        }
        // One thread, whatever pool the process has installed: the ratio is the cores'.
        match TowerPool::new(1).run(true, || measure(&wanted)) {
            Ok((f32_time, times)) => {
                let (mut speedups, mut ms) = (Lossy::default(), Lossy::default());
                for a in Arithmetic::LOSSY {
                    let time = times.of(a);
                    speedups.set(a, time.map(|t| f32_time.as_secs_f64() / t.as_secs_f64()));
                    ms.set(a, time.map(|t| t.as_secs_f64() * 1e3));
                }
                tracing::info!(
                    f32_ms = f32_time.as_secs_f64() * 1e3,
                    bf16_ms = ms.bf16,
                    int8_ms = ms.int8,
                    int16_ms = ms.int16,
                    bf16_speedup = speedups.bf16,
                    int8_speedup = speedups.int8,
                    int16_speedup = speedups.int16,
                    "lossy products timed against f32 on this CPU"
                );
                speedups
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the speed probe failed");
                Lossy::default()
            }
        }
    })
}

/// The fastest run of the probe's product in f32, and in each `wanted` lossy arithmetic (the
/// others `None`).
fn measure(wanted: &[Arithmetic]) -> TractResult<(Duration, Lossy<Option<Duration>>)> {
    let (rows, k, n) = PROBE;
    // Small values of both signs, none of them subnormal.
    let values = |len: usize, step: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * step) % 1000) as f32 / 5000.0 - 0.1)
            .collect()
    };
    let w = Tensor::from_shape(&[k, n], &values(k * n, 7919))?;
    // Rows of one item's tokens, as in a tower's blocks (int8 leaves products of one row per
    // item in f32).
    let x = Tensor::from_shape(&[1, rows, k], &values(rows * k, 104_729))?.into_tvalue();
    let model = || -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact([1, rows, k]))?;
        let w = model.add_const("w", w.clone())?;
        let op = EinSum::new("bmk,kn->bmn".parse()?, f32::datum_type());
        let y = model.wire_node("product", op, &[source, w])?;
        model.select_output_outlets(&y)?;
        Ok(model)
    };
    let plan = |arithmetic: Arithmetic| -> TractResult<Arc<TypedRunnableModel>> {
        let mut model = model()?;
        if rewrite(&mut model, arithmetic)?.by_weights != 1 {
            bail!(
                "the probe's product was not rewritten in {}",
                arithmetic.as_str()
            );
        }
        model.into_optimized()?.into_runnable()
    };
    let time = |plan: &Arc<TypedRunnableModel>| -> TractResult<Duration> {
        let started = Instant::now();
        plan.run(tvec![x.clone()])?;
        Ok(started.elapsed())
    };
    let f32_plan = plan(Arithmetic::F32)?;
    let mut lossy = vec![];
    for &arithmetic in wanted {
        lossy.push((arithmetic, plan(arithmetic)?));
    }
    // Each plan's first run (its buffers, the weights into cache) only screens: an arithmetic
    // whose first run is [`HOPELESS`] times slower than f32's keeps that figure, and the others
    // run in turn with f32 for [`ROUNDS`].
    let f32_first = time(&f32_plan)?;
    let (mut rounds, mut best) = (vec![], Lossy::default());
    for (arithmetic, plan) in lossy {
        let first = time(&plan)?;
        if first > f32_first * HOPELESS {
            best.set(arithmetic, Some(first));
        } else {
            rounds.push((arithmetic, plan, Duration::MAX));
        }
    }
    let mut f32_best = f32_first;
    if !rounds.is_empty() {
        f32_best = Duration::MAX;
        for _ in 0..ROUNDS {
            f32_best = f32_best.min(time(&f32_plan)?);
            for (_, plan, fastest) in &mut rounds {
                *fastest = (*fastest).min(time(plan)?);
            }
        }
    }
    for (arithmetic, _, fastest) in rounds {
        best.set(arithmetic, Some(fastest));
    }
    Ok((f32_best, best))
}
