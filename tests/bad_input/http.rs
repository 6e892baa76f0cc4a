//! Abuse at the HTTP level, spoken over raw TCP where a normal client would not misbehave:
//! bodies over the limit (refused while still streaming), clients that trickle their headers
//! or their body, and requests cancelled while their items wait in the queue.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{log_lines_with, memory_kb, Harness};

async fn connect(h: &Harness) -> TcpStream {
    let addr = h.server.base.trim_start_matches("http://").to_string();
    TcpStream::connect(addr)
        .await
        .expect("connect to the test server")
}

/// Reads one response (head and a Content-Length body) or whatever arrives before EOF or
/// `limit`. Returns the status and the body, if a response came.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<(u16, Value)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split_whitespace().nth(1)?.parse().ok()?;
                let body =
                    serde_json::from_slice(&buf[end + 4..end + 4 + length]).unwrap_or(Value::Null);
                return Some((status, body));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_while_it_is_still_streaming() {
    let h = Harness::start(|s| s.limits.max_body_bytes = 64 * 1024).await;
    let (_, hwm) = memory_kb();
    let boundary = "XyZ";
    for (path, content_type, prefix) in [
        ("/v1/embed/image", "image/png".to_string(), Vec::new()),
        ("/v1/embed/text", "application/json".to_string(), b"{\"texts\": [\"".to_vec()),
        (
            "/v1/embed/image",
            format!("multipart/form-data; boundary={boundary}"),
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n")
                .into_bytes(),
        ),
    ] {
        let mut s = connect(&h).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut sent = 0;
        let first = [prefix, vec![b'a'; 16 * 1024 - 64]].concat();
        s.write_all(format!("{:x}\r\n", first.len()).as_bytes()).await.unwrap();
        s.write_all(&first).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        sent += first.len();
        // Twice the limit, in 16 KiB chunks; the final zero-size chunk is never sent, so the
        // upload is unfinished when (and after) the answer comes.
        while sent < 128 * 1024 {
            let chunk = vec![b'a'; 16 * 1024];
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
                || s.write_all(&chunk).await.is_err()
                || s.write_all(b"\r\n").await.is_err()
            {
                break; // the server may already have answered and closed
            }
            sent += chunk.len();
        }
        let (status, body) = read_response(&mut s, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{path} {content_type}: no answer to an unfinished upload"));
        assert_eq!(status, 413, "{path} {content_type}: {body}");
        assert_eq!(body["error"]["type"], "payload_too_large");
    }
    // A declared length over the limit is refused before any byte of the body is sent.
    let mut s = connect(&h).await;
    s.write_all(
        b"POST /v1/embed/text HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, body) = read_response(&mut s, Duration::from_secs(20))
        .await
        .expect("an answer");
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (413, Some("payload_too_large"))
    );
    h.still_serving("bodies over the limit", hwm).await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_by_the_header_timeout() {
    let h = Harness::start(|s| s.server.header_read_timeout_ms = 500).await;
    let (_, hwm) = memory_kb();
    let mut s = connect(&h).await;
    s.write_all(b"POST /v1/embed/text HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let (mut reader, mut writer) = s.into_split();
    let closed = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).to_string()
    });
    // One byte every 100 ms would take a minute to finish the header; the server cuts it.
    let started = Instant::now();
    for _ in 0..600 {
        if closed.is_finished() || writer.write_all(b"a").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the server closed the connection")
        .expect("reader task");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the trickling client held its connection for {:?}",
        started.elapsed()
    );
    // hyper either closes silently or answers 408 first; never a 2xx.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    h.still_serving("trickled headers", hwm).await;
}

#[tokio::test]
async fn a_client_trickling_its_body_gets_408_from_the_body_timeout() {
    let h = Harness::start(|s| s.server.body_timeout_ms = 500).await;
    let (_, hwm) = memory_kb();
    for (path, content_type, start) in [
        (
            "/v1/embed/text",
            "application/json",
            &b"{\"texts\": [\""[..],
        ),
        ("/v1/embed/image", "image/jpeg", &b"\xff\xd8\xff"[..]),
        (
            "/v1/embed/image",
            "multipart/form-data; boundary=B",
            &b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"[..],
        ),
    ] {
        let id = format!("slow-body-{}", content_type.len());
        let mut s = connect(&h).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(start).await.unwrap();
        let (mut reader, mut writer) = s.into_split();
        let answer = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(30), reader.read(&mut chunk)).await
            {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                    break;
                }
            }
            String::from_utf8_lossy(&buf).to_string()
        });
        for _ in 0..300 {
            if answer.is_finished() || writer.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = answer.await.expect("reader task");
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{path} {content_type}: {answer}"
        );
        assert!(answer.contains("\"request_timeout\""), "{answer}");
        assert!(
            log_lines_with(&id)
                .iter()
                .any(|l| l.contains("request_timeout")),
            "no log line for {id}"
        );
    }
    h.still_serving("trickled bodies", hwm).await;
}

/// Reads one sample of a metric from the Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn requests_cancelled_mid_flight_have_their_queued_items_dropped() {
    // One item per batch on one worker: thousands of queued items take a few seconds, long
    // after their impatient callers have given up.
    let h = Harness::start(|s| {
        s.batching.text_workers = 1;
        s.batching.max_text_batch = 1;
        s.model.text_batch_buckets = vec![1];
        s.batching.linger_ms = 0;
        s.batching.text_queue_capacity = 8192;
    })
    .await;
    let (_, hwm) = memory_kb();
    let skipped = r#"clipserve_items_skipped_total{tower="text"}"#;
    let embedded = r#"clipserve_items_embedded_total{tower="text"}"#;
    let before = h.server.state.metrics().render();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let sends = (0..16).map(|r| {
        let texts: Vec<String> = (0..256)
            .map(|i| format!("request {r} caption {i}"))
            .collect();
        impatient
            .post(h.server.url("/v1/embed/text"))
            .json(&json!({ "texts": texts }))
            .send()
    });
    let answers = futures::future::join_all(sends).await;
    let gave_up = answers.iter().filter(|r| r.is_err()).count();
    assert!(
        gave_up > 0,
        "every request finished within 300 ms: nothing was cancelled"
    );
    // Let the worker reach the abandoned items (bounded wait).
    let serving = h.server.state.service().expect("model loaded");
    for _ in 0..600 {
        if serving.texts().depth() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serving.texts().depth(), 0, "the queue never drained");
    let after = h.server.state.metrics().render();
    let dropped = metric(&after, skipped) - metric(&before, skipped);
    let ran = metric(&after, embedded) - metric(&before, embedded);
    eprintln!("{gave_up} of 16 callers gave up; {dropped} items skipped, {ran} embedded");
    assert!(
        dropped > 0.0,
        "no queued item of a cancelled request was skipped"
    );
    // Every queued item was either run or skipped, once.
    assert!(dropped + ran <= 16.0 * 256.0);
    assert_eq!(
        metric(
            &after,
            r#"clipserve_batches_total{tower="text",outcome="failed"}"#
        ),
        0.0,
        "a batch failed"
    );
    h.still_serving("cancelled requests", hwm).await;
}
