//! Which arithmetic each tower's products by its weight matrices run in, chosen at load on the
//! weights being served.
//!
//! bf16 products (`bf16/`) run the image tower about 1.7x faster where the CPU has AVX512-BF16,
//! but how much they move an embedding depends on the weights: real weights with outliers may
//! round worse than the exports they were measured on. So with [`Precision::Auto`] (the
//! default), [`choose`] builds the tower in f32 and embeds the calibration set (`calibration/`,
//! compiled in), builds it again with bf16 products and embeds the same set, and keeps bf16
//! only if every item's cosine to its f32 embedding reaches the threshold
//! (`model.precision_min_cosine`). The f32 plans are dropped before the bf16 ones are built, so
//! the two never hold their weights at the same time; the rare tower that fails the check pays
//! for building its f32 plans a second time. [`Precision::Bf16`] runs the same check, reports
//! it and keeps bf16 whatever it found; [`Precision::F32`] runs no check and builds what it did
//! before this choice existed.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::encoders::EncodeError;
use super::threads::TowerPool;
use super::EngineError;
use crate::embedding::Embedding;

/// What the settings ask of a tower's products by its weight matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 where the CPU has AVX512-BF16 and the calibration set's embeddings stay within
    /// `model.precision_min_cosine` of the f32 ones on the weights being served; else f32.
    #[default]
    Auto,
    /// f32 throughout, as exported: the embeddings match PyTorch's (the parity tests). No check.
    F32,
    /// bf16 products wherever the CPU has AVX512-BF16, whatever the check finds (it still runs
    /// and is reported); f32 elsewhere, with a warning.
    Bf16,
}

/// The arithmetic a tower's products by its weight matrices run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arithmetic {
    /// f32 inputs and sums, as exported.
    F32,
    /// bf16 inputs (weights rounded once at load, activations at every run), f32 sums.
    Bf16,
}

impl Arithmetic {
    /// The name used in settings, logs and `/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arithmetic::F32 => "f32",
            Arithmetic::Bf16 => "bf16",
        }
    }
}

/// Why a tower runs the arithmetic it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The settings asked for f32: nothing was checked.
    F32Requested,
    /// This CPU has no AVX512-BF16: f32 is the only choice.
    NoBf16Cpu,
    /// `auto`: every calibration item reached the threshold in bf16.
    CheckPassed,
    /// `auto`: some calibration item fell below the threshold in bf16, so the tower runs f32.
    CheckFailed,
    /// The settings asked for bf16: kept whatever the check found.
    Bf16Requested,
}

impl Reason {
    fn describe(self) -> &'static str {
        match self {
            Reason::F32Requested => "f32 asked for: no check",
            Reason::NoBf16Cpu => "this CPU has no AVX512-BF16",
            Reason::CheckPassed => "bf16 embeddings of the calibration set within the threshold",
            Reason::CheckFailed => "bf16 embeddings of the calibration set below the threshold",
            Reason::Bf16Requested => "bf16 asked for: kept whatever the check found",
        }
    }
}

/// What one tower runs, and what the start-up check measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TowerPrecision {
    /// What the settings asked for.
    pub requested: Precision,
    /// What the tower's plans run.
    pub active: Arithmetic,
    /// The lowest cosine between a calibration item's bf16 and f32 embeddings, when the check
    /// ran (`auto` or `bf16` on a CPU with AVX512-BF16).
    pub check_min_cosine: Option<f64>,
    /// Why `active` is what it is.
    pub reason: Reason,
}

/// What both towers run, for the layers above (`/info`, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrecisionReport {
    /// The image tower.
    pub image: TowerPrecision,
    /// The text tower.
    pub text: TowerPrecision,
}

/// The lowest cosine between paired embeddings (unit length, so a dot product in f64); 1 when
/// there are none.
pub fn min_cosine(a: &[Embedding], b: &[Embedding]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            x.as_slice()
                .iter()
                .zip(y.as_slice())
                .map(|(&p, &q)| f64::from(p) * f64::from(q))
                .sum::<f64>()
        })
        .fold(1.0, f64::min)
}

/// Threads for the calibration runs: nothing else runs during the load.
fn calibration_pool() -> TowerPool {
    TowerPool::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether [`choose`] will run the check for a tower asked for `requested` (so whether the
/// calibration set must be prepared).
pub(super) fn checks(requested: Precision) -> bool {
    requested != Precision::F32 && super::bf16::supported()
}

/// Builds one tower in the arithmetic `requested` and the CPU allow (see the module docs):
/// `build` makes the tower's plans in one arithmetic, `embed` runs the calibration set through
/// them. `tower` names the tower in logs.
pub(super) fn choose<E: Sync>(
    tower: &str,
    requested: Precision,
    min_cosine_allowed: f64,
    mut build: impl FnMut(Arithmetic) -> Result<E, EngineError>,
    embed: impl Fn(&E) -> Result<Vec<Embedding>, EncodeError> + Sync,
) -> Result<(E, TowerPrecision), EngineError> {
    let report = |active, check_min_cosine, reason| TowerPrecision {
        requested,
        active,
        check_min_cosine,
        reason,
    };
    if requested == Precision::F32 {
        tracing::info!(
            tower,
            precision = "f32",
            reason = Reason::F32Requested.describe(),
            "tower precision"
        );
        return Ok((
            build(Arithmetic::F32)?,
            report(Arithmetic::F32, None, Reason::F32Requested),
        ));
    }
    if !super::bf16::supported() {
        let reason = Reason::NoBf16Cpu.describe();
        if requested == Precision::Bf16 {
            tracing::warn!(
                tower,
                precision = "f32",
                reason,
                "bf16 products asked for, running f32"
            );
        } else {
            tracing::info!(tower, precision = "f32", reason, "tower precision");
        }
        return Ok((
            build(Arithmetic::F32)?,
            report(Arithmetic::F32, None, Reason::NoBf16Cpu),
        ));
    }
    let started = Instant::now();
    let pool = calibration_pool();
    let reference = {
        let f32_tower = build(Arithmetic::F32)?;
        pool.run(true, || embed(&f32_tower))
            .map_err(EngineError::Check)?
        // The f32 plans go here, before the bf16 ones are built.
    };
    let f32_ms = started.elapsed().as_millis() as u64;
    let bf16_tower = build(Arithmetic::Bf16)?;
    let got = pool
        .run(true, || embed(&bf16_tower))
        .map_err(EngineError::Check)?;
    let lowest = min_cosine(&reference, &got);
    let check_ms = started.elapsed().as_millis() as u64;
    let passed = lowest >= min_cosine_allowed;
    let fields = |reason: Reason| (reason.describe(), reference.len());
    match (requested, passed) {
        (Precision::Bf16, _) | (_, true) => {
            let reason = if requested == Precision::Bf16 {
                Reason::Bf16Requested
            } else {
                Reason::CheckPassed
            };
            let (why, items) = fields(reason);
            tracing::info!(
                tower,
                precision = "bf16",
                reason = why,
                lowest_cosine = lowest,
                threshold = min_cosine_allowed,
                items,
                f32_ms,
                check_ms,
                "tower precision"
            );
            Ok((bf16_tower, report(Arithmetic::Bf16, Some(lowest), reason)))
        }
        _ => {
            drop(bf16_tower);
            let (why, items) = fields(Reason::CheckFailed);
            tracing::warn!(
                tower,
                precision = "f32",
                reason = why,
                lowest_cosine = lowest,
                threshold = min_cosine_allowed,
                items,
                f32_ms,
                check_ms,
                "bf16 products moved a calibration embedding too far (lowest cosine to f32 {lowest:.6} < {min_cosine_allowed}): running f32"
            );
            let tower = build(Arithmetic::F32)?;
            Ok((
                tower,
                report(Arithmetic::F32, Some(lowest), Reason::CheckFailed),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Embedding {
        Embedding::new(v.to_vec()).expect("a non-zero vector")
    }

    #[test]
    fn the_lowest_cosine_is_the_worst_pair() {
        let a = [unit(&[1.0, 0.0]), unit(&[0.0, 1.0])];
        let b = [unit(&[1.0, 0.0]), unit(&[1.0, 1.0])];
        let c = min_cosine(&a, &b);
        assert!((c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-7, "{c}");
        assert_eq!(min_cosine(&[], &[]), 1.0);
    }

    #[test]
    fn settings_spell_the_modes_in_lowercase() {
        #[derive(Deserialize)]
        struct S {
            p: Precision,
        }
        for (text, want) in [
            ("auto", Precision::Auto),
            ("f32", Precision::F32),
            ("bf16", Precision::Bf16),
        ] {
            let s: S = toml::from_str(&format!("p = \"{text}\"")).unwrap();
            assert_eq!(s.p, want);
        }
        assert!(toml::from_str::<S>("p = \"fp16\"").is_err());
        assert_eq!(Precision::default(), Precision::Auto);
        assert_eq!(
            serde_json::to_value(Arithmetic::Bf16).unwrap(),
            serde_json::json!("bf16")
        );
    }

    /// `f32` never builds a bf16 tower; `auto` without the instructions neither; with them,
    /// `auto` keeps bf16 only at or above the threshold and `bf16` keeps it below.
    #[test]
    fn the_choice_follows_the_mode_the_cpu_and_the_threshold() {
        // A fake tower: its "embedding" is a fixed direction per arithmetic.
        fn build(
            built: &std::cell::RefCell<Vec<Arithmetic>>,
        ) -> impl FnMut(Arithmetic) -> Result<Arithmetic, EngineError> + '_ {
            move |a| {
                built.borrow_mut().push(a);
                Ok(a)
            }
        }
        let embed = |a: &Arithmetic| -> Result<Vec<Embedding>, EncodeError> {
            Ok(vec![match a {
                Arithmetic::F32 => unit(&[1.0, 0.0]),
                Arithmetic::Bf16 => unit(&[1.0, 0.01]),
            }])
        };
        let cos = 1.0 / (1.0f64 + 0.0001).sqrt();
        let built = std::cell::RefCell::new(Vec::new());
        let (got, r) = choose("t", Precision::F32, 0.9, build(&built), embed).unwrap();
        assert_eq!(
            (got, r.check_min_cosine, r.reason),
            (Arithmetic::F32, None, Reason::F32Requested)
        );
        assert_eq!(*built.borrow(), [Arithmetic::F32]);
        if !super::super::bf16::supported() {
            eprintln!("no AVX512-BF16 on this CPU: only the f32 cases run");
            let (got, r) = choose("t", Precision::Auto, 0.9, build(&built), embed).unwrap();
            assert_eq!((got, r.reason), (Arithmetic::F32, Reason::NoBf16Cpu));
            return;
        }
        for (mode, threshold, active, reason, builds) in [
            (
                Precision::Auto,
                0.99,
                Arithmetic::Bf16,
                Reason::CheckPassed,
                vec![Arithmetic::F32, Arithmetic::Bf16],
            ),
            (
                Precision::Auto,
                1.0,
                Arithmetic::F32,
                Reason::CheckFailed,
                vec![Arithmetic::F32, Arithmetic::Bf16, Arithmetic::F32],
            ),
            (
                Precision::Bf16,
                1.0,
                Arithmetic::Bf16,
                Reason::Bf16Requested,
                vec![Arithmetic::F32, Arithmetic::Bf16],
            ),
        ] {
            built.borrow_mut().clear();
            let (got, r) = choose("t", mode, threshold, build(&built), embed).unwrap();
            assert_eq!(
                (got, r.active, r.reason),
                (active, active, reason),
                "{mode:?} {threshold}"
            );
            assert!((r.check_min_cosine.unwrap() - cos).abs() < 1e-6);
            assert_eq!(*built.borrow(), builds, "{mode:?} {threshold}");
        }
    }
}
