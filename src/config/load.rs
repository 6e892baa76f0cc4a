//! Loading settings: defaults, then the TOML file, then `CLIPSERVE_*` environment variables,
//! then flags, merged as TOML tables and deserialized strictly; then validated.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

use super::Settings;

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
const SECTIONS: [&str; 6] = ["server", "model", "batching", "limits", "log", "immich"];

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
        let positive: [(&'static str, u64); 14] = [
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            ("server.body_timeout_ms", self.server.body_timeout_ms),
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
        self.immich
            .validate()
            .or_else(|message| invalid("immich.upstream_url", message))?;
        Ok(())
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
    use crate::config::LogFormat;

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
        let e = load(&[], &[("model.image_precision", "fp8")]).unwrap_err();
        assert!(e.to_string().contains("fp8"), "{e}");
    }

    #[test]
    fn bf16_image_products_are_chosen_by_name_from_a_file_or_the_environment() {
        let env = load(&[("CLIPSERVE_MODEL_IMAGE_PRECISION", "bf16")], &[]).unwrap();
        assert_eq!(env.model.image_precision, crate::engine::Precision::Bf16);
        let set = load(&[], &[("model.image_precision", "f32")]).unwrap();
        assert_eq!(set.model.image_precision, crate::engine::Precision::F32);
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
