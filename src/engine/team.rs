//! A team of threads that split the products of a run that has its tower to itself
//! ([`super::threads::TowerPool`]), and that wait for the next product spinning instead of
//! sleeping.
//!
//! A lone image through the ViT makes about a hundred products and row-wise passes, each split
//! over two threads and each a few dozen to a few hundred microseconds long. Split over rayon,
//! the thread that finished its half first went to sleep after about 32 yields and had to be
//! woken for the next split: about 200 sleeps per image, each wake of a halted vCPU 8-9 us here
//! (a futex ping-pong's round trip took 17-18 us), on the run's critical path. The helpers of a
//! team spin between the pieces of a run, for up to [`SPIN`] after their last piece, and
//! sleep once the run ends ([`Team::rest`]); the caller takes its share of every piece and waits
//! only for the pieces a helper has already taken. Measured in bench/RESULTS.md's optimisation
//! log, row 65.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper keeps spinning for the next piece of a run after its last one. The gaps
/// between the products of a lone image's run (tract's own ops: adds, reshapes) are
/// microseconds to tens of them; a longer gap is tract's own multithreaded work, or a run
/// sharing the cores with another (an image and a query at once, each alone on its tower),
/// when the core is better given up: there, 100 us served both faster than 500 us did.
const SPIN: Duration = Duration::from_micros(100);

/// How long the caller spins for the helpers still in a piece of work before it sleeps.
const WAIT_SPIN: Duration = Duration::from_micros(100);

/// Spins between two looks at the clock and two `sched_yield`s (which let another thread that
/// is ready on this core run).
const SPINS_PER_YIELD: u32 = 64;

/// A caller thread and `helpers` spinning threads. Dropping it stops and joins the helpers.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

/// What the caller and its helpers share.
struct Shared {
    /// Odd while a job is open to helpers; each job adds 2 (opened, then closed).
    epoch: AtomicU64,
    /// The open job: the address of the caller's `&(dyn Fn() + Sync)`.
    job: AtomicPtr<()>,
    /// Helpers inside the open (or just closed) job; the caller waits for none before its job's
    /// frame goes.
    running: AtomicUsize,
    /// One caller at a time: a second caller runs its job alone.
    busy: AtomicBool,
    /// Set at the end of a run: helpers sleep at once instead of spinning out [`SPIN`].
    resting: AtomicBool,
    /// Helpers asleep on `wake` (the caller takes the lock only when some are).
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// Set while the caller sleeps on `finished` for the helpers still in its job.
    caller_asleep: AtomicBool,
    finished: Condvar,
    shutdown: AtomicBool,
    /// The first panic of a helper in the current job, resumed on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

thread_local! {
    /// The team of the run in progress on this thread ([`with`]).
    static CURRENT: RefCell<Option<Arc<Team>>> = const { RefCell::new(None) };
}

/// The team of the run in progress on this thread, if it has one.
pub fn current() -> Option<Arc<Team>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` with `team` as this thread's [`current`] team, then lets its helpers rest.
pub fn with<R>(team: Option<Arc<Team>>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Team>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            if let Some(team) = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)) {
                team.rest();
            }
        }
    }
    let outer = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), team));
    let _restore = Restore(outer);
    f()
}

impl Team {
    /// A team of `threads` in all: the caller and `threads - 1` helper threads named `name`.
    pub fn new(threads: usize, name: &str) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            running: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            resting: AtomicBool::new(true),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            caller_asleep: AtomicBool::new(false),
            finished: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
        });
        let helpers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || shared.help())
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Team { shared, helpers })
    }

    /// The caller and its helpers.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// `work(state, i)` for every `i` in `0..n`, taken in turn by the caller and the helpers,
    /// each with a state of its own made by `init` when it takes its first index. Returns when
    /// all are done; a panic in any of them is resumed here.
    pub fn for_each_init<S>(
        &self,
        n: usize,
        init: impl Fn() -> S + Sync,
        work: impl Fn(&mut S, usize) + Sync,
    ) {
        let next = AtomicUsize::new(0);
        let take_part = || {
            let mut state = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                work(state.get_or_insert_with(&init), i);
            }
        };
        if n <= 1 || self.helpers.is_empty() {
            return take_part();
        }
        self.run(&take_part);
    }

    /// Runs `job` on the caller and on every helper that comes while it runs: `job` shares its
    /// work out itself ([`Team::for_each_init`]).
    fn run(&self, job: &(dyn Fn() + Sync)) {
        let s = &self.shared;
        if s.busy.swap(true, Ordering::Acquire) {
            // Another caller (or this one, from inside its own job) has the team.
            return job();
        }
        let slot: &(dyn Fn() + Sync) = job;
        s.job.store(&slot as *const _ as *mut (), Ordering::Relaxed);
        s.resting.store(false, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(job));
        // Closed: a helper that has not yet counted itself in will not touch `slot`, and one
        // that has is waited for.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        s.wait_for_helpers();
        let theirs = s
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        s.busy.store(false, Ordering::Release);
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if let Some(payload) = theirs {
            resume_unwind(payload);
        }
    }

    /// The run is over: helpers sleep now rather than spin for a next piece.
    pub fn rest(&self) {
        self.shared.resting.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _guard = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

impl Shared {
    /// A helper's loop: wait for a job (spinning, then asleep), take part in it, again.
    fn help(&self) {
        // The epoch the team was made with: a job opened before this thread got here is seen.
        let mut seen = 0;
        loop {
            let Some(epoch) = self.next_epoch(seen) else {
                return;
            };
            seen = epoch;
            if epoch.is_multiple_of(2) {
                continue;
            }
            self.running.fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                // SAFETY: the job is still open after this helper counted itself in, so the
                // caller's `run` has not yet passed its wait for `running` to fall to zero and
                // the slot it stored (a `&dyn Fn` on its stack) is alive; it cannot be replaced
                // by a later job before that wait passes either.
                let job =
                    unsafe { *(self.job.load(Ordering::Relaxed) as *const &(dyn Fn() + Sync)) };
                if let Err(payload) = catch_unwind(AssertUnwindSafe(job)) {
                    self.panic
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(payload);
                }
            }
            if self.running.fetch_sub(1, Ordering::SeqCst) == 1
                && self.caller_asleep.load(Ordering::SeqCst)
            {
                let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
                self.finished.notify_all();
            }
        }
    }

    /// The caller's wait for the helpers still in its (closed) job: spinning for as long as
    /// a piece of a lone image's products takes, then asleep, so that a helper held up (its
    /// core taken by a request's decoding) can have this core instead.
    fn wait_for_helpers(&self) {
        let mut backoff = Backoff::new(WAIT_SPIN);
        while self.running.load(Ordering::Acquire) != 0 {
            if backoff.spin() {
                continue;
            }
            let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.caller_asleep.store(true, Ordering::SeqCst);
            while self.running.load(Ordering::SeqCst) != 0 {
                guard = self
                    .finished
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            self.caller_asleep.store(false, Ordering::SeqCst);
        }
    }

    /// The first epoch after `seen`, once there is one; `None` once the team is dropped.
    fn next_epoch(&self, seen: u64) -> Option<u64> {
        let mut backoff = Backoff::new(SPIN);
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch != seen {
                return Some(epoch);
            }
            if self.shutdown.load(Ordering::Acquire) {
                return None;
            }
            if !self.resting.load(Ordering::Relaxed) && backoff.spin() {
                continue;
            }
            let guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == seen && !self.shutdown.load(Ordering::SeqCst) {
                drop(
                    self.wake
                        .wait(guard)
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
            backoff = Backoff::new(SPIN);
        }
    }
}

/// Waiting on a flag: spinning, with a `sched_yield` every [`SPINS_PER_YIELD`] spins, until
/// `budget` has passed; then the caller goes to sleep.
struct Backoff {
    started: Instant,
    spins: u32,
    budget: Duration,
}

impl Backoff {
    fn new(budget: Duration) -> Backoff {
        Backoff {
            started: Instant::now(),
            spins: 0,
            budget,
        }
    }

    /// One spin (or yield), or `false` once the budget is spent: time to sleep.
    fn spin(&mut self) -> bool {
        self.spins += 1;
        if !self.spins.is_multiple_of(SPINS_PER_YIELD) {
            std::hint::spin_loop();
            return true;
        }
        if self.started.elapsed() < self.budget {
            std::thread::yield_now();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests;
