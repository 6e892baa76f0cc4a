//! How many threads one inference run may use inside tract (matrix products, row-parallel
//! softmax and normalization): process-wide, or for one tower.
//!
//! Inference threads (the batcher's workers) run whole batches; tract can further split each
//! matrix product over a rayon pool. Process-wide ([`set_intra_op_threads`], `n > 1`), every
//! inference thread shares one pool of `n` threads. [`TowerPool`] gives one tower its own
//! pool, used only by a run that has the tower to itself, for the runs made inside
//! [`TowerPool::run`] (tract reads a thread-local override first), and a team
//! ([`super::team`]) of as many threads that split the engine's own products in such a run,
//! spinning between them instead of sleeping.

use std::sync::{Arc, Mutex};

use tract_linalg::multithread::{multithread_tract_scope, set_default_executor, Executor};

use super::team::{self, Team};

/// One tower's intra-op pool, for the run that has the tower to itself: a run that starts
/// while no other run of the tower is in flight and nothing else is waiting for it or on its
/// way (the batcher's [`crate::batcher::RunContext::alone`]) gets the pool's threads; a run that
/// starts beside another, or with work queued or being decoded behind it that another worker is
/// about to start, stays on its own inference thread, so busy workers each keep a core instead
/// of splitting both (tract scales about 1.6x from 1 to 2 threads on one run, two runs side by
/// side do better).
/// Measured in bench/RESULTS.md's optimisation log: "tower pools for lone runs" and "image
/// batches cut to the batch sizes the tower has plans for".
#[derive(Clone, Debug)]
pub struct TowerPool {
    executor: Option<Executor>,
    /// The threads that split a lone run's own products (`super::team`), beside the rayon pool
    /// that splits tract's.
    team: Option<Arc<Team>>,
}

impl TowerPool {
    /// A pool of `n` threads; `0` keeps the process-wide setting, `1` runs on the calling
    /// thread.
    pub fn new(n: usize) -> TowerPool {
        let team = (n > 1)
            .then(|| match Team::new(n, "tower-team") {
                Ok(team) => Some(Arc::new(team)),
                Err(error) => {
                    tracing::warn!(%error, "no threads for a tower's team: its lone runs split their products over rayon");
                    None
                }
            })
            .flatten();
        TowerPool {
            executor: match n {
                0 => None,
                1 => Some(Executor::SingleThread),
                n => Some(Executor::multithread_with_name(n, "tract-tower")),
            },
            team,
        }
    }

    /// Runs `f` (a tower's inference run): on one of the pool's threads if the run has the
    /// tower to itself (`alone`), else on the calling thread. Run on the pool, `f`'s own ops
    /// go on there and a product that splits only has to wake the pool's other thread; run
    /// from the calling thread, as before, every product handed all its work to the pool and
    /// waited to be woken, and a lone image took 31.3 ms instead of 26.5 (bench/RESULTS.md,
    /// row 47).
    pub fn run<R: Send>(&self, alone: bool, f: impl FnOnce() -> R + Send) -> R {
        let Some(executor) = &self.executor else {
            return f();
        };
        match executor {
            Executor::MultiThread(pool) if alone => {
                let executor = executor.clone();
                let team = self.team.clone();
                pool.install(move || team::with(team, || multithread_tract_scope(executor, f)))
            }
            _ if alone => multithread_tract_scope(executor.clone(), f),
            _ => multithread_tract_scope(Executor::SingleThread, f),
        }
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
        assert_eq!(pool.run(true, || threads(&current_tract_executor())), 2);
        assert_eq!(
            TowerPool::new(1).run(true, || threads(&current_tract_executor())),
            1
        );
        assert_eq!(
            TowerPool::new(0).run(true, || threads(&current_tract_executor())),
            outside
        );
        assert_eq!(threads(&current_tract_executor()), outside);
    }

    #[test]
    fn a_run_that_does_not_have_the_tower_to_itself_stays_on_its_own_thread() {
        // Which runs are alone is the batcher's to say (batcher::tests counts them).
        let pool = TowerPool::new(2);
        assert_eq!(pool.run(false, || threads(&current_tract_executor())), 1);
        assert_eq!(pool.run(true, || threads(&current_tract_executor())), 2);
    }
}
