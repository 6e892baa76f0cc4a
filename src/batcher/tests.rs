//! The batcher on its own: batch formation (run sizes, lingering for announced items) with a
//! recording run function.

use super::*;

/// Each batch a recording run saw: its items and its context.
type Seen = Arc<Mutex<Vec<(Vec<u32>, RunContext)>>>;

/// A batcher whose run records each batch (its items and context) and holds the first batch
/// until `release` fires, so a test can queue items behind it.
fn recording(policy: BatchPolicy, release: std::sync::mpsc::Receiver<()>) -> (Batcher<u32>, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let release = Mutex::new(Some(release));
    let run = move |items: &[u32], context: RunContext| {
        // Taken out first: the lock is not held while waiting, so other workers run.
        let held = release.lock().unwrap().take();
        if let Some(rx) = held {
            rx.recv().unwrap();
        }
        log.lock().unwrap().push((items.to_vec(), context));
        // Item n's embedding points along axis n, so answers can be told apart.
        Ok(items
            .iter()
            .map(|&n| {
                let mut row = vec![0.0; 16];
                row[n as usize] = 1.0;
                Embedding::new(row).unwrap()
            })
            .collect())
    };
    let runtime = tokio::runtime::Handle::current();
    let (batcher, _) = Batcher::start(
        "image",
        policy,
        Arc::new(run),
        Arc::new(NoObserver),
        runtime,
    )
    .unwrap();
    (batcher, seen)
}

/// [`recording`] without holding anything.
fn unheld(policy: BatchPolicy) -> (Batcher<u32>, Seen) {
    let (go, release) = std::sync::mpsc::channel();
    go.send(()).unwrap();
    recording(policy, release)
}

/// Waits (at most 30 s, to keep a broken build from hanging) until `done` holds.
async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..3000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A one-worker policy that runs at once.
fn policy(run_sizes: Vec<usize>, max_items: usize) -> BatchPolicy {
    BatchPolicy {
        max_items,
        run_sizes,
        max_cost: usize::MAX,
        linger: Duration::ZERO,
        linger_only_when_expected: false,
        workers: 1,
        capacity: 64,
        failure_cooldown: Duration::from_secs(1),
    }
}

async fn answers(rxs: Vec<oneshot::Receiver<Result<Embedding, InferError>>>) -> Vec<usize> {
    let mut out = Vec::new();
    for rx in rxs {
        let e = rx.await.unwrap().unwrap();
        out.push(e.as_slice().iter().position(|&x| x > 0.5).unwrap());
    }
    out
}

/// Queues item 0, waits until the worker holds it, queues items 1 to 6 behind it, lets the
/// worker go, checks every answer and returns the batches the worker ran.
async fn six_behind_one(policy: BatchPolicy) -> Vec<(Vec<u32>, RunContext)> {
    let (go, release) = std::sync::mpsc::channel();
    let (batcher, seen) = recording(policy, release);
    let first = batcher.submit(vec![(0, 1)]).unwrap();
    while batcher.depth() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rest = batcher.submit((1..=6).map(|n| (n, 1)).collect()).unwrap();
    go.send(()).unwrap();
    assert_eq!(answers(first).await, vec![0]);
    assert_eq!(answers(rest).await, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(batcher.depth(), 0);
    let seen = seen.lock().unwrap().clone();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_cut_to_run_sizes_and_the_rest_waits_in_order() {
    let batches: Vec<(Vec<u32>, usize)> = six_behind_one(policy(vec![1, 4], 4))
        .await
        .into_iter()
        .map(|(items, c)| (items, c.waiting))
        .collect();
    // 6 queued: a run of 4 (2 left waiting), then 2 cut to a run of 1, then the last.
    assert_eq!(
        batches,
        vec![
            (vec![0], 0),
            (vec![1, 2, 3, 4], 2),
            (vec![5], 1),
            (vec![6], 0)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_run_sizes_a_batch_takes_all_that_fits() {
    let sizes: Vec<(usize, usize)> = six_behind_one(policy(Vec::new(), 4))
        .await
        .iter()
        .map(|(items, c)| (items.len(), c.waiting))
        .collect();
    assert_eq!(sizes, vec![(1, 0), (4, 2), (2, 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_alone_only_with_no_other_batch_running_and_none_waiting() {
    let two_workers = BatchPolicy {
        workers: 2,
        ..policy(Vec::new(), 4)
    };
    let (go, release) = std::sync::mpsc::channel();
    let (batcher, seen) = recording(two_workers, release);
    let watch = batcher.watch();
    // Item 0 is held in its run; item 1 runs on the other worker beside it.
    let first = batcher.submit(vec![(0, 1)]).unwrap();
    eventually(|| batcher.depth() == 0 && !watch.idle()).await;
    let beside = batcher.submit(vec![(1, 1)]).unwrap();
    assert_eq!(answers(beside).await, vec![1]);
    go.send(()).unwrap();
    assert_eq!(answers(first).await, vec![0]);
    // Both counted out: the next run is alone again, and so is the one after a panicking run.
    assert_eq!(
        answers(batcher.submit(vec![(2, 1)]).unwrap()).await,
        vec![2]
    );
    batcher.inject_panics(1);
    let failed = batcher.submit(vec![(3, 1)]).unwrap();
    assert_eq!(
        failed.into_iter().next().unwrap().await.unwrap(),
        Err(InferError::Panicked)
    );
    assert_eq!(
        answers(batcher.submit(vec![(4, 1)]).unwrap()).await,
        vec![4]
    );
    let contexts: Vec<(Vec<u32>, usize, bool)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(items, c)| (items.clone(), c.beside, c.alone()))
        .collect();
    assert_eq!(
        contexts,
        vec![
            (vec![1], 1, false),
            (vec![0], 0, true),
            (vec![2], 0, true),
            (vec![4], 0, true)
        ]
    );
    assert!(!RunContext {
        waiting: 3,
        beside: 0,
        expected: 0
    }
    .alone());
}

/// A run that starts while items are announced (images being decoded) does not count on the
/// cores: another worker will start on them in a moment. Once they are counted out, the next
/// run is alone again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_items_on_their_way_is_not_alone() {
    let (batcher, seen) = unheld(policy(Vec::new(), 1));
    let announced = batcher.expect(2);
    assert_eq!(
        answers(batcher.submit(vec![(0, 1)]).unwrap()).await,
        vec![0]
    );
    drop(announced);
    assert_eq!(
        answers(batcher.submit(vec![(1, 1)]).unwrap()).await,
        vec![1]
    );
    let contexts: Vec<(Vec<u32>, usize, bool)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(items, c)| (items.clone(), c.expected, c.alone()))
        .collect();
    assert_eq!(contexts, vec![(vec![0], 2, false), (vec![1], 0, true)]);
}

/// A policy that lingers for a minute, but only for announced items.
fn lingering_for_expected() -> BatchPolicy {
    BatchPolicy {
        linger: Duration::from_secs(60),
        linger_only_when_expected: true,
        ..policy(Vec::new(), 2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_item_with_nothing_announced_runs_without_lingering() {
    let (batcher, seen) = unheld(lingering_for_expected());
    let rx = batcher.submit(vec![(3, 1)]).unwrap();
    // Lingering would hold it for a minute; the bound only keeps a broken build from hanging.
    let answer = tokio::time::timeout(Duration::from_secs(30), answers(rx)).await;
    assert_eq!(answer.expect("the item ran without lingering"), vec![3]);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_lingers_for_announced_items() {
    let (batcher, seen) = unheld(lingering_for_expected());
    let expected = batcher.expect(1);
    let first = batcher.submit(vec![(1, 1)]).unwrap();
    // The worker takes item 1 and waits for the announced one (the queue's depth counts
    // item 1 until the batch is formed, so it cannot tell when the worker has it).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "ran before the announced item came"
    );
    drop(expected);
    let second = batcher.submit(vec![(2, 1)]).unwrap();
    assert_eq!(answers(first).await, vec![1]);
    assert_eq!(answers(second).await, vec![2]);
    let batches: Vec<Vec<u32>> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(b, _)| b.clone())
        .collect();
    assert_eq!(batches, vec![vec![1, 2]]);
}

#[test]
fn memory_is_released_once_per_quiet_spell_after_work() {
    let mut r = IdleRelease::default();
    // Nothing ran yet: nothing to release.
    assert!(!r.tick(0, true));
    assert!(!r.tick(0, true));
    // Work during a tick, then idle: released on the first whole quiet tick only.
    assert!(!r.tick(5, true));
    assert!(r.tick(5, true));
    assert!(!r.tick(5, true));
    // Busy (a batch running, none finished this tick): not released.
    assert!(!r.tick(5, false));
    assert!(!r.tick(7, false));
    // Quiet again after more work: released once more.
    assert!(r.tick(7, true));
    assert!(!r.tick(7, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_runs_and_does_not_keep_the_queue_open() {
    let (batcher, _) = unheld(policy(Vec::new(), 4));
    let watch = batcher.watch();
    assert!(watch.idle());
    assert_eq!(
        answers(batcher.submit(vec![(1, 1), (2, 1)]).unwrap()).await,
        vec![1, 2]
    );
    assert_eq!(watch.batches_run(), 1);
    assert!(watch.idle());
    assert!(!watch.closed());
    drop(batcher);
    eventually(|| watch.closed()).await;
    assert!(
        watch.closed(),
        "the workers outlived the last Batcher handle"
    );
}

static RELEASES: AtomicUsize = AtomicUsize::new(0);

fn count_release() {
    RELEASES.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_released_after_work_once_the_towers_go_idle() {
    let (batcher, _) = unheld(policy(Vec::new(), 4));
    spawn_idle_release(
        vec![batcher.watch()],
        Duration::from_millis(10),
        count_release,
    );
    // Idle from the start, nothing run: no release.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(RELEASES.load(Ordering::SeqCst), 0);
    assert_eq!(
        answers(batcher.submit(vec![(1, 1)]).unwrap()).await,
        vec![1]
    );
    eventually(|| RELEASES.load(Ordering::SeqCst) > 0).await;
    assert_eq!(
        RELEASES.load(Ordering::SeqCst),
        1,
        "no release after the work"
    );
    // Still idle: not released again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(RELEASES.load(Ordering::SeqCst), 1);
}

/// Every batch a test batcher's run was given, in order.
type SeenBatches = Arc<Mutex<Vec<Vec<u32>>>>;

/// A batcher whose run fails whenever item 7 is in its batch: with an error naming its batch
/// position (`named`), or by panicking. Records every batch it is given.
fn failing_on_seven(named: bool) -> (Batcher<u32>, SeenBatches) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let run = move |items: &[u32], _: RunContext| {
        log.lock().unwrap().push(items.to_vec());
        if let Some(bad) = items.iter().position(|&n| n == 7) {
            if !named {
                panic!("item 7 broke the run");
            }
            return Err(RunError {
                item: Some(bad),
                message: "item 7 is not a usable embedding".into(),
            });
        }
        Ok(items
            .iter()
            .map(|&n| {
                let mut row = vec![0.0; 16];
                row[n as usize] = 1.0;
                Embedding::new(row).unwrap()
            })
            .collect())
    };
    let lingering = BatchPolicy {
        // Long enough that the items of one submit always share a batch.
        linger: Duration::from_millis(300),
        ..policy(Vec::new(), 8)
    };
    let (batcher, _) = Batcher::start(
        "text",
        lingering,
        Arc::new(run),
        Arc::new(NoObserver),
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    (batcher, seen)
}

/// Each answer: the axis of its embedding, or its error.
async fn outcomes(
    rxs: Vec<oneshot::Receiver<Result<Embedding, InferError>>>,
) -> Vec<Result<usize, InferError>> {
    let mut out = Vec::new();
    for rx in rxs {
        out.push(
            rx.await
                .unwrap()
                .map(|e| e.as_slice().iter().position(|&x| x > 0.5).unwrap()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_the_run_names_fails_alone_and_the_rest_of_its_batch_runs_again_without_it() {
    let (batcher, seen) = failing_on_seven(true);
    let rxs = batcher.submit(vec![(1, 1), (7, 1), (3, 1)]).unwrap();
    assert_eq!(
        outcomes(rxs).await,
        vec![
            Ok(1),
            Err(InferError::Failed(
                "item 7 is not a usable embedding".into()
            )),
            Ok(3)
        ]
    );
    assert_eq!(*seen.lock().unwrap(), vec![vec![1, 7, 3], vec![1, 3]]);
    assert!(batcher.healthy(), "a bad item is not a broken tower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_panics_without_naming_an_item_runs_each_item_alone() {
    let (batcher, seen) = failing_on_seven(false);
    let rxs = batcher.submit(vec![(2, 1), (7, 1), (5, 1)]).unwrap();
    assert_eq!(
        outcomes(rxs).await,
        vec![Ok(2), Err(InferError::Panicked), Ok(5)]
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![vec![2, 7, 5], vec![2], vec![7], vec![5]]
    );
}
