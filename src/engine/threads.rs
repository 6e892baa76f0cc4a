//! How many threads one inference run may use inside tract (matrix products, row-parallel
//! softmax and normalization): process-wide, or for one tower.
//!
//! Inference threads (the batcher's workers) run whole batches; tract can further split each
//! matrix product over a rayon pool. With `n > 1` every inference thread shares one pool of
//! `n` threads, so a lone request gets all of them and concurrent batches share them rather
//! than oversubscribing the cores. [`TowerPool`] gives one tower its own pool size, for the
//! runs made inside [`TowerPool::run`] (tract reads a thread-local override first).

use std::sync::Mutex;

use tract_linalg::multithread::{multithread_tract_scope, set_default_executor, Executor};

/// One tower's intra-op pool: its runs use it instead of the process-wide setting.
#[derive(Clone, Debug)]
pub struct TowerPool(Option<Executor>);

impl TowerPool {
    /// A pool of `n` threads; `0` keeps the process-wide setting, `1` runs on the calling
    /// thread.
    pub fn new(n: usize) -> TowerPool {
        TowerPool(match n {
            0 => None,
            1 => Some(Executor::SingleThread),
            n => Some(Executor::multithread_with_name(n, "tract-tower")),
        })
    }

    /// Runs `f` (a tower's inference run) with this pool.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(executor) => multithread_tract_scope(executor.clone(), f),
            None => f(),
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
        assert_eq!(pool.run(|| threads(&current_tract_executor())), 2);
        assert_eq!(
            TowerPool::new(1).run(|| threads(&current_tract_executor())),
            1
        );
        assert_eq!(
            TowerPool::new(0).run(|| threads(&current_tract_executor())),
            outside
        );
        assert_eq!(threads(&current_tract_executor()), outside);
    }
}
