//! A string that must never be printed: the API key, the hub token.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize, Serializer};

/// A secret string. Its `Debug` and `Serialize` write [`Secret::REDACTED`], so printing the
/// settings (`clipserve config`, a `?settings` in a log line) never shows it, and it has no
/// `Display`, so `format!("{secret}")` does not compile. Read it with [`Secret::expose`] where
/// it is actually sent or compared (`Deref` to `str` keeps `Option::as_deref` working there).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// What is printed instead of a secret.
    pub const REDACTED: &'static str = "***";

    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", Secret::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Secret::REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize)]
    struct Holder {
        key: Option<Secret>,
    }

    #[test]
    fn debug_and_serialization_never_show_the_secret() {
        let holder = Holder {
            key: Some("hunter2".into()),
        };
        let debug = format!("{holder:?}");
        let toml = toml::to_string(&holder).unwrap();
        let json = serde_json::to_string(&holder).unwrap();
        for shown in [&debug, &toml, &json] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        assert_eq!(toml.trim(), r#"key = "***""#);
    }

    #[test]
    fn the_secret_is_read_back_as_written() {
        let secret: Secret = toml::from_str::<toml::Table>(r#"k = "12345""#).unwrap()["k"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(secret.expose(), "12345");
        assert_eq!(Some(secret).as_deref(), Some("12345"));
    }
}
