use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{current, with, Team};

/// Each of `n` indices, counted as it is done.
fn counts(n: usize) -> Vec<AtomicUsize> {
    (0..n).map(|_| AtomicUsize::new(0)).collect()
}

/// Whether one job of `n` indices over `team` did each exactly once.
fn each_done_once(team: &Team, n: usize) -> bool {
    let done = counts(n);
    team.for_each_init(
        n,
        || (),
        |_, i| {
            done[i].fetch_add(1, Ordering::Relaxed);
        },
    );
    done.iter().all(|c| c.load(Ordering::Relaxed) == 1)
}

#[test]
fn every_index_is_done_once_job_after_job() {
    for threads in [1, 2, 4] {
        let team = Team::new(threads, "test-team").expect("threads start");
        assert_eq!(team.threads(), threads);
        for n in [0, 1, 2, 3, 17, 200] {
            for _ in 0..50 {
                assert!(each_done_once(&team, n), "{threads} threads, n = {n}");
            }
        }
    }
}

#[test]
fn each_thread_makes_its_state_once_per_job() {
    let team = Team::new(3, "test-team").expect("threads start");
    for _ in 0..100 {
        let states = AtomicUsize::new(0);
        let done = counts(64);
        team.for_each_init(
            64,
            || states.fetch_add(1, Ordering::Relaxed),
            |_, i| {
                done[i].fetch_add(1, Ordering::Relaxed);
            },
        );
        let made = states.load(Ordering::Relaxed);
        assert!((1..=3).contains(&made), "{made} states for 3 threads");
        assert!(done.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }
}

#[test]
fn a_helper_takes_part_while_the_caller_works() {
    // Index 0 waits until index 1 has started: only a second thread can start it.
    let team = Team::new(2, "test-team").expect("threads start");
    for _ in 0..20 {
        let started = counts(2);
        let waited_out = AtomicUsize::new(0);
        team.for_each_init(
            2,
            || (),
            |_, i| {
                started[i].store(1, Ordering::SeqCst);
                let t = Instant::now();
                while started[1 - i].load(Ordering::SeqCst) == 0 {
                    if t.elapsed() > Duration::from_secs(20) {
                        waited_out.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    std::hint::spin_loop();
                }
            },
        );
        assert_eq!(
            waited_out.load(Ordering::SeqCst),
            0,
            "no helper came in 20 s"
        );
        // Between jobs the helpers may fall asleep; the next job wakes them.
        team.rest();
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_panic_in_any_piece_reaches_the_caller_and_the_team_goes_on() {
    let team = Team::new(2, "test-team").expect("threads start");
    for bad in [0, 7, 63] {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.for_each_init(64, || (), |_, i| assert_ne!(i, bad, "piece {bad} fails"));
        }));
        let message = caught.expect_err("the panic is resumed on the caller");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains(&format!("piece {bad} fails")), "{text}");
        assert!(each_done_once(&team, 64), "after the panic of piece {bad}");
    }
}

#[test]
fn two_callers_at_once_each_get_all_their_indices_done() {
    // The second caller finds the team busy and runs its pieces alone.
    let team = Arc::new(Team::new(2, "test-team").expect("threads start"));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let team = team.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    assert!(each_done_once(&team, 33));
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().expect("no caller panics");
    }
}

#[test]
fn a_job_inside_a_job_runs_on_its_own_thread() {
    let team = Arc::new(Team::new(2, "test-team").expect("threads start"));
    let done = counts(8 * 8);
    team.for_each_init(
        8,
        || (),
        |_, i| {
            team.for_each_init(
                8,
                || (),
                |_, j| {
                    done[i * 8 + j].fetch_add(1, Ordering::Relaxed);
                },
            );
        },
    );
    assert!(done.iter().all(|c| c.load(Ordering::Relaxed) == 1));
}

#[test]
fn the_current_team_is_set_inside_with_only() {
    let team = Arc::new(Team::new(2, "test-team").expect("threads start"));
    assert!(current().is_none());
    let inner = with(Some(team.clone()), || {
        let outer = current().map(|t| t.threads());
        let nested = with(None, || current().is_none());
        (outer, nested, current().map(|t| t.threads()))
    });
    assert_eq!(inner, (Some(2), true, Some(2)));
    assert!(current().is_none());
}
