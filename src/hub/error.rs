//! Why a model could not be fetched from the hub: each error names the repository, the revision
//! or the file, so a failed start-up says what to fix.

use std::path::PathBuf;

use thiserror::Error;

/// A hub download that failed, or a cache that cannot serve the model.
#[derive(Debug, Error)]
pub enum HubError {
    /// The revision cannot name a cache folder safely (`..`, an absolute path, empty parts).
    #[error("revision `{revision}` is not a usable branch, tag or commit name")]
    InvalidRevision {
        /// The revision as configured.
        revision: String,
    },
    /// The hub endpoint is not an http(s) URL.
    #[error("hub endpoint `{endpoint}` is not an http:// or https:// URL")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
    },
    /// Offline, and the cache has no complete snapshot of the revision.
    #[error("`{repo}` at revision `{revision}` is not complete in the cache {} ({reason}), and hub downloads are off (model.offline or HF_HUB_OFFLINE)", cache.display())]
    Offline {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The repository's cache folder.
        cache: PathBuf,
        /// What the cache lacks.
        reason: String,
    },
    /// The hub refused the repository: it does not exist, or it is private or gated.
    #[error("repository `{repo}` was refused by {url} (HTTP {status}): it does not exist, or it is private or gated and {hint}")]
    RepoRefused {
        /// The repository id.
        repo: String,
        /// The URL that was refused.
        url: String,
        /// The HTTP status (401, 403 or 404).
        status: u16,
        /// What to do about the token.
        hint: &'static str,
    },
    /// The repository has no such branch, tag or commit.
    #[error("repository `{repo}` has no revision `{revision}` ({url} answered 404)")]
    RevisionNotFound {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The URL that answered 404.
        url: String,
    },
    /// A file the model folder needs is not in the repository.
    #[error("`{file}` is not in repository `{repo}` at revision `{revision}` ({url} answered 404); a model repository needs {}", super::REQUIRED_FILES.join(", "))]
    FileNotFound {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The file, relative to the repository root.
        file: String,
        /// The URL that answered 404.
        url: String,
    },
    /// The hub answered with a status that retrying will not change.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// An answer lacks a header the download relies on.
    #[error("{url}: the answer has no {header} header (is the endpoint a Hugging Face hub?)")]
    MissingHeader {
        /// The URL.
        url: String,
        /// The header's name.
        header: &'static str,
    },
    /// A request failed on the way (connection, timeout, body cut off).
    #[error("request to {url} failed")]
    Network {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The body ended before the announced size.
    #[error("{file}: the download stopped after {got} of {expected} bytes")]
    Truncated {
        /// The file, relative to the repository root.
        file: String,
        /// Bytes on disk.
        got: u64,
        /// Bytes the hub announced.
        expected: u64,
    },
    /// The downloaded bytes do not match the size or hash the hub announced.
    #[error("{file}: the downloaded content does not match the hub's {what}")]
    Integrity {
        /// The file, relative to the repository root.
        file: String,
        /// What did not match (`size 123`, `sha256 ab12…`).
        what: String,
    },
    /// Retries ran out; the last failure is the source.
    #[error("{file}: gave up after {attempts} attempts")]
    GaveUp {
        /// The file, relative to the repository root.
        file: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<HubError>,
    },
    /// A cache file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built (TLS roots, say).
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl HubError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Io { path, source }
    }
}
