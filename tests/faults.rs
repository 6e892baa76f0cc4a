//! Faults inside the inference workers, injected through the batcher's test hooks: a panic in a
//! batch fails only that batch's requests (500, saying nothing of the cause) and the worker goes
//! on; a run of failed batches makes `/ready` fail for a bounded cooldown only, so a replica
//! behind a load balancer gets traffic again and can recover; a crash of the worker loop itself
//! restarts it, so a tower never silently loses its thread.

mod common;

use std::time::{Duration, Instant};

use common::{cosine, first_embedding, TestServer};
use futures::future::join_all;
use serde_json::{json, Value};

const COOLDOWN_MS: u64 = 1_500;

async fn start() -> TestServer {
    TestServer::start(|s| {
        s.batching.text_workers = 1;
        s.batching.image_workers = 1;
        s.batching.linger_ms = 0;
        // Every text must reach the tower, where the faults are injected.
        s.model.text_cache_entries = 0;
        s.batching.failure_cooldown_ms = COOLDOWN_MS;
    })
    .await
}

async fn embed(server: &TestServer, text: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/embed/text"))
        .json(&json!({ "texts": [text] }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn ready(server: &TestServer) -> (u16, Value) {
    let r = reqwest::get(server.url("/ready")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits (bounded) until `/ready` answers `want`; returns how long that took.
async fn wait_ready(server: &TestServer, want: u16) -> Duration {
    let started = Instant::now();
    while ready(server).await.0 != want {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/ready never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A 500 tells the caller nothing of the cause.
fn assert_opaque_500(status: u16, body: &Value) {
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "internal_error");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_lowercase();
    for leak in ["panic", "inject", "hook", ".rs", "/", "thread"] {
        assert!(!message.contains(leak), "the 500 leaks `{leak}`: {message}");
    }
}

#[tokio::test]
async fn a_panic_inside_a_batch_fails_only_that_batch_and_the_worker_goes_on() {
    let server = start().await;
    let serving = server.state.service().expect("loaded");
    let (_, expected) = embed(&server, "a photo of a cat").await;
    let expected = first_embedding(&expected);

    serving.texts().inject_panics(1);
    let (status, body) = embed(&server, "a photo of a cat").await;
    assert_opaque_500(status, &body);
    // The same worker serves the next request, with the right answer, and stays ready.
    let (status, body) = embed(&server, "a photo of a cat").await;
    assert_eq!(status, 200, "{body}");
    assert!(cosine(&first_embedding(&body), &expected) > 0.99999);
    assert_eq!(ready(&server).await.0, 200);
    assert_eq!(serving.texts().live_workers(), 1);

    // Concurrent requests: a batch that panics is run again item by item, so only an item
    // that panics alone fails. Two panics: the first batch's run and then the first run after
    // it (its first item alone, or the next batch) panic, so one or two requests get a 500
    // however the twelve were batched, and every other gets its own answer.
    let texts: Vec<String> = (0..12).map(|i| format!("caption number {i}")).collect();
    let mut alone = Vec::new();
    for t in &texts {
        alone.push(first_embedding(&embed(&server, t).await.1));
    }
    serving.texts().inject_panics(2);
    let answers = join_all(texts.iter().map(|t| embed(&server, t))).await;
    let failed = answers.iter().filter(|(s, _)| *s == 500).count();
    assert!((1..=2).contains(&failed), "{failed} of 12 failed");
    for (i, (status, body)) in answers.iter().enumerate() {
        if *status == 200 {
            assert!(
                cosine(&first_embedding(body), &alone[i]) > 0.99999,
                "request {i}"
            );
        } else {
            assert_opaque_500(*status, body);
        }
    }

    // The image tower is independent: a panic there fails that image request only.
    serving.images().inject_panics(1);
    let jpeg = std::fs::read(common::fixture("bad/small.jpg")).unwrap();
    let image = |bytes: Vec<u8>| {
        reqwest::Client::new()
            .post(server.url("/v1/embed/image"))
            .header("content-type", "image/jpeg")
            .body(bytes)
            .send()
    };
    let r = image(jpeg.clone()).await.unwrap();
    assert_opaque_500(r.status().as_u16(), &r.json().await.unwrap());
    assert_eq!(image(jpeg).await.unwrap().status(), 200);
    assert_eq!(embed(&server, "still fine").await.0, 200);
}

#[tokio::test]
async fn failed_batches_in_a_row_make_the_server_unready_for_a_cooldown_only() {
    let server = start().await;
    let serving = server.state.service().expect("loaded");
    serving.texts().inject_panics(4);
    for i in 0..3 {
        let (status, body) = embed(&server, &format!("doomed {i}")).await;
        assert_opaque_500(status, &body);
    }
    // Three failures in a row: the load balancer is told to stop sending.
    let (status, body) = ready(&server).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("unavailable"))
    );
    let metrics = server.state.metrics().render();
    assert!(
        metrics.contains("clipserve_ready 0"),
        "the ready gauge still says 1"
    );
    // Without any traffic (an unready replica gets none), it becomes ready again once the
    // cooldown has passed since the last failure, so it can be offered work again.
    let waited = wait_ready(&server, 200).await;
    assert!(
        waited >= Duration::from_millis(COOLDOWN_MS / 2),
        "ready again after only {waited:?}"
    );
    // Offered traffic, it fails once more: unready again at once, for another cooldown.
    let (status, body) = embed(&server, "doomed 3").await;
    assert_opaque_500(status, &body);
    assert_eq!(ready(&server).await.0, 503);
    wait_ready(&server, 200).await;
    // One success clears the mark: the next single failure does not make it unready.
    assert_eq!(embed(&server, "healthy again").await.0, 200);
    serving.texts().inject_panics(1);
    assert_eq!(embed(&server, "one bad batch").await.0, 500);
    assert_eq!(ready(&server).await.0, 200);
    assert!(server
        .state
        .metrics()
        .render()
        .contains("clipserve_ready 1"));
}

/// Waits (bounded) until the tower's loop has counted `n` restarts.
async fn restarts_reach<I: Send + 'static>(tower: &clipserve::batcher::Batcher<I>, n: usize) {
    let started = Instant::now();
    while tower.worker_restarts() < n {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the worker loop counted {} restarts, not {n}",
            tower.worker_restarts()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(tower.worker_restarts(), n);
}

#[tokio::test]
async fn a_crash_of_the_worker_loop_restarts_it_and_the_tower_keeps_serving() {
    let server = start().await;
    let serving = server.state.service().expect("loaded");
    serving.texts().inject_crashes(1);
    let (status, body) = embed(&server, "the loop crashes on this batch").await;
    assert_opaque_500(status, &body);
    // The loop counts its restart just after the crashed batch's callers got their 500.
    restarts_reach(serving.texts(), 1).await;
    assert_eq!(
        serving.texts().live_workers(),
        1,
        "the thread is still there"
    );
    assert_eq!(ready(&server).await.0, 200);
    let (status, body) = embed(&server, "and the next one is served").await;
    assert_eq!(status, 200, "{body}");

    // Crashes on every batch for a while: unready for the cooldown, then ready and serving.
    serving.texts().inject_crashes(3);
    for i in 0..3 {
        assert_eq!(embed(&server, &format!("crash {i}")).await.0, 500);
    }
    restarts_reach(serving.texts(), 4).await;
    assert_eq!(ready(&server).await.0, 503);
    wait_ready(&server, 200).await;
    assert_eq!(embed(&server, "recovered").await.0, 200);
    assert_eq!(serving.texts().worker_restarts(), 4);
    assert_eq!(serving.texts().live_workers(), 1);
}
