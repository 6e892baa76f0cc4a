//! Shared by the integration tests: fixture paths, and a real server started on port 0 with
//! the committed tiny model, spoken to over HTTP.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clipserve::config::Settings;
use clipserve::http::AppState;
use clipserve::telemetry::Metrics;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A path under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The bytes of a fixture photo.
pub fn photo(name: &str) -> Vec<u8> {
    std::fs::read(fixture("photos").join(name)).unwrap_or_else(|e| panic!("photo {name}: {e}"))
}

/// Settings for tests: the tiny model, loopback, small batches so batching is exercised.
pub fn test_settings() -> Settings {
    let mut s = Settings::default();
    s.model.source = fixture("models/tiny").display().to_string();
    s.server.addr = "127.0.0.1:0".into();
    s.model.image_batch_buckets = vec![1, 2, 4, 8];
    s.model.text_batch_buckets = vec![1, 2, 4, 8];
    s.model.text_seq_buckets = vec![16, 77];
    s.batching.max_image_batch = 8;
    s.batching.max_text_batch = 8;
    s.batching.image_workers = 1;
    s.batching.text_workers = 1;
    s.server.shutdown_grace_ms = 10_000;
    s
}

/// A running server.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The server's state, for metrics and fault hooks.
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server with `test_settings()` changed by `tweak`, and waits until it is ready.
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let server = Self::start_unready(tweak).await;
        server.wait_ready(Duration::from_secs(120)).await;
        server
    }

    /// Starts a server without waiting for the model.
    pub async fn start_unready(tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let mut settings = test_settings();
        tweak(&mut settings);
        settings.validate().expect("test settings are valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = AppState::new(settings, Metrics::new());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(clipserve::app::run_with_state(
            state.clone(),
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            base,
            state,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Waits until `/ready` says 200.
    pub async fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "server not ready after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Triggers graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().expect("stopped once").await?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The `embeddings` of a clipserve answer, as f32 rows.
pub fn embeddings(body: &serde_json::Value) -> Vec<Vec<f32>> {
    body["embeddings"]
        .as_array()
        .expect("an `embeddings` array")
        .iter()
        .map(|e| {
            e.as_array()
                .expect("an embedding")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect()
        })
        .collect()
}

/// The first embedding of a clipserve answer.
pub fn first_embedding(body: &serde_json::Value) -> Vec<f32> {
    embeddings(body).swap_remove(0)
}

/// Standard base64 of bytes.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub mod parity;

/// A PNG of pseudo-random noise, `side` pixels square: it does not compress, so it is about
/// `3 * side * side` bytes (a 1024 square is over 3 MB). For uploads above a size.
pub fn noise_png(side: u32) -> Vec<u8> {
    let mut state: u32 = 0x9e37_79b9;
    let image = image::RgbImage::from_fn(side, side, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *c = (state >> 24) as u8;
        }
        image::Rgb(px)
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("a PNG encodes");
    out.into_inner()
}
