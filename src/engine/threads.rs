//! How many threads one inference run may use inside tract (matrix products, row-parallel
//! softmax and normalization): process-wide, or for one tower.
//!
//! Inference threads (the batcher's workers) run whole batches; tract can further split each
//! matrix product over a rayon pool. Process-wide ([`set_intra_op_threads`], `n > 1`), every
//! inference thread shares one pool of `n` threads. [`TowerPool`] gives one tower its own
//! pool, used only by a run that has the tower to itself, for the runs made inside
//! [`TowerPool::run`] (tract reads a thread-local override first).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tract_linalg::multithread::{multithread_tract_scope, set_default_executor, Executor};

/// One tower's intra-op pool, for the run that has the tower to itself: a run that starts
/// while no other run of the tower is in flight and nothing else is waiting for it gets the
/// pool's threads; a run that starts beside another, or with work queued behind it that
/// another worker is about to start, stays on its own inference thread, so busy workers each
/// keep a core instead of splitting both (tract scales about 1.6x from 1 to 2 threads on one
/// run, two runs side by side do better). Measured in bench/RESULTS.md (rows 19 and 21).
#[derive(Clone, Debug)]
pub struct TowerPool {
    executor: Option<Executor>,
    in_flight: Arc<AtomicUsize>,
}

/// Counts a run out when it ends, panics included.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TowerPool {
    /// A pool of `n` threads; `0` keeps the process-wide setting, `1` runs on the calling
    /// thread.
    pub fn new(n: usize) -> TowerPool {
        TowerPool {
            executor: match n {
                0 => None,
                1 => Some(Executor::SingleThread),
                n => Some(Executor::multithread_with_name(n, "tract-tower")),
            },
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `f` (a tower's inference run): on the pool if no other run of the tower is in
    /// flight and `waiting` (items queued behind this run) is 0, else on the calling thread.
    pub fn run<R>(&self, waiting: usize, f: impl FnOnce() -> R) -> R {
        let Some(executor) = &self.executor else {
            return f();
        };
        let others = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _counted = InFlight(&self.in_flight);
        let executor = if others == 0 && waiting == 0 {
            executor.clone()
        } else {
            Executor::SingleThread
        };
        multithread_tract_scope(executor, f)
    }
}

/// The pool size currently installed (1: tract runs on the calling thread).
static CURRENT: Mutex<usize> = Mutex::new(1);

/// Installs a shared pool of `n` intra-op threads for every tract run in the process (`0` or
/// `1`: none, each run stays on its inference thread). Idempotent for the same `n`.
pub fn set_intra_op_threads(n: usize) {
    let n = n.max(1);
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if *current == n {
        return;
    }
    let executor = if n == 1 {
        Executor::SingleThread
    } else {
        Executor::multithread_with_name(n, "tract-intra-op")
    };
    set_default_executor(executor);
    *current = n;
}

/// The pool size [`set_intra_op_threads`] installed last.
pub fn intra_op_threads() -> usize {
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use tract_linalg::multithread::{current_tract_executor, Executor};

    use super::TowerPool;

    fn threads(e: &Executor) -> usize {
        match e {
            Executor::SingleThread => 1,
            Executor::MultiThread(pool) => pool.current_num_threads(),
            Executor::RayonGlobal => 0,
        }
    }

    #[test]
    fn a_tower_pool_applies_inside_its_runs_only() {
        let outside = threads(&current_tract_executor());
        let pool = TowerPool::new(2);
        assert_eq!(pool.run(0, || threads(&current_tract_executor())), 2);
        assert_eq!(
            TowerPool::new(1).run(0, || threads(&current_tract_executor())),
            1
        );
        assert_eq!(
            TowerPool::new(0).run(0, || threads(&current_tract_executor())),
            outside
        );
        assert_eq!(threads(&current_tract_executor()), outside);
    }

    #[test]
    fn a_run_beside_another_stays_on_its_own_thread() {
        let pool = TowerPool::new(2);
        let (inner, outer) = pool.run(0, || {
            let inner = pool.run(0, || threads(&current_tract_executor()));
            (inner, threads(&current_tract_executor()))
        });
        assert_eq!((outer, inner), (2, 1));
        // Both runs are counted out: the next lone run gets the pool again.
        assert_eq!(pool.run(0, || threads(&current_tract_executor())), 2);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(0, || panic!("a failing run"))
        }));
        assert!(panicked.is_err());
        assert_eq!(pool.run(0, || threads(&current_tract_executor())), 2);
    }

    #[test]
    fn a_run_with_work_queued_behind_it_stays_on_its_own_thread() {
        let pool = TowerPool::new(2);
        assert_eq!(pool.run(3, || threads(&current_tract_executor())), 1);
        assert_eq!(pool.run(0, || threads(&current_tract_executor())), 2);
    }
}
