//! Who runs the pieces of a split product or row pass: the run's team (a run that has its tower
//! to itself, `crate::engine::threads::TowerPool`), else the process-wide rayon pool
//! (`model.intra_op_threads`), else the calling thread alone.

use std::sync::{Arc, Mutex, PoisonError};

use crate::engine::team::{self, Team};

pub(super) enum Workers {
    /// Helpers that spin between the pieces of a lone run.
    Team(Arc<Team>),
    /// The shared pool tract's own ops split over.
    Pool(Arc<rayon::ThreadPool>),
    One,
}

impl Workers {
    /// The workers of the run in progress on this thread.
    pub(super) fn current() -> Workers {
        if let Some(team) = team::current() {
            return Workers::Team(team);
        }
        match tract_linalg::multithread::current_tract_executor() {
            tract_linalg::multithread::Executor::MultiThread(pool) => Workers::Pool(pool),
            _ => Workers::One,
        }
    }

    pub(super) fn threads(&self) -> usize {
        match self {
            Workers::Team(team) => team.threads(),
            Workers::Pool(pool) => pool.current_num_threads(),
            Workers::One => 1,
        }
    }

    /// `work(state, i)` for every `i` in `0..n`, each thread with a state of its own from
    /// `init`; the indices go to whichever thread is free.
    pub(super) fn for_each_init<S>(
        &self,
        n: usize,
        init: impl Fn() -> S + Sync + Send,
        work: impl Fn(&mut S, usize) + Sync + Send,
    ) {
        match self {
            Workers::Team(team) => team.for_each_init(n, init, work),
            Workers::Pool(pool) => pool.install(|| {
                use rayon::prelude::*;
                (0..n).into_par_iter().for_each_init(init, work);
            }),
            Workers::One => {
                let mut state = init();
                (0..n).for_each(|i| work(&mut state, i));
            }
        }
    }

    /// `work(state, i, chunk)` for every `chunk`-long piece of `data` (the last may be shorter),
    /// as [`Workers::for_each_init`].
    pub(super) fn for_each_chunk_init<T: Send, S>(
        &self,
        data: &mut [T],
        chunk: usize,
        init: impl Fn() -> S + Sync + Send,
        work: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
    ) {
        if let Workers::One = self {
            let mut state = init();
            data.chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| work(&mut state, i, c));
            return;
        }
        // Each piece taken once, by index: its lock is never contended.
        let pieces: Vec<Mutex<&mut [T]>> = data.chunks_mut(chunk).map(Mutex::new).collect();
        self.for_each_init(pieces.len(), init, |state, i| {
            let mut piece = pieces[i].lock().unwrap_or_else(PoisonError::into_inner);
            work(state, i, &mut piece);
        });
    }
}
