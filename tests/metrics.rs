//! `/metrics` after known traffic (texts, images, a bad request, a queue rejection): every
//! series an operator alerts or scales on is there, with the values that traffic implies, and
//! the series of what has not happened yet are there at 0.

mod common;

use std::collections::BTreeMap;

use common::{b64, photo, TestServer};
use serde_json::{json, Value};

/// One sample of the Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{label="value",...} number` lines; comments and `# EOF` are skipped.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("a numeric value"),
            }
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

/// Checks a histogram: cumulative buckets never decrease, `+Inf` equals the count, and the
/// count is `count`. Returns the sum.
fn histogram(samples: &[Sample], name: &str, labels: &[(&str, &str)], count: f64) -> f64 {
    let buckets: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket"))
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(buckets.len() > 2, "{name} {labels:?} has buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].value <= w[1].value),
        "{name} {labels:?} buckets are cumulative: {buckets:?}"
    );
    let inf = buckets.last().expect("buckets");
    assert_eq!(inf.labels["le"], "+Inf");
    assert_eq!(value(samples, &format!("{name}_count"), labels), count);
    assert_eq!(
        inf.value, count,
        "{name} {labels:?}: +Inf bucket equals the count"
    );
    value(samples, &format!("{name}_sum"), labels)
}

async fn post(server: &TestServer, path: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn metrics_after_known_traffic_count_requests_batches_items_and_rejections() {
    let server = TestServer::start(|s| s.batching.text_queue_capacity = 4).await;
    let texts = json!({ "texts": ["a cat", "un gato", "eine Katze"] });
    assert_eq!(post(&server, "/v1/embed/text", texts).await, 200);
    let images =
        json!({ "images": [b64(&photo("pillow_hopper.jpg")), b64(&photo("skimage_coffee.png"))] });
    assert_eq!(post(&server, "/v1/embed/image", images).await, 200);
    let broken = json!({ "images": [b64(b"not an image")] });
    let bad_status = post(&server, "/v1/embed/image", broken).await;
    assert!((400..500).contains(&bad_status), "{bad_status}");
    // More texts than the queue holds: refused at once, whatever the load.
    let too_many = json!({ "texts": ["1", "2", "3", "4", "5"] });
    assert_eq!(post(&server, "/v1/embed/text", too_many).await, 503);

    let response = reqwest::get(server.url("/metrics")).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.contains("text/plain") || content_type.contains("openmetrics"));
    let text = response.text().await.expect("body");
    let m = parse(&text);

    // Requests by route, method and status.
    let requests = "clipserve_http_requests_total";
    let by = |route: &'static str, status: &'static str| {
        [("route", route), ("method", "POST"), ("status", status)]
    };
    assert_eq!(value(&m, requests, &by("/v1/embed/text", "200")), 1.0);
    assert_eq!(value(&m, requests, &by("/v1/embed/text", "503")), 1.0);
    assert_eq!(value(&m, requests, &by("/v1/embed/image", "200")), 1.0);
    let bad = bad_status.to_string();
    let bad_labels = [
        ("route", "/v1/embed/image"),
        ("method", "POST"),
        ("status", bad.as_str()),
    ];
    assert_eq!(value(&m, requests, &bad_labels), 1.0);

    // Latency per route: two text requests, two image requests, a positive total.
    let latency = "clipserve_http_request_duration_seconds";
    assert!(histogram(&m, latency, &[("route", "/v1/embed/text")], 2.0) > 0.0);
    assert!(histogram(&m, latency, &[("route", "/v1/embed/image")], 2.0) > 0.0);

    // The queues are empty again; the rejection was counted on the text tower.
    for tower in ["image", "text"] {
        assert_eq!(value(&m, "clipserve_queue_depth", &[("tower", tower)]), 0.0);
    }
    let rejections = "clipserve_queue_rejections_total";
    assert_eq!(value(&m, rejections, &[("tower", "text")]), 1.0);

    // Batches: every accepted item embedded exactly once, per tower.
    for (tower, items) in [("text", 3.0), ("image", 2.0)] {
        let t = [("tower", tower)];
        let batches = value(
            &m,
            "clipserve_batches_total",
            &[("tower", tower), ("outcome", "ok")],
        );
        assert!(
            (1.0..=items).contains(&batches),
            "{tower}: {batches} batches"
        );
        assert_eq!(histogram(&m, "clipserve_batch_size", &t, batches), items);
        let infer = histogram(&m, "clipserve_inference_duration_seconds", &t, batches);
        assert!(infer > 0.0, "{tower} inference took time");
        assert_eq!(value(&m, "clipserve_items_embedded_total", &t), items);
    }
    // Every image decoded and preprocessed, the broken one included.
    let preparation = "clipserve_image_preparation_duration_seconds";
    assert!(histogram(&m, preparation, &[], 3.0) > 0.0);

    // Tokens per text batch: at least <s> and </s> around each text, padding included.
    let text_batches = value(
        &m,
        "clipserve_batches_total",
        &[("tower", "text"), ("outcome", "ok")],
    );
    let tokens = histogram(&m, "clipserve_batch_tokens", &[], text_batches);
    assert!(
        (3.0 * 3.0..=3.0 * 77.0).contains(&tokens),
        "{tokens} tokens"
    );

    // Series of things that never happened are there at 0 (so the first occurrence shows
    // in rate() and increase()), and the server says it is ready.
    assert_eq!(value(&m, rejections, &[("tower", "image")]), 0.0);
    for tower in ["image", "text"] {
        let failed = [("tower", tower), ("outcome", "failed")];
        assert_eq!(value(&m, "clipserve_batches_total", &failed), 0.0);
        let skipped = "clipserve_items_skipped_total";
        assert_eq!(value(&m, skipped, &[("tower", tower)]), 0.0);
    }
    assert_eq!(value(&m, "clipserve_ready", &[]), 1.0);
}
