//! Noticing that the towers have gone idle, to hand memory back then: under load the
//! allocator's heaps hold the buffers of the runs in flight, and after it they keep them free
//! (about 100 MB on the full-size model: 1466 -> 1374 MB once released after a load test).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;

/// A view of one tower's activity ([`super::Batcher::watch`]); unlike a `Batcher` handle it
/// does not keep the queue open.
#[derive(Clone)]
pub struct TowerWatch(pub(super) Arc<Shared>);

impl TowerWatch {
    /// True when no item waits, none is announced, and no batch is running.
    pub fn idle(&self) -> bool {
        let s = &self.0;
        s.depth.load(Ordering::SeqCst) == 0
            && s.expected.load(Ordering::SeqCst) == 0
            && s.running.load(Ordering::SeqCst) == 0
    }

    /// Batches run so far, failed ones included.
    pub fn batches_run(&self) -> u64 {
        self.0.completed.load(Ordering::SeqCst)
    }

    /// True once the tower's workers have all stopped (its queue closed).
    pub fn closed(&self) -> bool {
        self.0.closed.load(Ordering::SeqCst)
    }
}

/// Decides, one tick at a time, when to release memory: once the towers were idle for a whole
/// tick (no batch ran since the previous tick and none is running or waiting), and only if
/// some batch ran since the last release, so an idle server does not release again and again.
#[derive(Debug, Default)]
pub struct IdleRelease {
    seen: u64,
    released: u64,
}

impl IdleRelease {
    /// One tick, given the batches run so far and whether the towers are idle now.
    pub fn tick(&mut self, batches_run: u64, idle: bool) -> bool {
        let quiet = idle && batches_run == self.seen;
        self.seen = batches_run;
        if quiet && batches_run != self.released {
            self.released = batches_run;
            return true;
        }
        false
    }
}

/// Every `every`, calls `release` (on the blocking pool) when [`IdleRelease`] says so for the
/// towers watched. Stops once every tower has closed. `every` of zero: never.
pub fn spawn_idle_release(towers: Vec<TowerWatch>, every: Duration, release: fn()) {
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut state = IdleRelease::default();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if towers.iter().all(TowerWatch::closed) {
                return;
            }
            let run: u64 = towers.iter().map(TowerWatch::batches_run).sum();
            if state.tick(run, towers.iter().all(TowerWatch::idle)) {
                let _ = tokio::task::spawn_blocking(release).await;
                tracing::debug!(
                    batches_run = run,
                    "towers idle: free memory returned to the OS"
                );
            }
        }
    });
}
