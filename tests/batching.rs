//! The queue under concurrency: batches form across requests, every caller gets exactly its own
//! answer, and a full queue answers at once with 503 + Retry-After while the rest succeed.

mod common;

use common::{b64, cosine, embeddings, first_embedding, photo, TestServer};
use futures::future::join_all;
use serde_json::{json, Value};

/// Reads one sample of a metric from the Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const PHOTOS: [&str; 8] = [
    "pillow_hopper.jpg",
    "skimage_chelsea.png",
    "skimage_coffee.png",
    "skimage_rocket.jpg",
    "pillow_flower.jpg",
    "skimage_horse.png",
    "pillow_hopper.webp",
    "skimage_camera.png",
];

#[tokio::test]
async fn concurrent_requests_each_get_their_own_embedding_from_shared_batches() {
    // The text cache off: the second round must run the tower, not repeat the first's answers.
    let server = TestServer::start(|s| {
        s.batching.linger_ms = 20;
        s.model.text_cache_entries = 0;
    })
    .await;
    let client = reqwest::Client::new();
    let texts: Vec<String> = (0..48)
        .map(|i| match i % 4 {
            0 => format!("a photo of {i} cats"),
            1 => format!("una foto de {i} gatos"),
            2 => format!("{i}匹の猫の写真"),
            _ => format!("фотография {i} кошек"),
        })
        .collect();
    let images: Vec<String> = (0..16)
        .map(|i| b64(&photo(PHOTOS[i % PHOTOS.len()])))
        .collect();

    // Each input alone, one at a time: the expected answers.
    let mut alone = Vec::new();
    for t in &texts {
        let r: Value = client
            .post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": [t] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        alone.push(first_embedding(&r));
    }
    for img in &images {
        let r: Value = client
            .post(server.url("/v1/embed/image"))
            .json(&json!({ "images": [img] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        alone.push(first_embedding(&r));
    }
    let before = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // All 64 at once.
    let requests = texts
        .iter()
        .map(|t| {
            client
                .post(server.url("/v1/embed/text"))
                .json(&json!({ "texts": [t] }))
        })
        .chain(images.iter().map(|i| {
            client
                .post(server.url("/v1/embed/image"))
                .json(&json!({ "images": [i] }))
        }))
        .map(|req| async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            first_embedding(&r.json::<Value>().await.unwrap())
        });
    let together = join_all(requests).await;
    assert_eq!(together.len(), 64);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        let c = cosine(a, b);
        assert!(
            c >= 0.99999,
            "request {i}: cosine {c} with its own input alone"
        );
    }
    // Distinct inputs really are distinct, so a swapped answer could not pass the check above.
    for i in 0..48 {
        for j in (i + 1)..48 {
            assert!(
                cosine(&alone[i], &alone[j]) < 0.99999,
                "texts {i} and {j} embed alike"
            );
        }
    }

    // Batches of more than one item were formed for both towers.
    let after = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (tower, items) in [("text", 48.0), ("image", 16.0)] {
        let count = metric(
            &after,
            &format!("clipserve_batch_size_count{{tower=\"{tower}\"}}"),
        ) - metric(
            &before,
            &format!("clipserve_batch_size_count{{tower=\"{tower}\"}}"),
        );
        let sum = metric(
            &after,
            &format!("clipserve_batch_size_sum{{tower=\"{tower}\"}}"),
        ) - metric(
            &before,
            &format!("clipserve_batch_size_sum{{tower=\"{tower}\"}}"),
        );
        assert_eq!(sum, items, "{tower}: every item ran exactly once");
        assert!(
            count < items,
            "{tower}: {items} items ran in {count} batches: no batching"
        );
        eprintln!(
            "{tower}: {items} items in {count} batches (mean {:.1})",
            sum / count
        );
    }
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_the_server_recovers() {
    let server = TestServer::start(|s| {
        s.batching.text_queue_capacity = 4;
        s.batching.max_text_batch = 2;
        s.model.text_batch_buckets = vec![1, 2];
        s.batching.linger_ms = 0;
    })
    .await;
    let client = reqwest::Client::new();
    let burst = (0..60).map(|i| {
        let req = client
            .post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": [format!("burst text number {i}"), "and another"] }));
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            (status, retry, body)
        }
    });
    let answers = join_all(burst).await;
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!(ok + refused.len(), 60, "only 200 or 503: {answers:?}");
    assert!(ok > 0, "nothing succeeded");
    assert!(!refused.is_empty(), "the burst never filled a queue of 4");
    for (_, retry, body) in &refused {
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(body["error"]["type"], "overloaded");
    }
    for (status, _, body) in &answers {
        if *status == 200 {
            assert_eq!(body["embeddings"].as_array().unwrap().len(), 2);
        }
    }
    eprintln!("burst of 60: {ok} served, {} refused", refused.len());
    // Afterwards the server serves normally.
    let r = client
        .post(server.url("/v1/embed/text"))
        .json(&json!({ "texts": ["after the burst"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&metrics, "clipserve_queue_rejections_total{tower=\"text\"}")
            >= refused.len() as f64
    );
}

#[tokio::test]
async fn a_repeated_text_is_answered_from_the_cache_without_running_the_tower() {
    let server = TestServer::start(|s| s.model.text_cache_entries = 16).await;
    let client = reqwest::Client::new();
    let scrape = || async {
        client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let embed = |texts: Vec<&'static str>| {
        let req = client
            .post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": texts }));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            embeddings(&r.json::<Value>().await.unwrap())
        }
    };
    let first = embed(vec!["un chat sur un canapé", "a dog"]).await;
    let before = scrape().await;
    // Same texts again, one new, and one that cleans to the same tokens as a cached one.
    let second = embed(vec![
        "a dog",
        "un chat sur un canapé",
        "a bird",
        "  a   dog ",
    ])
    .await;
    let after = scrape().await;

    assert!(cosine(&first[1], &second[0]) >= 0.999_999);
    assert!(cosine(&first[0], &second[1]) >= 0.999_999);
    assert!(cosine(&second[0], &second[3]) >= 0.999_999);
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(
        delta("clipserve_text_cache_lookups_total{outcome=\"hit\"}"),
        3.0
    );
    assert_eq!(
        delta("clipserve_text_cache_lookups_total{outcome=\"miss\"}"),
        1.0
    );
    // Only "a bird" reached the text tower.
    assert_eq!(
        delta("clipserve_batch_size_sum{tower=\"text\"}"),
        1.0,
        "cached texts must not be queued"
    );
}
