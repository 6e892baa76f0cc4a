//! What types alone cannot check: non-zero sizes, parseable addresses, consistent buckets,
//! a log filter that means something.

use std::net::SocketAddr;

use tracing_subscriber::filter::{Directive, LevelFilter};

use super::{ConfigError, Settings};

/// What a log filter may be, for error messages.
const LOG_FILTER_ACCEPTS: &str = "expected a level (trace, debug, info, warn, error or off) or \
comma-separated target=level directives, such as clipserve=debug,tower_http=info";

/// Checks a tracing filter (`log.level`, `RUST_LOG`). Stricter than `tracing_subscriber`,
/// which reads a bare word it does not know as a target (`loud` would log only the target
/// `loud`, that is nothing): a directive without `=` must be a level.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err(format!("is empty; {LOG_FILTER_ACCEPTS}"));
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = if directive.contains('=') || directive.contains('[') {
            directive.parse::<Directive>().is_ok()
        } else {
            directive.parse::<LevelFilter>().is_ok()
        };
        if !ok {
            return Err(format!(
                "`{directive}` is not a level or directive; {LOG_FILTER_ACCEPTS}"
            ));
        }
    }
    Ok(())
}

impl Settings {
    /// Checks what types alone cannot: non-zero sizes, parseable addresses, consistent
    /// buckets, the log filter. The error names the setting and its value (`***` for a secret).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problem() {
            None => Ok(()),
            Some((key, message)) => Err(ConfigError::Invalid {
                key: key.to_string(),
                place: format!("{key} = {}", self.shown_value(key)),
                message,
            }),
        }
    }

    /// The value of `section.key` as TOML text (`***` for a secret, `unset` when absent).
    pub(crate) fn shown_value(&self, key: &str) -> String {
        if key == "server.api_key" && self.server.api_key.as_deref() == Some("") {
            return "\"\"".into();
        }
        let (section, field) = key.split_once('.').unwrap_or((key, ""));
        toml::Table::try_from(self)
            .ok()
            .and_then(|t| t.get(section)?.get(field).map(ToString::to_string))
            .unwrap_or_else(|| "unset".into())
    }

    /// The first setting that makes no sense, and why.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.server.addr.parse::<SocketAddr>().is_err() && !self.server.addr.contains(':') {
            return Some((
                "server.addr",
                "expected host:port, such as 127.0.0.1:8080".into(),
            ));
        }
        if self.model.source.trim().is_empty() {
            return Some((
                "model.source",
                "is empty: name a model folder or a hub repository id".into(),
            ));
        }
        let positive: [(&'static str, u64); 15] = [
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
            ("limits.max_text_chars", self.limits.max_text_chars as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Some((key, "must be at least 1".into()));
            }
        }
        let min_cosine = self.model.precision_min_cosine;
        if !(0.0..=1.0).contains(&min_cosine) {
            return Some((
                "model.precision_min_cosine",
                "expected a cosine between 0 and 1, such as 0.9999".into(),
            ));
        }
        if self.batching.max_batch_tokens < 77 {
            return Some((
                "batching.max_batch_tokens",
                "must hold at least one full-length text (77 tokens)".into(),
            ));
        }
        let buckets: [(&'static str, &Vec<usize>, &str, usize); 3] = [
            (
                "model.image_batch_buckets",
                &self.model.image_batch_buckets,
                "batching.max_image_batch",
                self.batching.max_image_batch,
            ),
            (
                "model.text_batch_buckets",
                &self.model.text_batch_buckets,
                "batching.max_text_batch",
                self.batching.max_text_batch,
            ),
            (
                "model.text_seq_buckets",
                &self.model.text_seq_buckets,
                "the longest sequence",
                4096,
            ),
        ];
        for (key, list, limit, max) in buckets {
            if list.contains(&0) || list.windows(2).any(|w| w[0] >= w[1]) {
                return Some((key, "expected increasing sizes of at least 1".into()));
            }
            if list.iter().any(|&b| b > max) {
                return Some((key, format!("has a size above {limit} ({max})")));
            }
        }
        if self.server.api_key.as_deref() == Some("") {
            return Some((
                "server.api_key",
                "is empty: leave it unset to disable authentication".into(),
            ));
        }
        if let Err(message) = check_log_filter(&self.log.level) {
            return Some(("log.level", message));
        }
        if let Err(message) = self.immich.validate() {
            return Some(("immich.upstream_url", message));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_directives_are_log_filters() {
        for ok in [
            "info",
            "WARN",
            "off",
            "clipserve=debug,tower_http=info",
            "warn,clipserve=trace",
            "clipserve[request]=debug",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn a_bare_word_that_is_no_level_is_refused_with_what_is_accepted() {
        let e = check_log_filter("loud").unwrap_err();
        assert!(e.starts_with("`loud` is not a level"), "{e}");
        assert!(e.contains("trace, debug, info, warn, error or off"), "{e}");
        let e = check_log_filter("info,clipserve=chatty").unwrap_err();
        assert!(e.contains("`clipserve=chatty`"), "{e}");
        assert!(check_log_filter(" ").is_err());
    }

    #[test]
    fn validation_names_the_setting_and_its_value() {
        let mut s = Settings::default();
        s.log.level = "loud".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("log.level = \"loud\": `loud` is not a level"),
            "{e}"
        );
        let mut s = Settings::default();
        s.model.image_batch_buckets = vec![4, 2];
        let e = s.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "model.image_batch_buckets = [4, 2]: expected increasing sizes of at least 1"
        );
    }

    #[test]
    fn an_empty_api_key_is_refused_and_a_set_one_never_shown() {
        let mut s = Settings::default();
        s.server.api_key = Some("".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.starts_with("server.api_key = \"\": is empty"), "{e}");
        s.server.api_key = Some("hunter2".into());
        assert_eq!(s.shown_value("server.api_key"), "\"***\"");
    }
}
