//! How many threads one inference run may use inside tract (matrix products, row-parallel
//! softmax and normalization), process-wide.
//!
//! Inference threads (the batcher's workers) run whole batches; tract can further split each
//! matrix product over a rayon pool. With `n > 1` every inference thread shares one pool of
//! `n` threads, so a lone request gets all of them and concurrent batches share them rather
//! than oversubscribing the cores.

use std::sync::Mutex;

use tract_linalg::multithread::{set_default_executor, Executor};

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
