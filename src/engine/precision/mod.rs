//! Which arithmetic each tower's products by its weight matrices run in, chosen at load on the
//! weights being served.
//!
//! Three lossy arithmetics can make a tower faster than f32: bf16 products (AVX512-BF16) run the
//! image tower about 1.8x faster on Zen 4; int8 products (AVX512-VNNI, `ops/kernel/int8.rs`)
//! run a product 2.6x faster than f32 on an Intel Xeon whose bf16 is slow, and 16-bit integer
//! ones (`ops/kernel/int16.rs`) 1.8x, with steps a quarter of int8's on each input
//! (the text tower there passes the check in 16 bits and not in int8). None is faster on
//! every CPU that has its instructions (`ops/speed.rs`), and how much any moves an
//! embedding depends on the weights: real weights with outliers may round worse than the
//! exports they were measured on. So with [`Precision::Auto`] (the default), [`choose`] first
//! asks how much faster each lossy product is than an f32 one on this CPU (`ops::speedups`,
//! measured once) and keeps as candidates those at least [`MIN_SPEEDUP`] times as fast, the
//! fastest first; without any it runs f32 and checks nothing. Else it builds the tower in f32
//! and embeds the calibration set (`calibration/`, compiled in), then builds it in each
//! candidate in turn and embeds the same set, and keeps the first whose every item's cosine to
//! its f32 embedding reaches the threshold (`model.precision_min_cosine`); f32 when none does.
//! A tower's plans in one arithmetic are dropped before the next arithmetic's are built, so no
//! two hold their weights at the same time; a tower that fails every check pays for building
//! its f32 plans a second time. [`Precision::Bf16`], [`Precision::Int8`] and
//! [`Precision::Int16`] run their one check, report it and keep that arithmetic whatever it
//! found; [`Precision::F32`] runs no check. An f32 tower runs its products by weights in f32
//! tiles of our own where the CPU has AVX-512 (`ops/kernel/fma.rs`), tract's elsewhere.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::encoders::EncodeError;
use super::threads::TowerPool;
use super::EngineError;
use crate::embedding::Embedding;

/// The least speed-up of a lossy product over an f32 one on this CPU (`ops::speedups`) for
/// which `auto` tries that arithmetic: a margin over 1, as the rest of a tower gains less than
/// its products. The CPUs measured so far are far on either side: an Intel Xeon without AMX
/// runs bf16 at 0.55-0.66x our f32 products, int8 at 2.3-2.9x and int16 at 1.8x; Zen 4 runs
/// `vdpbf16ps` at twice its f32 FMA rate.
pub const MIN_SPEEDUP: f64 = 1.15;

/// What the settings ask of a tower's products by its weight matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The fastest lossy arithmetic that the CPU runs at least [`MIN_SPEEDUP`] times as fast as
    /// f32 and whose calibration embeddings stay within `model.precision_min_cosine` of the f32
    /// ones on the weights being served; else f32.
    #[default]
    Auto,
    /// f32 throughout, as exported: the embeddings match PyTorch's (the parity tests). No check.
    F32,
    /// bf16 products wherever the CPU has AVX512-BF16, however fast they are and whatever the
    /// check finds (it still runs and is reported); f32 elsewhere, with a warning.
    Bf16,
    /// int8 products wherever the CPU has AVX512-VNNI, as `bf16` otherwise.
    Int8,
    /// 16-bit integer products (10-bit levels) wherever the CPU has AVX512-VNNI, as `bf16`
    /// otherwise.
    Int16,
}

impl Precision {
    /// The lossy arithmetic this setting asks for outright (`bf16`, `int8`, `int16`); `None` for `auto`
    /// and `f32`.
    pub fn lossy(self) -> Option<Arithmetic> {
        match self {
            Precision::Bf16 => Some(Arithmetic::Bf16),
            Precision::Int8 => Some(Arithmetic::Int8),
            Precision::Int16 => Some(Arithmetic::Int16),
            Precision::Auto | Precision::F32 => None,
        }
    }
}

/// The arithmetic a tower's products by its weight matrices run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arithmetic {
    /// f32 inputs and sums, as exported.
    F32,
    /// bf16 inputs (weights rounded once at load, activations at every run), f32 sums.
    Bf16,
    /// int8 inputs (weights quantized per output feature once at load, activations per row at
    /// every run), integer sums scaled back to f32; products of two activations stay f32.
    Int8,
    /// As `Int8`, in 16-bit integers of 10-bit levels (-511..=511, activations and weights
    /// alike), four times int8's levels each side.
    Int16,
}

impl Arithmetic {
    /// The lossy arithmetics, each a field of [`Lossy`].
    pub const LOSSY: [Arithmetic; 3] = [Arithmetic::Bf16, Arithmetic::Int8, Arithmetic::Int16];

    /// The name used in settings, logs and `/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arithmetic::F32 => "f32",
            Arithmetic::Bf16 => "bf16",
            Arithmetic::Int8 => "int8",
            Arithmetic::Int16 => "int16",
        }
    }

    /// Whether this CPU has the instructions of this arithmetic's products (f32 runs anywhere).
    pub fn supported(self) -> bool {
        match self {
            Arithmetic::F32 => true,
            Arithmetic::Bf16 => super::ops::bf16_supported(),
            Arithmetic::Int8 | Arithmetic::Int16 => super::ops::vnni_supported(),
        }
    }
}

/// One figure for each lossy arithmetic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lossy<T> {
    pub bf16: T,
    pub int8: T,
    pub int16: T,
}

impl<T: Copy> Lossy<T> {
    /// The figure of `arithmetic`, which is a lossy one.
    pub fn of(&self, arithmetic: Arithmetic) -> T {
        match arithmetic {
            Arithmetic::Bf16 => self.bf16,
            Arithmetic::Int8 => self.int8,
            Arithmetic::Int16 => self.int16,
            Arithmetic::F32 => unreachable!("f32 is not lossy"),
        }
    }

    /// Sets the figure of `arithmetic`, which is a lossy one.
    pub fn set(&mut self, arithmetic: Arithmetic, value: T) {
        match arithmetic {
            Arithmetic::Bf16 => self.bf16 = value,
            Arithmetic::Int8 => self.int8 = value,
            Arithmetic::Int16 => self.int16 = value,
            Arithmetic::F32 => unreachable!("f32 is not lossy"),
        }
    }
}

/// Why a tower runs the arithmetic it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The settings asked for f32: nothing was checked.
    F32Requested,
    /// This CPU lacks the instructions of the lossy arithmetic asked for (`bf16`, `int8`,
    /// `int16`), or of all of them (`auto`): f32 is the only choice.
    UnsupportedCpu,
    /// `auto`: this CPU runs no lossy product at least [`MIN_SPEEDUP`] times as fast as an f32
    /// one, so the tower runs f32 and nothing is checked.
    NotFaster,
    /// `auto`: every calibration item reached the threshold in the active arithmetic.
    CheckPassed,
    /// `auto`: in every lossy arithmetic tried, some calibration item fell below the threshold,
    /// so the tower runs f32.
    CheckFailed,
    /// The settings asked for a lossy arithmetic: kept whatever the check found.
    Requested,
}

impl Reason {
    fn describe(self) -> &'static str {
        match self {
            Reason::F32Requested => "f32 asked for: no check",
            Reason::UnsupportedCpu => "this CPU lacks the instructions",
            Reason::NotFaster => "no lossy product is enough faster than f32 on this CPU",
            Reason::CheckPassed => "embeddings of the calibration set within the threshold",
            Reason::CheckFailed => "embeddings of the calibration set below the threshold",
            Reason::Requested => "asked for: kept whatever the check found",
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
    /// Each lossy arithmetic's check: the lowest cosine between a calibration item's embedding
    /// in it and in f32, where it ran.
    pub checks: Lossy<Option<f64>>,
    /// How many times as fast a product ran in each lossy arithmetic as in f32 on this CPU
    /// (`ops::speedups`), where measured (`auto`, or the arithmetic asked for).
    pub speedups: Lossy<Option<f64>>,
    /// Why `active` is what it is.
    pub reason: Reason,
}

impl TowerPrecision {
    /// The highest of the lowest cosines the checks found ([`TowerPrecision::checks`]): the
    /// active arithmetic's when it is a lossy one, the closest any came when all failed; `None`
    /// when nothing was checked.
    pub fn check_min_cosine(&self) -> Option<f64> {
        Arithmetic::LOSSY
            .into_iter()
            .filter_map(|a| self.checks.of(a))
            .reduce(f64::max)
    }
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

/// The lossy arithmetics a tower asked for `requested` will check, in the order it tries them
/// (`speedups` gives `ops::speedups`, called only for `auto`), or why there are none.
fn candidates(
    requested: Precision,
    speedups: impl FnOnce() -> Lossy<Option<f64>>,
) -> Result<Vec<Arithmetic>, Reason> {
    if requested == Precision::F32 {
        return Err(Reason::F32Requested);
    }
    if let Some(asked) = requested.lossy() {
        return if asked.supported() {
            Ok(vec![asked])
        } else {
            Err(Reason::UnsupportedCpu)
        };
    }
    // `auto`: the lossy arithmetics this CPU runs, and among them those fast enough.
    let supported: Vec<Arithmetic> = Arithmetic::LOSSY
        .into_iter()
        .filter(|a| a.supported())
        .collect();
    if supported.is_empty() {
        return Err(Reason::UnsupportedCpu);
    }
    let speedups = speedups();
    let mut fast: Vec<(Arithmetic, f64)> = supported
        .into_iter()
        .filter_map(|a| speedups.of(a).map(|s| (a, s)))
        .filter(|&(_, s)| s >= MIN_SPEEDUP)
        .collect();
    fast.sort_by(|a, b| b.1.total_cmp(&a.1));
    if fast.is_empty() {
        return Err(Reason::NotFaster);
    }
    Ok(fast.into_iter().map(|(a, _)| a).collect())
}

/// Whether [`choose`] will run a check for a tower asked for `requested` (so whether the
/// calibration set must be prepared).
pub(super) fn checks(requested: Precision) -> bool {
    candidates(requested, super::ops::speedups).is_ok()
}

/// Builds one tower in the arithmetic `requested` and the CPU allow (see the module docs):
/// `build` makes the tower's plans in one arithmetic, `embed` runs the calibration set through
/// them, `speedups` gives `ops::speedups`. `tower` names the tower in logs.
pub(super) fn choose<E: Sync>(
    tower: &str,
    requested: Precision,
    min_cosine_allowed: f64,
    speedups: impl Fn() -> Lossy<Option<f64>>,
    mut build: impl FnMut(Arithmetic) -> Result<E, EngineError>,
    embed: impl Fn(&E) -> Result<Vec<Embedding>, EncodeError> + Sync,
) -> Result<(E, TowerPrecision), EngineError> {
    // Every figure for `auto`, the one asked for otherwise.
    let measured = match (requested, requested.lossy()) {
        (Precision::Auto, _) => speedups(),
        (_, Some(asked)) => {
            let mut only = Lossy::default();
            only.set(asked, speedups().of(asked));
            only
        }
        (_, None) => Lossy::default(),
    };
    let report = |active, checks: Lossy<Option<f64>>, reason| TowerPrecision {
        requested,
        active,
        checks,
        speedups: measured,
        reason,
    };
    let candidates = match candidates(requested, || measured) {
        Ok(candidates) => candidates,
        Err(reason) => {
            let why = reason.describe();
            if requested.lossy().is_some() {
                tracing::warn!(
                    tower,
                    precision = "f32",
                    reason = why,
                    "{requested:?} products asked for, running f32"
                );
            } else {
                tracing::info!(
                    tower,
                    precision = "f32",
                    reason = why,
                    bf16_speedup = measured.bf16,
                    int8_speedup = measured.int8,
                    int16_speedup = measured.int16,
                    min_speedup = MIN_SPEEDUP,
                    "tower precision"
                );
            }
            let tower = build(Arithmetic::F32)?;
            return Ok((tower, report(Arithmetic::F32, Lossy::default(), reason)));
        }
    };
    let started = Instant::now();
    let pool = calibration_pool();
    let reference = {
        let f32_tower = build(Arithmetic::F32)?;
        pool.run(true, || embed(&f32_tower))
            .map_err(EngineError::Check)?
        // The f32 plans go here, before a lossy arithmetic's are built.
    };
    let f32_ms = started.elapsed().as_millis() as u64;
    let mut checks = Lossy::default();
    for arithmetic in candidates {
        let lossy_tower = build(arithmetic)?;
        let got = pool
            .run(true, || embed(&lossy_tower))
            .map_err(EngineError::Check)?;
        let lowest = min_cosine(&reference, &got);
        checks.set(arithmetic, Some(lowest));
        let check_ms = started.elapsed().as_millis() as u64;
        let (precision, items) = (arithmetic.as_str(), reference.len());
        let speedup = measured.of(arithmetic);
        if requested != Precision::Auto || lowest >= min_cosine_allowed {
            let reason = if requested == Precision::Auto {
                Reason::CheckPassed
            } else {
                Reason::Requested
            };
            tracing::info!(
                tower,
                precision,
                reason = reason.describe(),
                lowest_cosine = lowest,
                threshold = min_cosine_allowed,
                items,
                speedup,
                f32_ms,
                check_ms,
                "tower precision"
            );
            return Ok((lossy_tower, report(arithmetic, checks, reason)));
        }
        drop(lossy_tower);
        tracing::warn!(
            tower,
            precision,
            reason = Reason::CheckFailed.describe(),
            lowest_cosine = lowest,
            threshold = min_cosine_allowed,
            items,
            speedup,
            f32_ms,
            check_ms,
            "{precision} products moved a calibration embedding too far (lowest cosine to f32 {lowest:.6} < {min_cosine_allowed}): not running them"
        );
    }
    tracing::info!(
        tower,
        precision = "f32",
        reason = Reason::CheckFailed.describe(),
        "tower precision"
    );
    let tower = build(Arithmetic::F32)?;
    Ok((tower, report(Arithmetic::F32, checks, Reason::CheckFailed)))
}

#[cfg(test)]
mod tests;
