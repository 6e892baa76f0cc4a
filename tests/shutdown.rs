//! The real binary under a container runtime's stop: SIGTERM while requests are in flight.
//! Every request the server had admitted gets a complete 200, even one whose body was still
//! uploading (HTTP/1 and HTTP/2); what arrives after the signal is refused (503 with
//! Retry-After, or a refused connection), never cut off, and a probe on a reused keep-alive
//! connection never sees a reset; `/ready` answers 503 while the server drains; the process
//! exits 0. Also: with JSON logs, every stdout line is a JSON object and the request id a
//! response carries is in the log.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{b64, fixture, photo};
use serde_json::{json, Value};

/// Items each tower holds back before running a batch: long enough that the whole burst is
/// still in flight when the signal comes, so every burst request is answered during the drain.
const LINGER_MS: &str = "8000";

/// The drain's bound in these tests: far beyond what the work needs even on a loaded CI
/// machine (a debug build decoding the burst's images at load 20 has taken over 20 s), so a
/// request cut off means the drain dropped it, not that the bound ran out. Each test checks
/// that the server says it finished within it.
const GRACE_MS: &str = "120000";

/// How long a test waits for the process to exit after the drain's work is done.
const EXIT_LIMIT: Duration = Duration::from_secs(150);

/// The `clipserve serve` process, its address, and what it printed on stdout.
struct Server {
    child: Child,
    base: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary on an ephemeral loopback port with the tiny model and JSON logs; the
    /// address comes from its `listening` log line.
    fn spawn(env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clipserve"));
        for (name, _) in std::env::vars() {
            if name.starts_with("CLIPSERVE_") || name == "RUST_LOG" {
                cmd.env_remove(name);
            }
        }
        cmd.arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CLIPSERVE_MODEL", fixture("models/tiny"))
            .env("CLIPSERVE_ADDR", "127.0.0.1:0")
            .env("CLIPSERVE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            // One plan per tower with symbolic shapes: the quickest to load.
            .env("CLIPSERVE_MODEL_IMAGE_BATCH_BUCKETS", "[]")
            .env("CLIPSERVE_MODEL_TEXT_BATCH_BUCKETS", "[]")
            .env("CLIPSERVE_MODEL_TEXT_SEQ_BUCKETS", "[]")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("the clipserve binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let addr = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
                    v["addr"]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                });
                if let Some(addr) = addr {
                    let _ = addr_tx.send(addr);
                }
                kept.lock().expect("log lock").push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs the address it listens on");
        Server {
            child,
            base: format!("http://{addr}"),
            lines,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(120), "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What a container runtime sends on `stop`.
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waitpid") {
                return status;
            }
            assert!(started.elapsed() < limit, "still running after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The drain ended on its own (every request answered, every connection closed), not at
    /// the grace period's bound.
    fn assert_drained(&self) {
        let messages: Vec<String> = self
            .log()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["message"].as_str().map(str::to_owned))
            .collect();
        assert!(
            messages.iter().any(|m| m == "all connections closed"),
            "the drain did not finish within the grace period: {:?}",
            &messages[messages.len().saturating_sub(5)..]
        );
    }

    fn log(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The server's own account of the failed test (stderr is inherited already).
            let log = self.log();
            eprintln!("--- the server's last {} log lines ---", log.len().min(80));
            for line in &log[log.len().saturating_sub(80)..] {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one request ended.
#[derive(Debug)]
enum Outcome {
    /// 200 with a body that parsed and held one embedding per input.
    Complete,
    /// Refused before any work: 503 with Retry-After, or the connection was refused.
    Refused,
    /// Anything else: a dropped connection, a torn body, another status.
    Broken(String),
}

async fn classify(response: reqwest::Result<reqwest::Response>, items: usize) -> Outcome {
    let response = match response {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::Refused,
        Err(e) => return Outcome::Broken(format!("send: {e:?}")),
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Outcome::Broken(format!("{status}, body cut off: {e:?}")),
    };
    match (status, serde_json::from_slice::<Value>(&body)) {
        (200, Ok(v)) if v["embeddings"].as_array().map(Vec::len) == Some(items) => {
            Outcome::Complete
        }
        (503, Ok(v)) if retry_after && v["error"]["type"].is_string() => Outcome::Refused,
        (s, v) => Outcome::Broken(format!("{s}: {v:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_burst_answers_every_accepted_request_refuses_the_rest_and_exits_zero() {
    let mut server = Server::spawn(&[
        ("RUST_LOG", "info,tower_http=debug"),
        ("CLIPSERVE_BATCHING_LINGER_MS", LINGER_MS),
        // Images too wait out the linger once decoded, so the burst stays queued.
        ("CLIPSERVE_BATCHING_IMAGE_LINGER_WHILE_DECODING", "false"),
        ("CLIPSERVE_BATCHING_MAX_IMAGE_BATCH", "64"),
        ("CLIPSERVE_BATCHING_MAX_TEXT_BATCH", "64"),
        ("CLIPSERVE_BATCHING_IMAGE_WORKERS", "1"),
        ("CLIPSERVE_BATCHING_TEXT_WORKERS", "1"),
        ("CLIPSERVE_SERVER_SHUTDOWN_GRACE_MS", GRACE_MS),
        // Every text must be queued (the repeated one would be a cache hit).
        ("CLIPSERVE_MODEL_TEXT_CACHE_ENTRIES", "0"),
    ]);
    server.wait_ready().await;
    // A fresh connection per request for the burst and the late requests.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    // Probes reuse keep-alive connections, as a balancer's health checks do: the one opened
    // here sits idle when the signal comes, and the drain must not close it under a probe.
    let prober = reqwest::Client::new();
    let warm = prober
        .get(server.url("/ready"))
        .send()
        .await
        .expect("probe");
    assert_eq!(warm.status(), 200);
    let images = [
        b64(&photo("pillow_hopper.jpg")),
        b64(&photo("pillow_flower.jpg")),
    ];
    let (image_requests, text_requests) = (12, 12);
    let mut burst = Vec::new();
    for i in 0..image_requests + text_requests {
        let (client, url, body) = if i % 2 == 0 {
            (
                client.clone(),
                server.url("/v1/embed/image"),
                json!({ "images": images }),
            )
        } else {
            let texts = [format!("a photo number {i}"), "una foto de un gato".into()];
            (
                client.clone(),
                server.url("/v1/embed/text"),
                json!({ "texts": texts }),
            )
        };
        burst.push(tokio::spawn(async move {
            let outcome = classify(client.post(url).json(&body).send().await, 2).await;
            (outcome, Instant::now())
        }));
    }
    // Wait until the server has read every burst request's headers: those requests are
    // admitted, and must be answered in full whatever the signal finds them doing (decoding,
    // queued, or lingering in a batch).
    wait_started(&server, "/v1/embed/image", image_requests).await;
    wait_started(&server, "/v1/embed/text", text_requests).await;

    server.sigterm();
    let signalled = Instant::now();

    // Probes on the reused keep-alive connection until the server has begun to drain: 200
    // until it has handled the signal (that takes a moment after `kill` returns), then 503;
    // never an error. No wall-clock bound on how soon: on a loaded machine a probe can wait.
    loop {
        match prober.get(server.url("/ready")).send().await {
            Ok(r) if r.status() == 503 => break,
            Ok(r) => assert_eq!(r.status(), 200, "/ready after the signal"),
            Err(e) => panic!("/ready during the drain, on a reused connection: {e:?}"),
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "/ready never answered 503 during the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining, with the burst still in flight: new work is refused (503 + Retry-After, or a
    // refused connection should the drain already be over), never cut off, and the reused
    // probe connection keeps answering 503.
    let mut late = Vec::new();
    for _ in 0..3 {
        let text = client
            .post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": ["arrived after the signal", "x"] }))
            .send()
            .await;
        late.push(classify(text, 2).await);
        match prober.get(server.url("/ready")).send().await {
            Ok(r) => assert_eq!(r.status(), 503, "/ready during the drain"),
            Err(e) if e.is_connect() => {}
            Err(e) => panic!("/ready during the drain, on a reused connection: {e:?}"),
        }
    }

    for (i, task) in burst.into_iter().enumerate() {
        let (outcome, finished) = task.await.expect("request task");
        match outcome {
            Outcome::Complete => {}
            Outcome::Refused => panic!("accepted request {i} was refused"),
            Outcome::Broken(why) => panic!("accepted request {i} was cut off: {why}"),
        }
        assert!(
            finished > signalled,
            "request {i} was answered before the signal"
        );
    }
    for outcome in late {
        match outcome {
            Outcome::Refused => {}
            Outcome::Complete => panic!("a request sent during the drain was served"),
            Outcome::Broken(why) => panic!("a request sent during the drain was cut off: {why}"),
        }
    }
    let status = server.wait_exit(EXIT_LIMIT).await;
    server.assert_drained();
    assert!(status.success(), "exit status {status:?}");
}

/// Waits until the server has logged that it started on `n` requests to `uri` (tower-http's
/// debug line, inside the request's span): their headers have been read and they were admitted.
async fn wait_started(server: &Server, uri: &str, n: usize) {
    let started = Instant::now();
    loop {
        let count = server
            .log()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "started processing request" && v["span"]["uri"] == uri)
            .count();
        if count >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server never started on {n} requests to {uri} ({count} so far)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/ready` answers 503: the signal has been handled and the drain has begun.
async fn wait_draining(server: &Server) {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    loop {
        let r = client.get(server.url("/ready")).send().await;
        if r.is_ok_and(|r| r.status() == 503) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/ready never answered 503 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request written by hand in two halves, so the test decides when each half of
/// the body leaves.
struct HalfSent {
    stream: tokio::net::TcpStream,
    rest: Vec<u8>,
}

impl HalfSent {
    /// Connects and sends the headers and the first half of `body`.
    async fn start(server: &Server, path: &str, content_type: &str, body: &[u8]) -> HalfSent {
        use tokio::io::AsyncWriteExt;
        let addr = server.base.strip_prefix("http://").expect("http base");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let (first, rest) = body.split_at(body.len() / 2);
        stream.write_all(head.as_bytes()).await.expect("headers");
        stream.write_all(first).await.expect("first half");
        stream.flush().await.expect("flush");
        HalfSent {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Sends the rest of the body and reads the whole answer: status, headers (lower-cased
    /// names) and the JSON body.
    async fn finish(mut self) -> (u16, Vec<(String, String)>, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream
            .write_all(&self.rest)
            .await
            .expect("second half");
        self.stream.flush().await.expect("flush");
        // The answer carries `Connection: close` during the drain, so it ends at EOF.
        let mut raw = Vec::new();
        self.stream
            .read_to_end(&mut raw)
            .await
            .expect("the whole answer, then EOF");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(&raw)));
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let body = serde_json::from_slice(&raw[split + 4..]).unwrap_or_else(|e| {
            panic!(
                "body not JSON ({e}): {:?}",
                String::from_utf8_lossy(&raw[split + 4..])
            )
        });
        (status, headers, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_half_sent_before_sigterm_are_finished_and_answered_200_and_later_requests_get_503()
{
    let mut server = Server::spawn(&[
        ("RUST_LOG", "info,tower_http=debug"),
        ("CLIPSERVE_SERVER_SHUTDOWN_GRACE_MS", GRACE_MS),
    ]);
    server.wait_ready().await;
    let jpeg = photo("pillow_hopper.jpg");
    let texts = json!({ "texts": ["half before the signal, half after", "una foto"] });
    let image = HalfSent::start(&server, "/v1/embed/image", "image/jpeg", &jpeg).await;
    let text = HalfSent::start(
        &server,
        "/v1/embed/text",
        "application/json",
        texts.to_string().as_bytes(),
    )
    .await;
    wait_started(&server, "/v1/embed/image", 1).await;
    wait_started(&server, "/v1/embed/text", 1).await;

    server.sigterm();
    wait_draining(&server).await;
    let late = reqwest::Client::new()
        .post(server.url("/v1/embed/text"))
        .json(&json!({ "texts": ["sent after the signal"] }))
        .send()
        .await
        .expect("a late request is answered, not cut off");
    assert_eq!(late.status(), 503);
    assert!(late.headers().contains_key("retry-after"));

    for (name, upload) in [("image", image), ("text", text)] {
        let (status, headers, body) = upload.finish().await;
        assert_eq!(status, 200, "{name} upload across the signal: {body}");
        let embeddings = body["embeddings"].as_array().expect("embeddings");
        let expected = if name == "image" { 1 } else { 2 };
        assert_eq!(embeddings.len(), expected, "{name}: {body}");
        assert!(embeddings
            .iter()
            .all(|e| e.as_array().map(Vec::len) == Some(512)));
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "connection" && v == "close"),
            "{name}: an answer during the drain retires its connection: {headers:?}"
        );
    }
    let status = server.wait_exit(EXIT_LIMIT).await;
    server.assert_drained();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_streams_opened_before_sigterm_are_finished_and_answered_200() {
    let mut server = Server::spawn(&[
        ("RUST_LOG", "info,tower_http=debug"),
        ("CLIPSERVE_SERVER_SHUTDOWN_GRACE_MS", GRACE_MS),
    ]);
    server.wait_ready().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let body = json!({ "texts": ["an HTTP/2 stream across the signal", "un gatto"] })
        .to_string()
        .into_bytes();
    let (first, rest) = body.split_at(body.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    tx.send(Ok(first.to_vec())).await.expect("first half");
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let request = client
        .post(server.url("/v1/embed/text"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let pending = tokio::spawn(request);
    wait_started(&server, "/v1/embed/text", 1).await;

    server.sigterm();
    wait_draining(&server).await;
    tx.send(Ok(rest.to_vec())).await.expect("second half");
    drop(tx);
    let response = pending
        .await
        .expect("request task")
        .expect("the stream opened before the signal is answered");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["embeddings"].as_array().map(Vec::len), Some(2));
    let status = server.wait_exit(EXIT_LIMIT).await;
    server.assert_drained();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_carry_the_request_id_of_the_response() {
    let server = Server::spawn(&[]);
    server.wait_ready().await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/embed/text"))
        .json(&json!({ "texts": ["a photo of a cat"] }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("the response has a request id")
        .to_string();
    assert!(!id.is_empty());
    // The access line is written when the response goes out; give the logger a moment.
    let started = Instant::now();
    let mentions = loop {
        let lines = server.log();
        let mentions: Vec<Value> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))
            })
            .filter(|v| v.to_string().contains(&id))
            .collect();
        if !mentions.is_empty() || started.elapsed() > Duration::from_secs(5) {
            break mentions;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!mentions.is_empty(), "no log line carries request id {id}");
    for line in &mentions {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert_eq!(line["span"]["request_id"], json!(id), "{line}");
    }
}
