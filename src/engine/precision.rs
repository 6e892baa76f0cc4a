//! Which arithmetic each tower's products by its weight matrices run in, chosen at load on the
//! weights being served.
//!
//! bf16 products (`bf16/`) run the image tower about 1.8x faster on a CPU whose AVX512-BF16 is
//! fast (Zen 4), but not on every CPU that has it (`bf16/speed.rs`: an Intel Xeon here runs
//! them at half its f32 rate, and served fewer images and queries in bf16), and how much they
//! move an embedding depends on the weights: real weights with outliers may round worse than
//! the exports they were measured on. So with [`Precision::Auto`] (the default), [`choose`]
//! first asks how much faster a bf16 product is than an f32 one on this CPU
//! (`bf16::speedup`, measured once) and below [`MIN_BF16_SPEEDUP`] keeps f32 and checks
//! nothing; else it builds the tower in f32 and embeds the calibration set (`calibration/`,
//! compiled in), builds it again with bf16 products and embeds the same set, and keeps bf16
//! only if every item's cosine to its f32 embedding reaches the threshold
//! (`model.precision_min_cosine`). The f32 plans are dropped before the bf16 ones are built, so
//! the two never hold their weights at the same time; the rare tower that fails the check pays
//! for building its f32 plans a second time. [`Precision::Bf16`] runs the same check, reports
//! it and keeps bf16 whatever it found; [`Precision::F32`] runs no check. An f32 tower runs its
//! products by weights in f32 tiles of our own where the CPU has AVX-512 (`bf16/kernel/fma.rs`),
//! tract's elsewhere.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::encoders::EncodeError;
use super::threads::TowerPool;
use super::EngineError;
use crate::embedding::Embedding;

/// The least speed-up of a bf16 product over an f32 one on this CPU (`bf16::speedup`) for
/// which `auto` trades f32's exact products for bf16's: a margin over 1, as the rest of a tower
/// gains less than its products. The CPUs measured so far are far on either side: an Intel Xeon
/// without AMX 0.73-0.75 against tract's f32 products, 0.63-0.66 against ours; Zen 4 runs
/// `vdpbf16ps` at twice its f32 FMA rate.
pub const MIN_BF16_SPEEDUP: f64 = 1.15;

/// What the settings ask of a tower's products by its weight matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 where the CPU has AVX512-BF16, runs bf16 products at least [`MIN_BF16_SPEEDUP`]
    /// times as fast as f32 ones, and the calibration set's embeddings stay within
    /// `model.precision_min_cosine` of the f32 ones on the weights being served; else f32.
    #[default]
    Auto,
    /// f32 throughout, as exported: the embeddings match PyTorch's (the parity tests). No check.
    F32,
    /// bf16 products wherever the CPU has AVX512-BF16, however fast they are and whatever the
    /// check finds (it still runs and is reported); f32 elsewhere, with a warning.
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
    /// `auto`: this CPU runs bf16 products less than [`MIN_BF16_SPEEDUP`] times as fast as f32
    /// ones, so the tower runs f32 and nothing is checked.
    Bf16NotFaster,
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
            Reason::Bf16NotFaster => "bf16 products are not enough faster than f32 on this CPU",
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
    /// ran (`auto` or `bf16` on a CPU with AVX512-BF16, `auto` only where bf16 is faster).
    pub check_min_cosine: Option<f64>,
    /// How many times as fast a bf16 product ran as an f32 one on this CPU
    /// (`bf16::speedup`), when measured (`auto` or `bf16` on a CPU with AVX512-BF16).
    pub bf16_speedup: Option<f64>,
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
    match requested {
        Precision::F32 => false,
        Precision::Bf16 => super::bf16::supported(),
        Precision::Auto => fast_enough(super::bf16::speedup()),
    }
}

/// Whether a measured bf16 speed-up (`bf16::speedup`) lets `auto` keep bf16.
fn fast_enough(speedup: Option<f64>) -> bool {
    speedup.is_some_and(|s| s >= MIN_BF16_SPEEDUP)
}

/// Builds one tower in the arithmetic `requested` and the CPU allow (see the module docs):
/// `build` makes the tower's plans in one arithmetic, `embed` runs the calibration set through
/// them, `speedup` gives `bf16::speedup`. `tower` names the tower in logs.
pub(super) fn choose<E: Sync>(
    tower: &str,
    requested: Precision,
    min_cosine_allowed: f64,
    speedup: impl FnOnce() -> Option<f64>,
    mut build: impl FnMut(Arithmetic) -> Result<E, EngineError>,
    embed: impl Fn(&E) -> Result<Vec<Embedding>, EncodeError> + Sync,
) -> Result<(E, TowerPrecision), EngineError> {
    let report = |active, check_min_cosine, bf16_speedup, reason| TowerPrecision {
        requested,
        active,
        check_min_cosine,
        bf16_speedup,
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
            report(Arithmetic::F32, None, None, Reason::F32Requested),
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
            report(Arithmetic::F32, None, None, Reason::NoBf16Cpu),
        ));
    }
    let bf16_speedup = speedup();
    if requested == Precision::Auto && !fast_enough(bf16_speedup) {
        tracing::info!(
            tower,
            precision = "f32",
            reason = Reason::Bf16NotFaster.describe(),
            bf16_speedup,
            min_speedup = MIN_BF16_SPEEDUP,
            "tower precision"
        );
        return Ok((
            build(Arithmetic::F32)?,
            report(Arithmetic::F32, None, bf16_speedup, Reason::Bf16NotFaster),
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
                bf16_speedup,
                f32_ms,
                check_ms,
                "tower precision"
            );
            let report = report(Arithmetic::Bf16, Some(lowest), bf16_speedup, reason);
            Ok((bf16_tower, report))
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
                bf16_speedup,
                f32_ms,
                check_ms,
                "bf16 products moved a calibration embedding too far (lowest cosine to f32 {lowest:.6} < {min_cosine_allowed}): running f32"
            );
            let tower = build(Arithmetic::F32)?;
            let report = report(
                Arithmetic::F32,
                Some(lowest),
                bf16_speedup,
                Reason::CheckFailed,
            );
            Ok((tower, report))
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

    /// `f32` never builds a bf16 tower; `auto` without the instructions neither, nor where bf16
    /// products are not enough faster (and it checks nothing); with them and fast, `auto`
    /// keeps bf16 only at or above the threshold; `bf16` keeps it below, and slower.
    #[test]
    fn the_choice_follows_the_mode_the_cpu_the_speed_and_the_threshold() {
        use Arithmetic::{Bf16, F32};
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
                F32 => unit(&[1.0, 0.0]),
                Bf16 => unit(&[1.0, 0.01]),
            }])
        };
        let cos = 1.0 / (1.0f64 + 0.0001).sqrt();
        let built = std::cell::RefCell::new(Vec::new());
        let fast = || Some(2.0);
        let (got, r) = choose("t", Precision::F32, 0.9, fast, build(&built), embed).unwrap();
        assert_eq!(
            (got, r.check_min_cosine, r.bf16_speedup, r.reason),
            (F32, None, None, Reason::F32Requested)
        );
        assert_eq!(*built.borrow(), [F32]);
        if !super::super::bf16::supported() {
            eprintln!("no AVX512-BF16 on this CPU: only the f32 cases run");
            let (got, r) = choose("t", Precision::Auto, 0.9, fast, build(&built), embed).unwrap();
            assert_eq!((got, r.reason), (F32, Reason::NoBf16Cpu));
            return;
        }
        let just_under = MIN_BF16_SPEEDUP - 0.01;
        for (mode, threshold, speedup, active, reason, builds) in [
            (
                Precision::Auto,
                0.99,
                Some(2.0),
                Bf16,
                Reason::CheckPassed,
                vec![F32, Bf16],
            ),
            (
                Precision::Auto,
                1.0,
                Some(2.0),
                F32,
                Reason::CheckFailed,
                vec![F32, Bf16, F32],
            ),
            (
                Precision::Bf16,
                1.0,
                Some(2.0),
                Bf16,
                Reason::Bf16Requested,
                vec![F32, Bf16],
            ),
            // Slower in bf16, just under the least speed-up, or not measured: `auto` runs f32
            // and builds nothing else; `bf16` keeps bf16 all the same.
            (
                Precision::Auto,
                0.99,
                Some(0.7),
                F32,
                Reason::Bf16NotFaster,
                vec![F32],
            ),
            (
                Precision::Auto,
                0.99,
                Some(just_under),
                F32,
                Reason::Bf16NotFaster,
                vec![F32],
            ),
            (
                Precision::Auto,
                0.99,
                None,
                F32,
                Reason::Bf16NotFaster,
                vec![F32],
            ),
            (
                Precision::Bf16,
                0.99,
                Some(0.7),
                Bf16,
                Reason::Bf16Requested,
                vec![F32, Bf16],
            ),
        ] {
            let what = format!("{mode:?}, threshold {threshold}, speed-up {speedup:?}");
            built.borrow_mut().clear();
            let (got, r) = choose("t", mode, threshold, || speedup, build(&built), embed).unwrap();
            assert_eq!(
                (got, r.active, r.reason),
                (active, active, reason),
                "{what}"
            );
            assert_eq!(r.bf16_speedup, speedup, "{what}");
            if reason == Reason::Bf16NotFaster {
                assert_eq!(r.check_min_cosine, None, "{what}");
            } else {
                assert!((r.check_min_cosine.unwrap() - cos).abs() < 1e-6, "{what}");
            }
            assert_eq!(*built.borrow(), builds, "{what}");
        }
    }
}
