//! `clipserve embed`: bulk embedding of a folder of images or a file of texts, in-process
//! ([`local`], the server's own preprocessing and engine) or through a running server
//! ([`remote`], its public API), into JSON Lines or `.npy` ([`output`], [`npy`]).
//!
//! ```text
//! items (sorted paths / lines) ─► minus names already in the output (resume)
//!   └─ batches of --batch-size, --in-flight at a time ─► backend ─► one outcome per item
//!       └─ embeddings appended in input order, one write per batch; refusals collected
//!           └─ summary + <output>.skipped.txt
//! ```
//!
//! A run can stop anywhere: after each batch the output is a valid file holding a prefix of
//! the items, and a re-run skips what is already there. Ctrl-C stops at the next batch
//! boundary.

pub mod command;
pub mod items;
pub mod local;
pub mod npy;
pub mod output;
pub mod progress;
pub mod remote;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use thiserror::Error;

pub use items::{Item, Kind};
pub use local::LocalBackend;
pub use output::Format;
pub use progress::ProgressMode;
pub use remote::RemoteBackend;

use output::{sidecar, Output};
use progress::Progress;

/// One item's result: its embedding, or why it was skipped.
pub type Outcome = Result<Vec<f32>, String>;

/// Why a bulk run could not start or had to stop.
#[derive(Debug, Error)]
pub enum BulkError {
    /// The input folder or text file could not be read.
    #[error("{}: {source}", path.display())]
    Input {
        /// The input.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The output could not be written, or an existing one cannot be resumed.
    #[error("{}: {message}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The options do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The server refused the run (not one item): unreachable, wrong key, an internal error.
    #[error("server: {0}")]
    Server(String),
    /// The model failed as a whole (not on one item).
    #[error("model: {0}")]
    Engine(String),
}

/// What embeds the batches.
#[derive(Debug)]
pub enum Backend {
    /// The engine, loaded in this process.
    Local(LocalBackend),
    /// A running server.
    Remote(RemoteBackend),
}

impl Backend {
    /// The embedding width.
    pub fn dims(&self) -> usize {
        match self {
            Backend::Local(b) => b.dims(),
            Backend::Remote(b) => b.dims(),
        }
    }

    /// Where the embeddings come from, for messages.
    pub fn describe(&self) -> String {
        match self {
            Backend::Local(b) => format!("model {} (in-process)", b.model()),
            Backend::Remote(b) => format!("model {} at {}", b.model(), b.base()),
        }
    }

    async fn embed(&self, kind: Kind, items: Vec<Item>) -> Result<Vec<Outcome>, BulkError> {
        match self {
            Backend::Local(b) => b.embed(kind, items).await,
            Backend::Remote(b) => b.embed(kind, items).await,
        }
    }
}

/// What to embed, where to write, and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Images (from a folder) or texts (from a file).
    pub kind: Kind,
    /// The folder or the text file.
    pub input: PathBuf,
    /// The output file.
    pub output: PathBuf,
    /// Its format.
    pub format: Format,
    /// Items per batch (per request in server mode).
    pub batch_size: usize,
    /// Batches in flight at once (overlaps decoding or uploads with inference).
    pub in_flight: usize,
    /// Try at most this many items not yet in the output in this run.
    pub limit: Option<usize>,
    /// How progress is shown.
    pub progress: ProgressMode,
}

/// An item that was not embedded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The item's name (relative path or text).
    pub name: String,
    /// The reason.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Items in the input.
    pub total: usize,
    /// Items already in the output before this run.
    pub already_done: usize,
    /// Items embedded by this run.
    pub embedded: usize,
    /// Items skipped by this run, in input order.
    pub skipped: Vec<Skipped>,
    /// Items left for a later run (by `--limit` or an interruption).
    pub remaining: usize,
    /// Whether Ctrl-C stopped the run early.
    pub interrupted: bool,
    /// The skipped-file report, when anything was skipped.
    pub report: Option<PathBuf>,
    /// Wall time of the embedding loop.
    pub elapsed: Duration,
}

impl Summary {
    /// The summary as printed at the end of a run.
    pub fn render(&self, kind: Kind, output: &std::path::Path) -> String {
        let noun = kind.noun();
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.embedded as f64 / secs
        } else {
            0.0
        };
        let mut text = format!(
            "embedded {} new {noun} in {secs:.1}s ({rate:.1}/s); {} were already in {}; {} skipped",
            self.embedded,
            self.already_done,
            output.display(),
            self.skipped.len()
        );
        if self.remaining > 0 {
            text.push_str(&format!(
                "; {} left for a later run (run the same command again to continue)",
                self.remaining
            ));
        }
        text.push('\n');
        for s in &self.skipped {
            text.push_str(&format!("  skipped {}: {}\n", s.name, s.reason));
        }
        if let Some(report) = &self.report {
            text.push_str(&format!("skipped items listed in {}\n", report.display()));
        }
        text
    }
}

/// Embeds what `options` names with `backend`; `stop` ends the run at the next batch boundary.
pub async fn run(
    options: &Options,
    backend: &Backend,
    stop: &AtomicBool,
) -> Result<Summary, BulkError> {
    let (items, unlisted) = match options.kind {
        Kind::Images => items::image_files(&options.input)?,
        Kind::Texts => (items::text_lines(&options.input)?, Vec::new()),
    };
    let (mut output, mut done, already_done) = Output::open(
        &options.output,
        options.format,
        options.kind,
        backend.dims(),
    )?;
    let mut summary = Summary {
        total: items.len(),
        already_done,
        skipped: unlisted
            .into_iter()
            .map(|u| Skipped {
                name: u.name,
                reason: u.reason,
            })
            .collect(),
        ..Summary::default()
    };
    let mut pending = Vec::new();
    for item in items {
        match done.get_mut(&item.name) {
            Some(count) if *count > 0 => *count -= 1,
            _ if options.format == Format::Npy && item.name.contains('\n') => {
                summary.skipped.push(Skipped {
                    name: item.name.escape_debug().to_string(),
                    reason: "the name has a line break, which the .npy names listing cannot hold"
                        .into(),
                })
            }
            _ => pending.push(item),
        }
    }
    let todo = options.limit.unwrap_or(usize::MAX).min(pending.len());
    summary.remaining = pending.len() - todo;
    pending.truncate(todo);

    let mut progress = Progress::new(options.progress, todo as u64, options.kind.noun());
    if options.progress != ProgressMode::Off {
        progress.println(&format!(
            "embedding {todo} {} with {} into {} ({} already there)",
            options.kind.noun(),
            backend.describe(),
            options.output.display(),
            already_done
        ));
    }
    let started = Instant::now();
    let batches: Vec<Vec<Item>> = pending
        .chunks(options.batch_size.max(1))
        .map(<[Item]>::to_vec)
        .collect();
    let kind = options.kind;
    let mut results = futures::stream::iter(batches)
        .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed)))
        .map(|batch| async move {
            let names: Vec<String> = batch.iter().map(|i| i.name.clone()).collect();
            backend.embed(kind, batch).await.map(|o| (names, o))
        })
        .buffered(options.in_flight.max(1));
    let mut failure = None;
    let mut attempted = 0;
    while let Some(result) = results.next().await {
        let (names, outcomes) = match result {
            Ok(batch) => batch,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let mut records: Vec<(&str, &[f32])> = Vec::with_capacity(names.len());
        let mut skipped = 0;
        for (name, outcome) in names.iter().zip(&outcomes) {
            match outcome {
                Ok(embedding) => records.push((name, embedding)),
                Err(reason) => {
                    skipped += 1;
                    summary.skipped.push(Skipped {
                        name: name.clone(),
                        reason: reason.clone(),
                    });
                }
            }
        }
        attempted += names.len();
        if let Err(e) = output.append(&records) {
            failure = Some(e);
            break;
        }
        summary.embedded += records.len();
        progress.advance(records.len() as u64, skipped);
    }
    drop(results);
    progress.finish();
    summary.elapsed = started.elapsed();
    summary.interrupted = stop.load(Ordering::Relaxed);
    summary.remaining += todo.saturating_sub(attempted);
    output.finish()?;
    summary.report = write_report(&options.output, &summary.skipped)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Writes `<output>.skipped.txt` (name, tab, reason per line), or removes a stale one.
fn write_report(
    output: &std::path::Path,
    skipped: &[Skipped],
) -> Result<Option<PathBuf>, BulkError> {
    let path = sidecar(output, "skipped.txt");
    if skipped.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BulkError::Output {
                path,
                message: e.to_string(),
            }),
            _ => Ok(None),
        };
    }
    let text: String = skipped
        .iter()
        .map(|s| format!("{}\t{}\n", s.name, s.reason))
        .collect();
    std::fs::write(&path, text).map_err(|e| BulkError::Output {
        path: path.clone(),
        message: e.to_string(),
    })?;
    Ok(Some(path))
}
