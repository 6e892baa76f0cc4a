//! The bounded queue in front of one tower, and the inference threads that drain it in batches.
//!
//! ```text
//! handler ──submit(items)──► [ bounded mpsc: one Job per item, each with its own oneshot ]
//!                                   │ a free worker takes what is queued (up to max items /
//!                                   │ token budget), lingering briefly for more under light load,
//!                                   │ cut to a batch size the tower has a plan for (images)
//!                                   ▼
//!                            worker thread (std::thread): skips items whose caller left,
//!                            runs the batch (panics caught), answers each oneshot
//! ```
//!
//! One bad item fails only itself: when a run fails, the worker runs the batch again without
//! the item the failure names, or, when it names none (a panic, a failure of the whole run),
//! each item alone. Every other item, whichever request it came from, still gets its embedding.
//!
//! A request's items are queued all or none (`try_reserve_many`), so a full queue answers at
//! once and never half-accepts a request. Every accepted item gets exactly one answer, from its
//! own channel, so a result can never reach another caller. Dropping the last [`Batcher`] handle
//! closes the channel: the workers finish what is queued and exit.
//!
//! Readiness ([`Batcher::healthy`]) is built so that a replica behind a load balancer can
//! always recover: a panic inside a batch fails that batch only; a panic anywhere else in a
//! worker's loop restarts the loop on the same thread (its batch fails, nothing else is lost),
//! so a tower never silently loses its workers; and a run of failed batches marks the tower
//! unready only for `BatchPolicy::failure_cooldown`, after which it takes traffic again and
//! one success clears it (an unready replica gets no traffic, so it could never see a success
//! if the mark lasted until one).

mod idle;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::embedding::Embedding;
use worker::Worker;

pub use idle::{spawn_idle_release, IdleRelease, TowerWatch};

/// After this many failed batches in a row, a tower reports itself not ready (for a cooldown).
pub const UNHEALTHY_AFTER_FAILURES: usize = 3;

/// Why an accepted item got no embedding.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum InferError {
    /// The inference run failed (the message is for logs, not callers).
    #[error("inference failed: {0}")]
    Failed(String),
    /// The inference run panicked; the worker survived and goes on with the next batch.
    #[error("inference panicked")]
    Panicked,
    /// The worker went away before answering (shutdown, or its loop crashed and restarted).
    #[error("the inference worker stopped")]
    WorkerGone,
}

/// The queue was full: nothing of the request was queued.
#[derive(Debug, Clone, Copy, Error, PartialEq)]
#[error("the {tower} queue is full ({capacity} items)")]
pub struct QueueFull {
    /// Which tower.
    pub tower: &'static str,
    /// Its capacity.
    pub capacity: usize,
}

/// What a worker does with a batch: embeddings in the same order, or why the run failed.
pub type RunFn<I> = dyn Fn(&[I], RunContext) -> Result<Vec<Embedding>, RunError> + Send + Sync;

/// Why a batch run failed.
#[derive(Debug, Clone, Error, PartialEq)]
#[error("{message}")]
pub struct RunError {
    /// The batch position of the item the failure is about, when the run could tell (an output
    /// that is not a usable embedding); `None` when the whole run failed.
    pub item: Option<usize>,
    /// What went wrong (for logs, not callers).
    pub message: String,
}

impl RunError {
    /// A failure of the whole run.
    pub fn batch(message: impl Into<String>) -> RunError {
        RunError {
            item: None,
            message: message.into(),
        }
    }
}

/// What a run knows about its tower when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunContext {
    /// Items still waiting in the queue once this batch was taken: another worker may start on
    /// them at once, so a run should not count on having the cores to itself.
    pub waiting: usize,
    /// Other batches of the tower running as this one starts.
    pub beside: usize,
    /// Items announced ([`Batcher::expect`]) and not yet queued as this run starts: images
    /// being decoded, whose batch another worker will start in a few milliseconds.
    pub expected: usize,
}

impl RunContext {
    /// True when the run has the tower to itself: no other batch running, none waiting, none
    /// on its way. A run that takes the pool's threads while another starts beside it puts
    /// three threads on two cores, and its split products wait for whichever of its threads the
    /// other run displaced (bench/RESULTS.md's optimisation log, row 38).
    pub fn alone(&self) -> bool {
        self.waiting == 0 && self.beside == 0 && self.expected == 0
    }
}

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct BatchPolicy {
    /// Most items per batch.
    pub max_items: usize,
    /// Batch sizes the tower runs without padding (the plans it has), ascending. When set, a
    /// worker takes the largest of them the queue fills and leaves the rest queued for the next
    /// free worker: with images, whose cost per item hardly falls with the batch, two workers
    /// each running one image beat one worker padding five images to eight or running them in
    /// turn. Empty: any size up to `max_items`.
    pub run_sizes: Vec<usize>,
    /// Most "cost" per batch, counted as items x costliest item (tokens with padding, for
    /// text); `usize::MAX` for none.
    pub max_cost: usize,
    /// How long to wait for more items once one is in hand.
    pub linger: Duration,
    /// Linger only while items are announced ([`Batcher::expect`]) and not yet queued: for a
    /// tower whose requests announce themselves before a slow preprocessing step (images are
    /// decoded first), a lone item then runs at once instead of waiting for nobody.
    pub linger_only_when_expected: bool,
    /// Inference threads.
    pub workers: usize,
    /// Queue capacity in items.
    pub capacity: usize,
    /// How long a tower whose last [`UNHEALTHY_AFTER_FAILURES`] batches failed reports itself
    /// unready, counted from its last failure; then it is offered traffic again.
    pub failure_cooldown: Duration,
}

/// Observations a batcher reports as it works (metrics live elsewhere; see `telemetry`).
pub trait BatchObserver: Send + Sync {
    /// A batch ran: its size, its cost, how long inference took, and whether it succeeded.
    fn batch(&self, tower: &'static str, items: usize, cost: usize, elapsed: Duration, ok: bool);
    /// Items were dropped before inference because their callers had gone.
    fn skipped(&self, tower: &'static str, items: usize);
    /// The number of items waiting changed.
    fn depth(&self, tower: &'static str, depth: usize);
}

/// An observer that ignores everything.
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn batch(&self, _: &'static str, _: usize, _: usize, _: Duration, _: bool) {}
    fn skipped(&self, _: &'static str, _: usize) {}
    fn depth(&self, _: &'static str, _: usize) {}
}

struct Job<I> {
    item: I,
    cost: usize,
    reply: oneshot::Sender<Result<Embedding, InferError>>,
}

struct Intake<I> {
    rx: mpsc::Receiver<Job<I>>,
    /// Items taken from the queue that the last batch left (over its cost budget, or beyond
    /// the run size it was cut to), oldest first; they start the next batch.
    carried: VecDeque<Job<I>>,
}

struct Shared {
    tower: &'static str,
    depth: AtomicUsize,
    /// Items announced by [`Batcher::expect`] and not yet queued.
    expected: AtomicUsize,
    /// Batches being run.
    running: AtomicUsize,
    /// Batches run so far.
    completed: AtomicU64,
    consecutive_failures: AtomicUsize,
    /// When the last batch failed, in milliseconds since `epoch`.
    last_failure_ms: AtomicU64,
    epoch: Instant,
    failure_cooldown: Duration,
    workers_alive: AtomicUsize,
    /// Worker loops restarted after a panic outside a batch.
    restarts: AtomicUsize,
    /// Test hook: the next N batches panic inside the worker (see [`Batcher::inject_panics`]).
    inject_panics: AtomicUsize,
    /// Test hook: the next N batches crash the worker loop (see [`Batcher::inject_crashes`]).
    inject_crashes: AtomicUsize,
    observer: Arc<dyn BatchObserver>,
    closed: AtomicBool,
}

/// A cheap, cloneable handle to one tower's queue.
pub struct Batcher<I> {
    tx: mpsc::Sender<Job<I>>,
    shared: Arc<Shared>,
    capacity: usize,
}

impl<I> Clone for Batcher<I> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            capacity: self.capacity,
        }
    }
}

impl<I: Send + 'static> Batcher<I> {
    /// Starts `policy.workers` inference threads that run batches with `run`. `runtime` is
    /// used by the workers to wait for more items with a deadline.
    pub fn start(
        tower: &'static str,
        policy: BatchPolicy,
        run: Arc<RunFn<I>>,
        observer: Arc<dyn BatchObserver>,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<(Batcher<I>, Vec<std::thread::JoinHandle<()>>)> {
        let (tx, rx) = mpsc::channel(policy.capacity);
        let shared = Arc::new(Shared {
            tower,
            depth: AtomicUsize::new(0),
            expected: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            consecutive_failures: AtomicUsize::new(0),
            last_failure_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            failure_cooldown: policy.failure_cooldown,
            workers_alive: AtomicUsize::new(0),
            restarts: AtomicUsize::new(0),
            inject_panics: AtomicUsize::new(0),
            inject_crashes: AtomicUsize::new(0),
            observer,
            closed: AtomicBool::new(false),
        });
        let intake = Arc::new(Mutex::new(Intake {
            rx,
            carried: VecDeque::new(),
        }));
        let mut handles = Vec::new();
        for n in 0..policy.workers {
            let worker = Worker {
                intake: intake.clone(),
                shared: shared.clone(),
                policy: policy.clone(),
                run: run.clone(),
                runtime: runtime.clone(),
            };
            shared.workers_alive.fetch_add(1, Ordering::SeqCst);
            let handle = std::thread::Builder::new()
                .name(format!("{tower}-infer-{n}"))
                .spawn(move || worker.run_loop())?;
            handles.push(handle);
        }
        let capacity = policy.capacity;
        Ok((
            Batcher {
                tx,
                shared,
                capacity,
            },
            handles,
        ))
    }

    /// Queues every item of a request, or none of them if the queue lacks room for all.
    /// Returns one receiver per item, in order.
    pub fn submit(
        &self,
        items: Vec<(I, usize)>,
    ) -> Result<Vec<oneshot::Receiver<Result<Embedding, InferError>>>, QueueFull> {
        let full = QueueFull {
            tower: self.shared.tower,
            capacity: self.capacity,
        };
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if items.len() > self.capacity {
            return Err(full);
        }
        let permits = self.tx.try_reserve_many(items.len()).map_err(|_| full)?;
        let depth = self.shared.depth.fetch_add(items.len(), Ordering::SeqCst) + items.len();
        self.shared.observer.depth(self.shared.tower, depth);
        let mut receivers = Vec::with_capacity(items.len());
        for (permit, (item, cost)) in permits.zip(items) {
            let (reply, rx) = oneshot::channel();
            permit.send(Job { item, cost, reply });
            receivers.push(rx);
        }
        Ok(receivers)
    }

    /// Announces `n` items that are on their way (being preprocessed) until the returned
    /// guard is dropped, which the caller does just before [`Batcher::submit`] (or on failure).
    /// A worker holding fewer items than a full batch lingers for them when the policy says
    /// `linger_only_when_expected`.
    pub fn expect(&self, n: usize) -> Expected {
        self.shared.expected.fetch_add(n, Ordering::SeqCst);
        Expected {
            shared: self.shared.clone(),
            n,
        }
    }

    /// A view of the tower's activity that does not keep its queue open.
    pub fn watch(&self) -> TowerWatch {
        TowerWatch(self.shared.clone())
    }

    /// Items waiting in the queue (not yet taken by a worker).
    pub fn depth(&self) -> usize {
        self.shared.depth.load(Ordering::SeqCst)
    }

    /// Queue capacity in items.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// False when the tower cannot serve: its queue is closed or no worker thread is left, or
    /// its last [`UNHEALTHY_AFTER_FAILURES`] batches failed and the last failure is less than
    /// `failure_cooldown` old. The load balancer should stop sending traffic here meanwhile;
    /// after the cooldown the tower is offered traffic again, and one success clears the mark.
    pub fn healthy(&self) -> bool {
        let s = &self.shared;
        if s.closed.load(Ordering::SeqCst) || s.workers_alive.load(Ordering::SeqCst) == 0 {
            return false;
        }
        if s.consecutive_failures.load(Ordering::SeqCst) < UNHEALTHY_AFTER_FAILURES {
            return true;
        }
        let since = s
            .now_ms()
            .saturating_sub(s.last_failure_ms.load(Ordering::SeqCst));
        Duration::from_millis(since) >= s.failure_cooldown
    }

    /// Inference threads currently running this tower's loop.
    pub fn live_workers(&self) -> usize {
        self.shared.workers_alive.load(Ordering::SeqCst)
    }

    /// How many times a worker loop was restarted after a panic outside a batch.
    pub fn worker_restarts(&self) -> usize {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Test hook (feature `fault-injection`): makes the next `n` batches panic inside the inference thread, to show that a
    /// panic fails only its own batch and the worker carries on.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_panics(&self, n: usize) {
        self.shared.inject_panics.store(n, Ordering::SeqCst);
    }

    /// Test hook (feature `fault-injection`): makes the worker loop itself panic (outside the per-batch guard) on the next
    /// `n` batches it takes, as a bug in batch formation would, to show that the loop restarts
    /// and the tower keeps serving.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_crashes(&self, n: usize) {
        self.shared.inject_crashes.store(n, Ordering::SeqCst);
    }
}

/// Items announced to a tower by [`Batcher::expect`], counted out when dropped.
pub struct Expected {
    shared: Arc<Shared>,
    n: usize,
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.shared.expected.fetch_sub(self.n, Ordering::SeqCst);
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record_outcome(&self, ok: bool) {
        if ok {
            self.consecutive_failures.store(0, Ordering::SeqCst);
        } else {
            self.last_failure_ms.store(self.now_ms(), Ordering::SeqCst);
            self.consecutive_failures.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Takes one unit of a test hook's count; true if there was one.
    fn take(counter: &AtomicUsize) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[cfg(test)]
mod tests;
