//! What every bad-input case checks, in one place: the answer's status and error type, a log
//! line naming the error under the request's id, that good requests sent at the same moment
//! get their own correct answers, that a good request right after succeeds, that the server
//! stays healthy and ready, and that the process's memory did not jump.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::join_all;
use serde_json::{json, Value};

pub use crate::common::embeddings;
use crate::common::{cosine, TestServer};

/// Memory growth allowed across one case (generous: the other tests of this binary run in the
/// same process at the same time).
pub const MAX_GROWTH_KB: u64 = 200 * 1024;

/// The bytes of a file of the bad-input corpus (tests/fixtures/bad, see make_corpus.py).
pub fn bad(name: &str) -> Vec<u8> {
    std::fs::read(crate::common::fixture("bad").join(name))
        .unwrap_or_else(|e| panic!("corpus file {name}: {e}"))
}

/// (VmRSS, VmHWM) of this process in KiB: the server runs in-process.
pub fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Everything the server logged in this test binary, captured once for all tests.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("clipserve=info,tower_http=info")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that mention `needle`.
pub fn log_lines_with(needle: &str) -> Vec<String> {
    let text =
        String::from_utf8_lossy(&log().lock().unwrap_or_else(|p| p.into_inner())).to_string();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// An answer, with the error type when there is one.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub kind: Option<String>,
    pub body: Value,
}

/// Sends a request and reads its JSON answer, checking the error shape of a non-2xx.
pub async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("the server answers");
    let status = r.status().as_u16();
    let json_ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let kind = body["error"]["type"].as_str().map(str::to_string);
    if status >= 400 {
        assert!(json_ct, "status {status} without a JSON body");
        assert!(kind.is_some(), "status {status} without error.type: {body}");
        assert!(body["error"]["message"].is_string(), "no message: {body}");
    }
    Answer { status, kind, body }
}

/// A server, a client, and the embeddings good requests must keep getting.
pub struct Harness {
    pub server: TestServer,
    pub client: reqwest::Client,
    good_text: Vec<f32>,
    good_image: Vec<f32>,
    /// Held for the whole test: peak memory (VmHWM) is process-wide, so the growth a case
    /// is charged with is only its own when no other case runs beside it.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// One harness at a time in this test binary (see [`Harness::_serial`]).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a case expects.
pub enum Expect<'a> {
    /// An error with this status and type.
    Error(u16, &'a str),
    /// Success with this many embeddings.
    Embeddings(usize),
}

impl Harness {
    /// Starts a server (test settings changed by `tweak`) and records the good answers.
    pub async fn start(tweak: impl FnOnce(&mut clipserve::config::Settings)) -> Harness {
        let serial = SERIAL.lock().await;
        log();
        let server = TestServer::start(tweak).await;
        let client = reqwest::Client::new();
        let mut h = Harness {
            server,
            client,
            good_text: Vec::new(),
            good_image: Vec::new(),
            _serial: serial,
        };
        h.good_text = h.good_text_embedding().await;
        h.good_image = h.good_image_embedding().await;
        h
    }

    /// A POST to `path` on this server.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.server.url(path))
    }

    async fn good_text_embedding(&self) -> Vec<f32> {
        let a = send(
            self.post("/v1/embed/text")
                .json(&json!({ "texts": ["a good request"] })),
        )
        .await;
        assert_eq!(a.status, 200, "good text request: {}", a.body);
        embeddings(&a.body).remove(0)
    }

    async fn good_image_embedding(&self) -> Vec<f32> {
        let a = send(
            self.post("/v1/embed/image")
                .header("content-type", "image/jpeg")
                .body(bad("small.jpg")),
        )
        .await;
        assert_eq!(a.status, 200, "good image request: {}", a.body);
        embeddings(&a.body).remove(0)
    }

    /// Good texts and images sent together still get exactly their own embeddings.
    pub async fn goods_are_unharmed(&self, case: &str) {
        let texts = (0..3).map(|_| self.good_text_embedding());
        let images = (0..2).map(|_| self.good_image_embedding());
        let (texts, images) = tokio::join!(join_all(texts), join_all(images));
        for t in texts {
            assert!(
                cosine(&t, &self.good_text) > 0.99999,
                "{case}: a good text changed"
            );
        }
        for i in images {
            assert!(
                cosine(&i, &self.good_image) > 0.99999,
                "{case}: a good image changed"
            );
        }
    }

    /// Sends `bad` while good requests run beside it, then checks everything the module doc
    /// lists. Returns the bad request's answer for further checks.
    pub async fn check(
        &self,
        case: &str,
        bad: reqwest::RequestBuilder,
        expect: Expect<'_>,
    ) -> Answer {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!("bad-input-{}", N.fetch_add(1, Ordering::SeqCst));
        let (_, hwm_before) = memory_kb();
        let (answer, ()) = tokio::join!(
            send(bad.header("x-request-id", &id)),
            self.goods_are_unharmed(case)
        );
        match expect {
            Expect::Error(status, kind) => {
                assert_eq!(answer.status, status, "{case}: {}", answer.body);
                assert_eq!(
                    answer.kind.as_deref(),
                    Some(kind),
                    "{case}: {}",
                    answer.body
                );
                let lines = log_lines_with(&id);
                assert!(
                    lines.iter().any(|l| l.contains(kind)),
                    "{case}: no log line names `{kind}` under request id {id}: {lines:#?}"
                );
            }
            Expect::Embeddings(n) => {
                assert_eq!(answer.status, 200, "{case}: {}", answer.body);
                assert_eq!(embeddings(&answer.body).len(), n, "{case}");
            }
        }
        self.still_serving(case, hwm_before).await;
        answer
    }

    /// After abuse: good requests succeed with their own answers, the server is healthy and
    /// ready, and peak memory grew by less than [`MAX_GROWTH_KB`] since `hwm_before`.
    pub async fn still_serving(&self, case: &str, hwm_before: u64) {
        self.goods_are_unharmed(case).await;
        for path in ["/health", "/ready"] {
            let r = self.client.get(self.server.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{case}: {path} after the bad request");
        }
        let (_, hwm_after) = memory_kb();
        let growth = hwm_after.saturating_sub(hwm_before);
        assert!(
            growth < MAX_GROWTH_KB,
            "{case}: peak memory grew by {growth} KiB (bound {MAX_GROWTH_KB} KiB)"
        );
    }
}
