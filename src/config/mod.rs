//! Typed settings, read once at start-up and validated before anything loads.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`config/default.toml` or
//! `--config`), environment variables `CLIPSERVE_<SECTION>_<KEY>` (for example
//! `CLIPSERVE_BATCHING_LINGER_MS=5`), then command-line flags (`--set section.key=value`, and the
//! shortcuts below). Three names are fixed because deployments rely on them:
//! `--model` / `CLIPSERVE_MODEL`, `--addr` / `CLIPSERVE_ADDR`, and `CLIPSERVE_API_KEY` (also read
//! by `clipserve embed --server`; `CLIPSERVE_SERVER_API_KEY` is accepted too).
//!
//! Configuration fails closed: an unknown key, section or `CLIPSERVE_*` variable (other than
//! those in [`names::OTHER_VARIABLES`]) is an error with its close matches, a value of the
//! wrong type or out of range is an error naming where it was written, and so is a log filter
//! that is no level. Secrets ([`Secret`]) print as `***`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::preprocess::image::ExifPolicy;

mod error;
mod load;
pub mod names;
mod secret;
mod validate;

pub use error::ConfigError;
pub use load::Sources;
pub use secret::Secret;
pub use validate::check_log_filter;

/// Every setting of the service.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Listening, timeouts, authentication, CORS.
    pub server: ServerSettings,
    /// Which model to serve and how to read its inputs.
    pub model: ModelSettings,
    /// Queues, batch formation and inference threads.
    pub batching: BatchingSettings,
    /// Request limits enforced at the edge.
    pub limits: LimitSettings,
    /// Logging.
    pub log: LogSettings,
    /// immich's machine-learning protocol (`/ping`, `/predict`).
    pub immich: ImmichSettings,
}

/// immich's machine-learning protocol: what `/predict` does with the tasks it does not serve.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImmichSettings {
    /// An immich-machine-learning instance (e.g. `http://immich-machine-learning:3003`) that
    /// `/predict` forwards the tasks clipserve does not serve (facial recognition, OCR) to, with
    /// the same image or text; its answers are merged into clipserve's. Empty: those tasks are
    /// refused with a 4xx that says to set this or to turn them off in immich.
    pub upstream_url: String,
}

impl ImmichSettings {
    /// Checks `upstream_url`: empty, or an `http(s)://` URL.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.upstream_url.trim();
        if url.is_empty() {
            return Ok(());
        }
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
            Ok(_) => Err(format!("`{url}` is not an http(s) URL")),
            Err(e) => Err(format!("`{url}` is not a URL: {e}")),
        }
    }
}

/// Listening, timeouts, authentication, CORS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// host:port to listen on (`--addr`, `CLIPSERVE_ADDR`).
    pub addr: String,
    /// Upper bound on a whole request, headers to last byte of the answer; slow clients and
    /// stuck work end with 408/503 instead of holding a connection forever.
    pub request_timeout_ms: u64,
    /// How long a client may take to send its request headers before the connection is cut
    /// (a client trickling headers cannot hold a connection forever).
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send its request body before it gets 408.
    pub body_timeout_ms: u64,
    /// Optional API key: when set, every route except health, readiness and metrics needs
    /// `Authorization: Bearer <key>`. Prefer the variable `CLIPSERVE_API_KEY` over the file.
    /// Printed as `***` (`clipserve config`, logs, errors).
    pub api_key: Option<Secret>,
    /// Origins allowed by CORS; empty means CORS headers are never sent. `["*"]` allows any.
    pub cors_origins: Vec<String>,
    /// On SIGTERM, how long to keep finishing accepted work before exiting anyway.
    pub shutdown_grace_ms: u64,
}

/// Which model to serve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// A model folder, or a Hugging Face repository id (`owner/name`) to download into the
    /// cache on first start (`--model`, `CLIPSERVE_MODEL`).
    pub source: String,
    /// Hub revision (branch, tag or commit) when `source` is a repository id.
    pub revision: String,
    /// Cache folder for downloads; empty means `$HF_HOME/hub` (default `~/.cache/huggingface/hub`).
    pub cache_dir: String,
    /// Hub to download from when `source` is a repository id: empty means `$HF_ENDPOINT`, else
    /// `https://huggingface.co` (a mirror, or a stand-in in tests, speaks the same protocol).
    pub hub_endpoint: String,
    /// Never contact the hub: a repository id is served only from a complete cached snapshot,
    /// for air-gapped hosts (also on when `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Retries of a failed hub request or interrupted download (with backoff, resuming where
    /// it stopped) before start-up gives up.
    pub download_retries: u32,
    /// Whether to rotate images by their EXIF orientation (`apply`, the default, so phone photos
    /// are not embedded sideways) or ignore it as OpenCLIP's reference does (`ignore`).
    pub exif: ExifPolicy,
    /// Batch sizes that get a shape-specialized image plan (tract picks faster kernels for
    /// concrete shapes). Empty: one plan with a symbolic batch size.
    pub image_batch_buckets: Vec<usize>,
    /// Batch sizes that get shape-specialized text plans (crossed with `text_seq_buckets`).
    pub text_batch_buckets: Vec<usize>,
    /// Sequence lengths that get shape-specialized text plans.
    pub text_seq_buckets: Vec<usize>,
    /// Threads each matrix product may use inside one inference run, for the runs of a tower
    /// whose own setting below is 0; with more than 1, all inference threads share one pool.
    pub intra_op_threads: usize,
    /// Threads an image run may use when no other image run is in flight (a run that starts
    /// beside another stays on its own thread); 0 means `intra_op_threads` (bench/RESULTS.md,
    /// optimisation log, "tower pools for lone runs").
    pub image_intra_op_threads: usize,
    /// The same for the text tower.
    pub text_intra_op_threads: usize,
    /// The image tower's products by its weight matrices: `auto` (the default: bf16 inputs
    /// with f32 sums where the CPU has AVX512-BF16 and the start-up check on the served weights
    /// passes, about 1.7x the images per second; else f32), `f32` (matches the PyTorch
    /// reference; no check) or `bf16` (bf16 wherever the CPU has it, whatever the check finds).
    pub image_precision: crate::engine::Precision,
    /// The same for the text tower's products by its weight matrices (the word-embedding
    /// table is not one: it stays as it is).
    pub text_precision: crate::engine::Precision,
    /// How close, as the lowest cosine over the calibration set compiled into the binary, a
    /// tower's bf16 embeddings must stay to its f32 ones at start-up for `auto` to keep bf16.
    pub precision_min_cosine: f64,
    /// Recent text embeddings kept in memory, keyed by token ids (about 2 KB each); a repeated
    /// query is answered without running the text tower. 0 disables the cache.
    pub text_cache_entries: usize,
}

/// Queues, batch formation and inference threads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingSettings {
    /// Most images in one inference batch.
    pub max_image_batch: usize,
    /// Most texts in one inference batch.
    pub max_text_batch: usize,
    /// Most tokens in one text batch, counted as batch size x longest text (padding included).
    pub max_batch_tokens: usize,
    /// How long a worker may wait for more items once it has one (like Triton's max queue
    /// delay): 0 runs whatever is queued at once.
    pub linger_ms: u64,
    /// An image worker lingers only while other images are being decoded (announced and not
    /// yet queued): a lone image runs at once. False: it lingers the full `linger_ms`.
    pub image_linger_while_decoding: bool,
    /// Once both towers have been idle this long after some work, the memory the allocator
    /// holds free goes back to the OS (glibc's `malloc_trim`); 0: never.
    pub idle_release_ms: u64,
    /// Images that may wait in the queue; beyond it requests get 503 with Retry-After.
    pub image_queue_capacity: usize,
    /// Texts that may wait in the queue; beyond it requests get 503 with Retry-After.
    pub text_queue_capacity: usize,
    /// Inference threads for the image tower.
    pub image_workers: usize,
    /// Inference threads for the text tower.
    pub text_workers: usize,
    /// After 3 failed batches in a row a tower reports not ready for this long (from its last
    /// failure), then takes traffic again so that a success can clear it.
    pub failure_cooldown_ms: u64,
}

/// Request limits, enforced before anything is queued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest request body, refused while streaming (413).
    pub max_body_bytes: usize,
    /// Most images in one request.
    pub max_images_per_request: usize,
    /// Most texts (or labels) in one request.
    pub max_texts_per_request: usize,
    /// Most pixels (width x height) an image may declare; checked from the header before
    /// decoding, so a decompression bomb never allocates.
    pub max_image_pixels: u64,
    /// Most characters in one text (Unicode scalar values).
    pub max_text_chars: usize,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A tracing filter: a level (`info`) or `target=level` directives
    /// (`clipserve=debug,tower_http=info`); `RUST_LOG` overrides it. A bare word that is not a
    /// level is refused at start-up (tracing would read it as a target and log nothing).
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The published ONNX export of this model, served when nothing else is configured.
pub const DEFAULT_MODEL: &str = "immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k";

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            addr: "0.0.0.0:8080".into(),
            request_timeout_ms: 30_000,
            header_read_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            api_key: None,
            cors_origins: Vec::new(),
            shutdown_grace_ms: 30_000,
        }
    }
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            source: DEFAULT_MODEL.into(),
            revision: "main".into(),
            cache_dir: String::new(),
            hub_endpoint: String::new(),
            offline: false,
            download_retries: 5,
            exif: ExifPolicy::Apply,
            image_batch_buckets: vec![1, 8],
            text_batch_buckets: Vec::new(),
            text_seq_buckets: vec![8, 16, 32, 77],
            intra_op_threads: 1,
            image_intra_op_threads: 2,
            text_intra_op_threads: 2,
            image_precision: crate::engine::Precision::Auto,
            text_precision: crate::engine::Precision::Auto,
            precision_min_cosine: crate::engine::DEFAULT_PRECISION_MIN_COSINE,
            text_cache_entries: 10_000,
        }
    }
}

impl Default for BatchingSettings {
    fn default() -> Self {
        BatchingSettings {
            max_image_batch: 8,
            max_text_batch: 32,
            max_batch_tokens: 32 * 77,
            linger_ms: 2,
            image_linger_while_decoding: true,
            idle_release_ms: 1000,
            image_queue_capacity: 256,
            text_queue_capacity: 2048,
            image_workers: 2,
            text_workers: 2,
            failure_cooldown_ms: 10_000,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_body_bytes: 32 * 1024 * 1024,
            max_images_per_request: 32,
            max_texts_per_request: 256,
            max_image_pixels: 50_000_000,
            max_text_chars: 4096,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Settings {
    /// The cache folder for hub downloads.
    pub fn cache_dir(&self) -> PathBuf {
        if !self.model.cache_dir.is_empty() {
            return PathBuf::from(&self.model.cache_dir);
        }
        if let Some(home) = std::env::var_os("HF_HOME") {
            return Path::new(&home).join("hub");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        Path::new(&home).join(".cache/huggingface/hub")
    }
}
