//! Logs and metrics.
//!
//! Logs go through `tracing` (human-readable text or one JSON object per line). Metrics live in
//! a [`Metrics`] registry owned by the app (no process-global recorder, so several servers can
//! run in one test process) and are rendered in the Prometheus text format at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::batcher::BatchObserver;
use crate::config::{LogFormat, LogSettings};
use crate::engine::Arithmetic;

/// Installs the global tracing subscriber, writing to stdout (the server's log). A non-empty
/// `RUST_LOG` wins over `settings.level`; both were checked by
/// [`crate::config::check_log_filter`] when the settings loaded, so the `info` fallback is only
/// for callers that skipped that. Calling it twice is harmless (the second call keeps the first
/// subscriber).
pub fn init_tracing(settings: &LogSettings) {
    install_tracing(settings, false);
}

/// [`init_tracing`] writing to stderr: for commands whose stdout is their result
/// (`clipserve embed`).
pub fn init_tracing_stderr(settings: &LogSettings) {
    install_tracing(settings, true);
}

fn install_tracing(settings: &LogSettings, stderr: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter_text = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| settings.level.clone());
    let filter = match crate::config::check_log_filter(&filter_text) {
        Ok(()) => EnvFilter::try_new(&filter_text).unwrap_or_else(|_| EnvFilter::new("info")),
        Err(_) => EnvFilter::new("info"),
    };
    let (writer, terminal) = if stderr {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::IsTerminal::is_terminal(&std::io::stdout()),
        )
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match settings.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(writer),
            )
            .try_init(),
        // Colour codes only for a terminal; piped or collected logs stay plain text.
        LogFormat::Text => registry
            .with(fmt::layer().with_ansi(terminal).with_writer(writer))
            .try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TowerLabels {
    tower: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    tower: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn batch_size_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
}

fn tokens_histogram() -> Histogram {
    Histogram::new(exponential_buckets(16.0, 2.0, 10))
}

/// The service's metrics; cheap to clone (every family is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    queue_depth: Family<TowerLabels, Gauge>,
    queue_rejections: Family<TowerLabels, Counter>,
    batch_size: HistogramFamily<TowerLabels>,
    batch_tokens: Histogram,
    inference_duration: HistogramFamily<TowerLabels>,
    image_preparation: Histogram,
    batches: Family<OutcomeLabels, Counter>,
    items_embedded: Family<TowerLabels, Counter>,
    items_skipped: Family<TowerLabels, Counter>,
    text_cache: Family<CacheLabels, Counter>,
    ready: Gauge,
    /// `clipserve_tower_<arithmetic>`, one for each lossy arithmetic.
    lossy: Vec<(Arithmetic, Family<TowerLabels, Gauge>)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every series registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clipserve");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        let queue_depth = Family::<TowerLabels, Gauge>::default();
        let queue_rejections = Family::<TowerLabels, Counter>::default();
        let batch_size: HistogramFamily<TowerLabels> =
            Family::new_with_constructor(batch_size_histogram);
        let batch_tokens = tokens_histogram();
        let inference_duration: HistogramFamily<TowerLabels> =
            Family::new_with_constructor(latency_histogram);
        let image_preparation = latency_histogram();
        let batches = Family::<OutcomeLabels, Counter>::default();
        let items_embedded = Family::<TowerLabels, Counter>::default();
        let items_skipped = Family::<TowerLabels, Counter>::default();
        let text_cache = Family::<CacheLabels, Counter>::default();
        let ready = Gauge::default();
        let lossy = Arithmetic::LOSSY
            .into_iter()
            .map(|arithmetic| {
                let name = arithmetic.as_str();
                let gauge = Family::<TowerLabels, Gauge>::default();
                registry.register(
                    format!("tower_{name}"),
                    format!("1 when the tower's products by its weight matrices run in {name} (chosen at start-up: model.image_precision, text_precision), else 0"),
                    gauge.clone(),
                );
                (arithmetic, gauge)
            })
            .collect();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route, from first byte in to response headers out",
            http_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Items waiting in a tower's queue",
            queue_depth.clone(),
        );
        registry.register(
            "queue_rejections",
            "Requests refused with 503 because a tower's queue was full",
            queue_rejections.clone(),
        );
        registry.register(
            "batch_size",
            "Items per inference batch",
            batch_size.clone(),
        );
        registry.register(
            "batch_tokens",
            "Tokens per text batch, padding included (batch size x longest text)",
            batch_tokens.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Time one batch spends in the model",
            inference_duration.clone(),
        );
        registry.register(
            "image_preparation_duration_seconds",
            "Time to decode and preprocess one image, on the blocking pool (failed ones included)",
            image_preparation.clone(),
        );
        registry.register(
            "batches",
            "Inference batches by outcome (ok, failed)",
            batches.clone(),
        );
        registry.register(
            "items_embedded",
            "Images and texts embedded, by tower",
            items_embedded.clone(),
        );
        registry.register(
            "items_skipped",
            "Queued items dropped before inference because their caller had gone",
            items_skipped.clone(),
        );
        registry.register(
            "text_cache_lookups",
            "Texts looked up in the cache of recent text embeddings, by outcome (hit, miss)",
            text_cache.clone(),
        );
        registry.register(
            "ready",
            "1 when the models are loaded and warmed up and the server accepts work",
            ready.clone(),
        );
        // Every tower's counters and gauges exist from the start, at 0: a counter that first
        // appears at 1 hides that first increment from rate() and increase(), so the first
        // queue rejection or failed batch would never fire an alert.
        for tower in ["image", "text"] {
            let labels = TowerLabels { tower };
            let _ = queue_depth.get_or_create(&labels);
            let _ = queue_rejections.get_or_create(&labels);
            let _ = items_embedded.get_or_create(&labels);
            let _ = items_skipped.get_or_create(&labels);
            for outcome in ["ok", "failed"] {
                let _ = batches.get_or_create(&OutcomeLabels { tower, outcome });
            }
        }
        Metrics {
            registry: std::sync::Arc::new(registry),
            http_requests,
            http_duration,
            queue_depth,
            queue_rejections,
            batch_size,
            batch_tokens,
            inference_duration,
            image_preparation,
            batches,
            items_embedded,
            items_skipped,
            text_cache,
            ready,
            lossy,
        }
    }

    /// Records one finished HTTP request.
    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a request refused because a queue was full.
    pub fn queue_rejection(&self, tower: &'static str) {
        self.queue_rejections
            .get_or_create(&TowerLabels { tower })
            .inc();
    }

    /// Records text embedding cache lookups: `hits` answered from the cache, `misses` sent to
    /// the text tower.
    pub fn text_cache(&self, hits: usize, misses: usize) {
        for (outcome, n) in [("hit", hits), ("miss", misses)] {
            if n > 0 {
                self.text_cache
                    .get_or_create(&CacheLabels { outcome })
                    .inc_by(n as u64);
            }
        }
    }

    /// Sets the per-tower precision gauges from what the engine chose.
    pub fn set_precision(&self, report: &crate::engine::PrecisionReport) {
        for (tower, p) in [("image", report.image), ("text", report.text)] {
            let labels = TowerLabels { tower };
            for (arithmetic, gauge) in &self.lossy {
                gauge
                    .get_or_create(&labels)
                    .set(i64::from(p.active == *arithmetic));
            }
        }
    }

    /// One image decoded and preprocessed (or refused by the decoder) in `elapsed`.
    pub fn image_prepared(&self, elapsed: Duration) {
        self.image_preparation.observe(elapsed.as_secs_f64());
    }

    /// Sets the readiness gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl BatchObserver for Metrics {
    fn batch(&self, tower: &'static str, items: usize, cost: usize, elapsed: Duration, ok: bool) {
        let labels = TowerLabels { tower };
        self.batch_size.get_or_create(&labels).observe(items as f64);
        self.inference_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if tower == "text" {
            self.batch_tokens.observe(cost as f64);
        }
        let outcome = if ok { "ok" } else { "failed" };
        self.batches
            .get_or_create(&OutcomeLabels { tower, outcome })
            .inc();
        if ok {
            self.items_embedded
                .get_or_create(&labels)
                .inc_by(items as u64);
        }
    }

    fn skipped(&self, tower: &'static str, items: usize) {
        self.items_skipped
            .get_or_create(&TowerLabels { tower })
            .inc_by(items as u64);
    }

    fn depth(&self, tower: &'static str, depth: usize) {
        self.queue_depth
            .get_or_create(&TowerLabels { tower })
            .set(depth as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_name_every_series() {
        let m = Metrics::new();
        m.http_request("/v1/embed/text", "POST", 200, Duration::from_millis(3));
        m.batch("text", 4, 64, Duration::from_millis(5), true);
        m.depth("image", 2);
        m.image_prepared(Duration::from_millis(4));
        m.set_ready(true);
        let text = m.render();
        for series in [
            "clipserve_http_requests_total{route=\"/v1/embed/text\",method=\"POST\",status=\"200\"} 1",
            "clipserve_http_request_duration_seconds_bucket",
            "clipserve_queue_depth{tower=\"image\"} 2",
            "clipserve_batch_size_sum{tower=\"text\"} 4",
            "clipserve_batch_tokens_sum 64",
            "clipserve_image_preparation_duration_seconds_count 1",
            "clipserve_items_embedded_total{tower=\"text\"} 4",
            "clipserve_ready 1",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}
