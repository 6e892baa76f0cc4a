//! What can be wrong with the settings, always told under the name the user wrote: the
//! variable, the `--set` key or flag, or the file and line, with the value and what is
//! accepted. Secret values are never repeated.

use std::path::PathBuf;

use thiserror::Error;

use super::names;
use super::Secret;

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
    /// The config file is not valid TOML (the message quotes the file's own line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        message: String,
    },
    /// A variable, key or section that names no setting.
    #[error("{written} is not a setting{hint}")]
    Unknown {
        /// The name as written, with where (`CLIPSERVE_X`, `--set x.y`, `file, line 3: x.y`).
        written: String,
        /// "; did you mean ..." or what is accepted.
        hint: String,
    },
    /// Two variables set the same setting to different values.
    #[error("{first} and {second} both set {key}, to different values: set only one")]
    Conflict {
        /// One variable.
        first: String,
        /// The other.
        second: String,
        /// The setting.
        key: String,
    },
    /// A value that does not have the setting's type, or that makes no sense.
    #[error("{place}: {message}")]
    Invalid {
        /// Dotted key of the setting (or `RUST_LOG`).
        key: String,
        /// Where and what was written: `CLIPSERVE_X=abc`, `--set x.y=abc`,
        /// `file, line 3: x.y = "abc"`.
        place: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The merged settings have an unknown key or a value of the wrong type (each source is
    /// checked on its own first, so this means a bug in that checking).
    #[error("settings: {0}")]
    Shape(String),
}

/// Where one value came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Origin {
    /// The file, and the line of the key when it could be found.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: Option<usize>,
    },
    /// An environment variable.
    Env(String),
    /// `--set key=value`.
    Set,
    /// A flag that sets one setting (`--model`, `--addr`).
    Flag(&'static str),
}

impl Origin {
    /// `CLIPSERVE_X=abc`, `--set x.y=abc`, `--model abc`, `file, line 3: x.y = "abc"`; the
    /// value is `written` as the user wrote it (redacted for a secret key).
    pub fn place(&self, key: &str, written: &str) -> String {
        let value = shown(key, written);
        match self {
            Origin::File { path, line } => {
                let line = line.map(|l| format!(", line {l}")).unwrap_or_default();
                format!("{}{line}: {key} = {value}", path.display())
            }
            Origin::Env(name) if names::shortcut(name).is_some() => {
                format!("{name}={value} (setting {key})")
            }
            Origin::Env(name) => format!("{name}={value}"),
            Origin::Set => format!("--set {key}={value}"),
            Origin::Flag(flag) => format!("{flag} {value}"),
        }
    }

    /// The name alone, for messages that must not show the value.
    pub fn name(&self, key: &str) -> String {
        match self {
            Origin::File { path, line } => {
                let line = line.map(|l| format!(", line {l}")).unwrap_or_default();
                format!("{}{line}: {key}", path.display())
            }
            Origin::Env(name) => name.clone(),
            Origin::Set => format!("--set {key}"),
            Origin::Flag(flag) => flag.to_string(),
        }
    }
}

/// Keys whose values are secrets: shown as `***` in every message.
pub const SECRET_KEYS: [&str; 1] = ["server.api_key"];

/// `written`, or `***` for a non-empty secret (an empty one shows that it is empty).
pub fn shown(key: &str, written: &str) -> String {
    if SECRET_KEYS.contains(&key) && !matches!(written, "" | "\"\"") {
        Secret::REDACTED.to_string()
    } else {
        written.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_name_what_the_user_wrote() {
        let env = Origin::Env("CLIPSERVE_BATCHING_MAX_IMAGE_BATCH".into());
        assert_eq!(
            env.place("batching.max_image_batch", "abc"),
            "CLIPSERVE_BATCHING_MAX_IMAGE_BATCH=abc"
        );
        assert_eq!(
            Origin::Set.place("log.level", "loud"),
            "--set log.level=loud"
        );
        assert_eq!(
            Origin::Flag("--model").place("model.source", "/m"),
            "--model /m"
        );
        let file = Origin::File {
            path: "c.toml".into(),
            line: Some(9),
        };
        assert_eq!(
            file.place("batching.max_image_batch", "\"abc\""),
            "c.toml, line 9: batching.max_image_batch = \"abc\""
        );
    }

    #[test]
    fn secret_values_are_never_placed() {
        let env = Origin::Env("CLIPSERVE_API_KEY".into());
        assert_eq!(
            env.place("server.api_key", "hunter2"),
            "CLIPSERVE_API_KEY=*** (setting server.api_key)"
        );
        assert_eq!(
            env.place("server.api_key", ""),
            "CLIPSERVE_API_KEY= (setting server.api_key)"
        );
        assert_eq!(
            Origin::Set.place("server.api_key", "hunter2"),
            "--set server.api_key=***"
        );
    }
}
