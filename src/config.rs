//! Typed settings, read once at start-up and validated before anything loads.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`config/default.toml` or
//! `--config`), environment variables `CLIPSERVE_<SECTION>_<KEY>` (for example
//! `CLIPSERVE_BATCHING_LINGER_MS=5`), then command-line flags (`--set section.key=value`, and the
//! shortcuts below). Two names are fixed because deployment scripts rely on them:
//! `--model` / `CLIPSERVE_MODEL` and `--addr` / `CLIPSERVE_ADDR`. Unknown keys are errors, so a
//! typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::preprocess::image::ExifPolicy;

/// Every setting of the service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Optional API key: when set, every route except health, readiness and metrics needs
    /// `Authorization: Bearer <key>`. Prefer `CLIPSERVE_SERVER_API_KEY` over the file.
    pub api_key: Option<String>,
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
    /// Threads each matrix product may use inside one inference run.
    pub intra_op_threads: usize,
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
    /// Images that may wait in the queue; beyond it requests get 503 with Retry-After.
    pub image_queue_capacity: usize,
    /// Texts that may wait in the queue; beyond it requests get 503 with Retry-After.
    pub text_queue_capacity: usize,
    /// Inference threads for the image tower.
    pub image_workers: usize,
    /// Inference threads for the text tower.
    pub text_workers: usize,
}

/// Request limits, enforced before anything is queued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// A tracing filter (`info`, `clipserve=debug,tower_http=info`); `RUST_LOG` overrides it.
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
            exif: ExifPolicy::Apply,
            image_batch_buckets: vec![1, 2, 4, 8, 16, 32],
            text_batch_buckets: vec![1, 2, 4, 8, 16, 32],
            text_seq_buckets: vec![8, 16, 32, 77],
            intra_op_threads: 1,
        }
    }
}

impl Default for BatchingSettings {
    fn default() -> Self {
        BatchingSettings {
            max_image_batch: 32,
            max_text_batch: 32,
            max_batch_tokens: 32 * 77,
            linger_ms: 2,
            image_queue_capacity: 256,
            text_queue_capacity: 2048,
            image_workers: 2,
            text_workers: 2,
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

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server: ServerSettings::default(),
            model: ModelSettings::default(),
            batching: BatchingSettings::default(),
            limits: LimitSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// Settings that could not be read or do not make sense.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        message: String,
    },
    /// An override (environment variable or `--set`) is malformed.
    #[error("{origin}: {message}")]
    Override {
        /// Where it came from (`CLIPSERVE_X` or `--set x`).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The merged settings have an unknown key or a value of the wrong type.
    #[error("settings: {0}")]
    Shape(String),
    /// The merged settings are well-formed but inconsistent.
    #[error("setting `{key}`: {message}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The sections, in order; environment names are `CLIPSERVE_<SECTION>_<KEY>`.
const SECTIONS: [&str; 5] = ["server", "model", "batching", "limits", "log"];

/// String settings that are absent by default (so the defaults table cannot tell their type).
const STRING_KEYS: [&str; 1] = ["server.api_key"];

/// Where settings come from, besides the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// A TOML file; missing is fine only when it is the implicit default path.
    pub file: Option<PathBuf>,
    /// Whether `file` was named explicitly (then it must exist).
    pub file_required: bool,
    /// `section.key=value` overrides from flags, applied last, in order.
    pub overrides: Vec<(String, String)>,
}

impl Settings {
    /// Builds settings from defaults, `sources.file`, the given environment (normally
    /// `std::env::vars()`), and `sources.overrides`, then validates them.
    pub fn load(
        sources: &Sources,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut merged = toml::Table::try_from(Settings::default())
            .map_err(|e| ConfigError::Shape(e.to_string()))?;
        if let Some(path) = &sources.file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let table: toml::Table =
                        text.parse()
                            .map_err(|e: toml::de::Error| ConfigError::Parse {
                                path: path.clone(),
                                message: e.to_string(),
                            })?;
                    merge(&mut merged, table);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sources.file_required => {}
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CLIPSERVE_"))
            .collect();
        env.sort();
        for (name, value) in env {
            let Some(key) = env_key(&name) else { continue };
            set(&mut merged, &key, &value).map_err(|message| ConfigError::Override {
                origin: name.clone(),
                message,
            })?;
        }
        for (key, value) in &sources.overrides {
            set(&mut merged, key, value).map_err(|message| ConfigError::Override {
                origin: format!("--set {key}"),
                message,
            })?;
        }
        // Through text, so that a type error quotes the offending line (and so its key).
        let text = toml::to_string(&merged).map_err(|e| ConfigError::Shape(e.to_string()))?;
        let settings: Settings = toml::from_str(&text)
            .map_err(|e: toml::de::Error| ConfigError::Shape(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot: non-zero sizes, parseable addresses, consistent buckets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        if self.server.addr.parse::<SocketAddr>().is_err() && !self.server.addr.contains(':') {
            return invalid(
                "server.addr",
                format!("`{}` is not host:port", self.server.addr),
            );
        }
        if self.model.source.trim().is_empty() {
            return invalid(
                "model.source",
                "is empty: name a model folder or a hub repository id".into(),
            );
        }
        let positive: [(&'static str, u64); 12] = [
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("model.intra_op_threads", self.model.intra_op_threads as u64),
            (
                "batching.max_image_batch",
                self.batching.max_image_batch as u64,
            ),
            (
                "batching.max_text_batch",
                self.batching.max_text_batch as u64,
            ),
            (
                "batching.image_queue_capacity",
                self.batching.image_queue_capacity as u64,
            ),
            (
                "batching.text_queue_capacity",
                self.batching.text_queue_capacity as u64,
            ),
            ("batching.image_workers", self.batching.image_workers as u64),
            ("batching.text_workers", self.batching.text_workers as u64),
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            (
                "limits.max_images_per_request",
                self.limits.max_images_per_request as u64,
            ),
            (
                "limits.max_texts_per_request",
                self.limits.max_texts_per_request as u64,
            ),
            ("limits.max_image_pixels", self.limits.max_image_pixels),
        ];
        for (key, value) in positive {
            if value == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        if self.limits.max_text_chars == 0 {
            return invalid("limits.max_text_chars", "must be at least 1".into());
        }
        if self.batching.max_batch_tokens < 77 {
            return invalid(
                "batching.max_batch_tokens",
                "must hold at least one full-length text (77 tokens)".into(),
            );
        }
        let buckets: [(&'static str, &Vec<usize>, usize); 3] = [
            (
                "model.image_batch_buckets",
                &self.model.image_batch_buckets,
                self.batching.max_image_batch,
            ),
            (
                "model.text_batch_buckets",
                &self.model.text_batch_buckets,
                self.batching.max_text_batch,
            ),
            ("model.text_seq_buckets", &self.model.text_seq_buckets, 4096),
        ];
        for (key, list, max) in buckets {
            if list.contains(&0) || list.windows(2).any(|w| w[0] >= w[1]) {
                return invalid(
                    key,
                    format!("{list:?} must be increasing sizes of at least 1"),
                );
            }
            if list.iter().any(|&b| b > max) {
                return invalid(
                    key,
                    format!("{list:?} has a size above the batch limit {max}"),
                );
            }
        }
        if self.server.api_key.as_deref() == Some("") {
            return invalid(
                "server.api_key",
                "is empty: leave it unset to disable authentication".into(),
            );
        }
        Ok(())
    }

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

/// Maps `CLIPSERVE_BATCHING_LINGER_MS` to `batching.linger_ms`, and the two fixed shortcuts.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("CLIPSERVE_")?.to_ascii_lowercase();
    match rest.as_str() {
        "model" => return Some("model.source".into()),
        "addr" => return Some("server.addr".into()),
        _ => {}
    }
    let (section, key) = rest.split_once('_')?;
    SECTIONS
        .contains(&section)
        .then(|| format!("{section}.{key}"))
}

/// Sets `section.key` to `value`, read as a TOML value (number, bool, array) when it parses as
/// one and as a string otherwise.
fn set(table: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let (section, field) = key
        .split_once('.')
        .ok_or_else(|| format!("`{key}` is not section.key"))?;
    if !SECTIONS.contains(&section) {
        return Err(format!(
            "unknown section `{section}` (known: {})",
            SECTIONS.join(", ")
        ));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let section_table = entry
        .as_table_mut()
        .ok_or_else(|| format!("`{section}` is not a table"))?;
    // A string field given a bare number (an API key of digits, say) stays a string.
    let is_string_field = matches!(section_table.get(field), Some(toml::Value::String(_)))
        || STRING_KEYS.contains(&key);
    let parsed = if is_string_field && !parsed.is_str() {
        toml::Value::String(value.to_string())
    } else {
        parsed
    };
    section_table.insert(field.to_string(), parsed);
    Ok(())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], overrides: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let sources = Sources {
            file: None,
            file_required: false,
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Settings::load(
            &sources,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(load(&[], &[]).unwrap(), Settings::default());
    }

    #[test]
    fn environment_overrides_defaults_and_flags_override_environment() {
        let s = load(
            &[
                ("CLIPSERVE_MODEL", "/models/x"),
                ("CLIPSERVE_ADDR", "127.0.0.1:9000"),
                ("CLIPSERVE_BATCHING_LINGER_MS", "7"),
                ("CLIPSERVE_MODEL_TEXT_SEQ_BUCKETS", "[16, 77]"),
                ("CLIPSERVE_SERVER_API_KEY", "12345"),
                ("OTHER", "ignored"),
            ],
            &[("batching.linger_ms", "9")],
        )
        .unwrap();
        assert_eq!(s.model.source, "/models/x");
        assert_eq!(s.server.addr, "127.0.0.1:9000");
        assert_eq!(s.batching.linger_ms, 9);
        assert_eq!(s.model.text_seq_buckets, vec![16, 77]);
        assert_eq!(s.server.api_key.as_deref(), Some("12345"));
    }

    #[test]
    fn a_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("clipserve-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_text_chars = 10\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(path),
            file_required: true,
            overrides: vec![],
        };
        let s = Settings::load(&sources, std::iter::empty()).unwrap();
        assert_eq!(s.limits.max_text_chars, 10);
        assert_eq!(s.log.format, LogFormat::Json);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_name() {
        let e = load(&[("CLIPSERVE_BATCHING_LINGER", "1")], &[]).unwrap_err();
        assert!(e.to_string().contains("linger"), "{e}");
        let e = load(&[], &[("batching.max_text_batch", "0")]).unwrap_err();
        assert!(e.to_string().contains("batching.max_text_batch"), "{e}");
        let e = load(&[], &[("batching.linger_ms", "soon")]).unwrap_err();
        assert!(e.to_string().contains("linger_ms"), "{e}");
        let e = load(&[], &[("model.image_batch_buckets", "[4, 2]")]).unwrap_err();
        assert!(e.to_string().contains("image_batch_buckets"), "{e}");
        let e = load(&[], &[("nosuch.key", "1")]).unwrap_err();
        assert!(e.to_string().contains("unknown section"), "{e}");
        let e = load(&[], &[("log.format", "xml")]).unwrap_err();
        assert!(e.to_string().contains("xml"), "{e}");
    }

    #[test]
    fn the_shipped_default_file_equals_the_built_in_defaults() {
        let sources = Sources {
            file: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")),
            file_required: true,
            overrides: vec![],
        };
        assert_eq!(
            Settings::load(&sources, std::iter::empty()).unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn a_required_file_that_is_missing_is_an_error() {
        let sources = Sources {
            file: Some("/nonexistent/clipserve.toml".into()),
            file_required: true,
            overrides: vec![],
        };
        assert!(matches!(
            Settings::load(&sources, std::iter::empty()),
            Err(ConfigError::Read { .. })
        ));
    }
}
