//! An inference thread: takes batches from its tower's queue and runs them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{BatchPolicy, InferError, Intake, Job, RunContext, RunError, RunFn, Shared};
use crate::embedding::Embedding;

pub(super) struct Worker<I> {
    pub(super) intake: Arc<Mutex<Intake<I>>>,
    pub(super) shared: Arc<Shared>,
    pub(super) policy: BatchPolicy,
    pub(super) run: Arc<RunFn<I>>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl<I: Send + 'static> Worker<I> {
    pub(super) fn run_loop(self) {
        // Counts the worker out however the thread ends, a panic included.
        struct Alive(Arc<Shared>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.workers_alive.fetch_sub(1, Ordering::SeqCst);
                if std::thread::panicking() {
                    tracing::error!(tower = self.0.tower, "inference worker died");
                }
            }
        }
        let _alive = Alive(self.shared.clone());
        // A panic outside the per-batch guard (a bug in batch formation, say) must not leave
        // the tower without this thread: the jobs it held are dropped, so their callers get
        // `WorkerGone` at once, and the loop starts again on the same queue.
        while catch_unwind(AssertUnwindSafe(|| self.drain())).is_err() {
            // The failure first: whoever sees the restart counted also sees the failure.
            self.shared.record_outcome(false);
            self.shared.restarts.fetch_add(1, Ordering::SeqCst);
            tracing::error!(
                tower = self.shared.tower,
                "inference worker loop panicked outside a batch; restarting it"
            );
        }
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    /// Runs batches until the queue is closed and empty.
    fn drain(&self) {
        while let Some((batch, waiting)) = self.next_batch() {
            if Shared::take(&self.shared.inject_crashes) {
                panic!("injected crash (Batcher::inject_crashes test hook)");
            }
            self.process(batch, waiting);
        }
    }

    /// Takes the next batch: blocks for a first item, then gathers what fits, lingering up to
    /// `policy.linger` for more, and cuts it to a run size if the policy has them. Returns the
    /// batch and how many items are left waiting; None once the queue is closed and empty.
    fn next_batch(&self) -> Option<(Vec<Job<I>>, usize)> {
        // A poisoned lock means another worker panicked outside catch_unwind while holding
        // it; the intake itself is still consistent (it is only moved in and out).
        let mut intake = self.intake.lock().unwrap_or_else(|p| p.into_inner());
        let first = match intake.carried.pop_front() {
            Some(job) => job,
            None => intake.rx.blocking_recv()?,
        };
        let mut batch = vec![first];
        let mut max_cost = batch[0].cost;
        let deadline = Instant::now() + self.policy.linger;
        while batch.len() < self.policy.max_items {
            let next = match intake
                .carried
                .pop_front()
                .map_or_else(|| intake.rx.try_recv(), Ok)
            {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let nobody_coming = self.policy.linger_only_when_expected
                        && self.shared.expected.load(Ordering::SeqCst) == 0;
                    if nobody_coming || self.policy.linger.is_zero() || Instant::now() >= deadline {
                        None
                    } else {
                        let wait = tokio::time::Instant::from_std(deadline);
                        let rx = &mut intake.rx;
                        self.runtime
                            .block_on(async { tokio::time::timeout_at(wait, rx.recv()).await })
                            .ok()
                            .flatten()
                    }
                }
            };
            let Some(job) = next else { break };
            let new_max = max_cost.max(job.cost);
            if new_max.saturating_mul(batch.len() + 1) > self.policy.max_cost {
                intake.carried.push_front(job);
                break;
            }
            max_cost = new_max;
            batch.push(job);
        }
        let sizes = &self.policy.run_sizes;
        if let Some(&size) = sizes.iter().rev().find(|&&size| size <= batch.len()) {
            for job in batch.drain(size.max(1)..).rev() {
                intake.carried.push_front(job);
            }
        }
        drop(intake);
        // A carried item still counts as waiting until a batch takes it.
        let depth = self.shared.depth.fetch_sub(batch.len(), Ordering::SeqCst) - batch.len();
        self.shared.observer.depth(self.shared.tower, depth);
        Some((batch, depth))
    }

    fn process(&self, batch: Vec<Job<I>>, waiting: usize) {
        let (live, gone): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| !j.reply.is_closed());
        if !gone.is_empty() {
            self.shared.observer.skipped(self.shared.tower, gone.len());
        }
        if live.is_empty() {
            return;
        }
        let (items, rest): (Vec<I>, Vec<_>) = live
            .into_iter()
            .map(|j| (j.item, (j.cost, j.reply)))
            .unzip();
        let count = items.len();
        let cost = rest.iter().map(|(c, _)| *c).max().unwrap_or(0) * count;
        let started = Instant::now();
        let beside = self.shared.running.fetch_add(1, Ordering::SeqCst);
        let expected = self.shared.expected.load(Ordering::SeqCst);
        let context = RunContext {
            waiting,
            beside,
            expected,
        };
        let alone = context.alone();
        let (results, ok) = self.run_isolating(items, context);
        let elapsed = started.elapsed();
        self.shared.completed.fetch_add(1, Ordering::SeqCst);
        self.shared.running.fetch_sub(1, Ordering::SeqCst);
        self.shared.record_outcome(ok);
        self.shared
            .observer
            .batch(self.shared.tower, count, cost, elapsed, ok);
        tracing::debug!(
            tower = self.shared.tower,
            items = count,
            cost,
            elapsed_us = elapsed.as_micros() as u64,
            alone,
            "batch done"
        );
        for ((_, reply), result) in rest.into_iter().zip(results) {
            // The caller may have gone meanwhile; then nobody needs the answer.
            let _ = reply.send(result);
        }
    }

    /// Runs `items` and returns one result per item, in order, so that one bad item fails only
    /// itself: a failure that names its item fails that item and the others run again without
    /// it; one that names none (a panic, a failure of the whole run) runs each item alone. The
    /// flag is false when the tower itself looks broken: a failure no item could be blamed for.
    fn run_isolating(
        &self,
        mut items: Vec<I>,
        context: RunContext,
    ) -> (Vec<Result<Embedding, InferError>>, bool) {
        let failure = match self.run_guarded(&items, context) {
            Ok(embeddings) => return (embeddings.into_iter().map(Ok).collect(), true),
            Err(failure) => failure,
        };
        if items.len() == 1 {
            // An item alone that fails with its own name on it is a bad item, not a bad tower.
            let blamed = matches!(&failure, Failure::Run(RunError { item: Some(0), .. }));
            return (vec![Err(failure.into())], blamed);
        }
        match failure {
            Failure::Run(RunError {
                item: Some(bad), ..
            }) if bad < items.len() => {
                tracing::warn!(
                    tower = self.shared.tower,
                    item = bad,
                    items = items.len(),
                    "an item failed; running the rest of its batch again without it"
                );
                drop(items.remove(bad));
                let (mut results, ok) = self.run_isolating(items, context);
                results.insert(bad, Err(failure.into()));
                (results, ok)
            }
            _ => {
                tracing::warn!(
                    tower = self.shared.tower,
                    items = items.len(),
                    "a batch failed; running each of its items alone"
                );
                let mut any_ok = false;
                let results = items
                    .iter()
                    .map(|item| {
                        let one = self.run_guarded(std::slice::from_ref(item), context);
                        any_ok |= one.is_ok();
                        one.map(|mut e| e.remove(0)).map_err(InferError::from)
                    })
                    .collect();
                (results, any_ok)
            }
        }
    }

    /// One run of the batch function, its panics caught and its answer checked for length.
    fn run_guarded(&self, items: &[I], context: RunContext) -> Result<Vec<Embedding>, Failure> {
        let inject = Shared::take(&self.shared.inject_panics);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if inject {
                panic!("injected panic (Batcher::inject_panics test hook)");
            }
            (self.run)(items, context)
        }));
        match outcome {
            Ok(Ok(embeddings)) if embeddings.len() == items.len() => Ok(embeddings),
            Ok(Ok(embeddings)) => {
                let message = format!(
                    "the encoder returned {} embeddings for {} items",
                    embeddings.len(),
                    items.len()
                );
                tracing::error!(tower = self.shared.tower, %message, "batch failed");
                Err(Failure::Run(RunError::batch(message)))
            }
            Ok(Err(error)) => {
                tracing::error!(tower = self.shared.tower, message = %error.message, item = ?error.item, "batch failed");
                Err(Failure::Run(error))
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(tower = self.shared.tower, %message, "batch panicked");
                Err(Failure::Panicked)
            }
        }
    }
}

/// How one run failed.
enum Failure {
    Run(RunError),
    Panicked,
}

impl From<Failure> for InferError {
    fn from(failure: Failure) -> InferError {
        match failure {
            Failure::Run(error) => InferError::Failed(error.message),
            Failure::Panicked => InferError::Panicked,
        }
    }
}
