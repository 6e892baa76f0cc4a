//! Overload: offered load at several times what the server can do, for a few seconds. Every
//! request is answered (200, or 503 with Retry-After at once; nothing else, no dropped
//! connection), memory stays bounded, and once the load stops the server is back to its full
//! throughput, measured before and after with the same requests in the same test (a ratio, not
//! a wall-clock limit).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{b64, TestServer};
use futures::future::join_all;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Peak memory growth allowed over the overload (KiB).
const MAX_GROWTH_KB: u64 = 200 * 1024;

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The requests of the mix: mostly texts, some images.
fn request(
    client: &reqwest::Client,
    server: &TestServer,
    i: usize,
    image: &str,
) -> reqwest::RequestBuilder {
    if i % 4 == 3 {
        client
            .post(server.url("/v1/embed/image"))
            .json(&json!({ "images": [image] }))
    } else {
        let texts: Vec<String> = (0..4)
            .map(|k| format!("request {i} text {k}: a photo of a cat"))
            .collect();
        client
            .post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": texts }))
    }
}

/// Closed-loop throughput: `n` requests, `concurrency` at a time, all must succeed.
async fn throughput(client: &reqwest::Client, server: &TestServer, image: &str, n: usize) -> f64 {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(4));
    let runs = (0..n).map(|i| {
        let permits = permits.clone();
        let req = request(client, server, i, image);
        async move {
            let _p = permits.acquire_owned().await.unwrap();
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    join_all(runs).await;
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_several_times_capacity_every_request_is_answered_and_throughput_recovers() {
    let server = TestServer::start(|s| {
        s.batching.text_queue_capacity = 64;
        s.batching.image_queue_capacity = 8;
    })
    .await;
    let client = reqwest::Client::new();
    let image = b64(&common::photo("pillow_hopper.jpg"));
    // Warm up, then measure what the server can do.
    throughput(&client, &server, &image, 20).await;
    let before = throughput(&client, &server, &image, 120).await;

    // Offer five times that, open loop, for three seconds (at most 512 requests outstanding,
    // so the client side stays bounded too).
    let hwm_before = peak_rss_kb();
    let offered = before * 5.0;
    let interval = Duration::from_secs_f64(1.0 / offered);
    let outstanding = Arc::new(Semaphore::new(512));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(3) {
        ticker.tick().await;
        let permit = outstanding.clone().acquire_owned().await.unwrap();
        let req = request(&client, &server, i, &image);
        i += 1;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let r = req.send().await.expect("every request gets an answer");
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.expect("a JSON answer");
            (status, retry, body)
        }));
    }
    let sent = tasks.len();
    let answers: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let elapsed = started.elapsed();
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused = answers.iter().filter(|(s, _, _)| *s == 503).count();
    for (status, retry, body) in &answers {
        match status {
            200 => assert!(body["embeddings"].is_array()),
            503 => {
                assert_eq!(retry.as_deref(), Some("1"), "{body}");
                assert_eq!(body["error"]["type"], "overloaded");
            }
            other => panic!("status {other} under overload: {body}"),
        }
    }
    let growth = peak_rss_kb().saturating_sub(hwm_before);
    eprintln!(
        "capacity {before:.0} req/s; offered {offered:.0} req/s for {elapsed:.1?}: {sent} sent, \
         {ok} served ({:.0}/s), {refused} refused with 503; peak memory +{growth} KiB",
        ok as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(ok + refused, sent);
    assert!(
        refused > 0,
        "the offered load never filled a queue: not an overload"
    );
    assert!(ok > 0, "nothing was served under overload");
    assert!(growth < MAX_GROWTH_KB, "peak memory grew by {growth} KiB");

    // Load stopped: the queues drain and the same requests run as fast as before.
    let after = throughput(&client, &server, &image, 120).await;
    eprintln!("throughput before {before:.0} req/s, after {after:.0} req/s");
    assert!(
        after >= before * 0.5,
        "throughput did not recover: {before:.0} req/s before, {after:.0} after"
    );
    assert_eq!(
        reqwest::get(server.url("/ready")).await.unwrap().status(),
        200
    );
}
