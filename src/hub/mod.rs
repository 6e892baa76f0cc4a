//! Model download from a Hugging Face hub: a repository id (`owner/name`) becomes a complete
//! local model folder, downloaded once into the shared Hugging Face cache and reused offline.
//!
//! The cache layout is `huggingface_hub`'s, so Python tools and clipserve share downloads:
//!
//! ```text
//! <cache>/models--owner--name/blobs/<etag>               contents, named by ETag (sha256 or git sha1)
//! <cache>/models--owner--name/blobs/<etag>.incomplete    a download in progress, resumed by Range
//! <cache>/models--owner--name/refs/<revision>            the commit a branch or tag resolved to
//! <cache>/models--owner--name/snapshots/<commit>/<file>  links to the blobs: the model folder
//! <cache>/models--owner--name/.no_exist/<commit>/<file>  optional files the hub does not have
//! <cache>/.locks/models--owner--name/<etag>.lock         one downloader per blob across processes
//! ```
//!
//! plus `models--owner--name/.clipserve/<commit>.json`, the size of each file of a snapshot
//! clipserve completed, so a later start can check the snapshot without the network.
//!
//! [`fetch_model`] looks at the cache first: a complete snapshot is used without contacting
//! the hub. Otherwise (unless offline) it asks the hub for each file's commit, ETag and size by
//! `HEAD`, pinning every file to the commit the first answer names, downloads what the cache
//! lacks ([`download`]), links the snapshot, and writes the ref last.

mod cache;
mod download;
mod error;
mod lock;
mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use error::HubError;

use tracing::Instrument;

use crate::config::{Secret, Settings};
use cache::RepoCache;
use download::Hub;

/// The hub used when neither `model.hub_endpoint` nor `HF_ENDPOINT` names another.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files a model repository must have (the model folder contract, see `engine::folder`).
pub const REQUIRED_FILES: [&str; 7] = [
    "config.json",
    "visual/model.onnx",
    "visual/preprocess_cfg.json",
    "textual/model.onnx",
    "textual/tokenizer.json",
    "textual/tokenizer_config.json",
    "textual/special_tokens_map.json",
];

/// ONNX external-data files, fetched when the repository has them (graphs over 2 GB keep
/// their weights beside the graph under one of these names).
pub const OPTIONAL_FILES: [&str; 4] = [
    "visual/model.onnx_data",
    "visual/model.onnx.data",
    "textual/model.onnx_data",
    "textual/model.onnx.data",
];

/// A Hugging Face model repository id, `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoId {
    owner: String,
    name: String,
}

impl RepoId {
    /// Reads `owner/name` with the hub's rules (letters, digits, `-`, `_`, `.`; no `--` or
    /// `..`; at most 96 characters); anything else is not a repository id.
    pub fn parse(s: &str) -> Option<RepoId> {
        let (owner, name) = s.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !p.contains("--")
                && !p.contains("..")
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        (s.len() <= 96 && part_ok(owner) && part_ok(name)).then(|| RepoId {
            owner: owner.into(),
            name: name.into(),
        })
    }

    /// The repository's folder name in the cache: `models--owner--name`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}--{}", self.owner, self.name)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Everything a download needs, resolved from settings and the Hugging Face variables.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The repository.
    pub repo: RepoId,
    /// Branch, tag or commit.
    pub revision: String,
    /// The hub cache folder (`<cache>/models--owner--name` lives in it).
    pub cache_dir: PathBuf,
    /// Base URL of the hub.
    pub endpoint: String,
    /// Bearer token for private or gated repositories; `Debug` prints it as `***`.
    pub token: Option<Secret>,
    /// Never contact the hub; serve only a complete cached snapshot.
    pub offline: bool,
    /// Retries of one failed request or interrupted download before giving up.
    pub retries: u32,
}

impl HubOptions {
    /// Options for `repo` from `settings`, falling back to `HF_ENDPOINT`, `HF_HUB_OFFLINE` and
    /// `HF_TOKEN` (else the token file `huggingface-cli login` writes) where settings are empty.
    pub fn from_settings(settings: &Settings, repo: RepoId) -> HubOptions {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let model = &settings.model;
        let endpoint = match model.hub_endpoint.as_str() {
            "" => env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
            set => set.into(),
        };
        let env_offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "on" | "yes" | "true"
            )
        });
        let token = env("HF_TOKEN")
            .or_else(|| {
                let file = env("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| {
                    let home = env("HOME").unwrap_or_else(|| "/tmp".into());
                    env("HF_HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| Path::new(&home).join(".cache/huggingface"))
                        .join("token")
                });
                std::fs::read_to_string(file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            })
            .map(Secret::from);
        HubOptions {
            repo,
            revision: model.revision.clone(),
            cache_dir: settings.cache_dir(),
            endpoint,
            token,
            offline: model.offline || env_offline,
            retries: model.download_retries,
        }
    }
}

/// The local model folder of `options.repo` at `options.revision`: the cached snapshot when it
/// is complete (no network), else downloaded from the hub (unless offline).
pub async fn fetch_model(options: &HubOptions) -> Result<PathBuf, HubError> {
    let span = tracing::info_span!("hub", repo = %options.repo, revision = %options.revision);
    fetch(options).instrument(span).await
}

async fn fetch(options: &HubOptions) -> Result<PathBuf, HubError> {
    let revision = &options.revision;
    if revision.is_empty()
        || revision.starts_with('/')
        || revision.contains('\\')
        || revision
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(HubError::InvalidRevision {
            revision: revision.clone(),
        });
    }
    let cache = RepoCache::new(&options.cache_dir, &options.repo);
    let reason = match cache.complete_snapshot(revision, &REQUIRED_FILES) {
        Ok(dir) => {
            cache.harden_links(&dir, &OPTIONAL_FILES)?;
            tracing::info!(folder = %dir.display(), "using the cached model");
            return Ok(dir);
        }
        Err(reason) => reason,
    };
    if options.offline {
        return Err(HubError::Offline {
            repo: options.repo.to_string(),
            revision: revision.clone(),
            cache: cache.root.clone(),
            reason,
        });
    }
    tracing::info!(endpoint = %options.endpoint, cache = %cache.root.display(), %reason, "fetching the model from the hub");
    download_snapshot(options, &cache).await
}

/// Asks the hub for every file, downloads what the cache lacks, links the snapshot.
async fn download_snapshot(options: &HubOptions, cache: &RepoCache) -> Result<PathBuf, HubError> {
    let hub = Hub::new(options)?;
    let mut commit = options.revision.clone();
    let mut files = BTreeMap::new();
    let mut absent = Vec::new();
    for (i, file) in REQUIRED_FILES.iter().chain(&OPTIONAL_FILES).enumerate() {
        // Every file after the first is asked for at the commit the first one named, so a
        // push to the branch during the download cannot mix two versions.
        match hub.head(&commit, file).await? {
            Some(meta) => {
                if i == 0 {
                    commit = meta.commit;
                }
                files.insert(file.to_string(), meta.record);
            }
            None if i < REQUIRED_FILES.len() => {
                return Err(HubError::FileNotFound {
                    repo: options.repo.to_string(),
                    revision: options.revision.clone(),
                    file: file.to_string(),
                    url: hub.url(&commit, file),
                })
            }
            None => absent.push(file.to_string()),
        }
    }
    if !cache::is_commit(&commit) {
        return Err(HubError::MissingHeader {
            url: hub.url(&options.revision, REQUIRED_FILES[0]),
            header: "X-Repo-Commit (a commit hash)",
        });
    }
    let missing: u64 = files
        .values()
        .filter(|r| !cache.has_blob(r))
        .map(|r| r.size)
        .sum();
    tracing::info!(%commit, files = files.len(), mb_to_download = missing / 1_000_000, "model files found on the hub");
    for (file, record) in &files {
        if !cache.has_blob(record) {
            hub.download(cache, &commit, file, record).await?;
        }
        let external_data = OPTIONAL_FILES.contains(&file.as_str());
        cache.link(&commit, file, &record.etag, external_data)?;
    }
    cache.finish(&commit, &files, &absent)?;
    cache.write_ref(&options.revision, &commit)?;
    let dir = cache.snapshot(&commit);
    tracing::info!(folder = %dir.display(), "model downloaded");
    Ok(dir)
}

/// An error with its causes, `a: b: c`, for log lines.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_follow_the_hub_rules_and_name_their_cache_folder() {
        let id = RepoId::parse("immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k").unwrap();
        assert_eq!(
            id.cache_folder(),
            "models--immich-app--XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k"
        );
        for bad in [
            "gpt2",
            "/abs/path",
            "a/b/c",
            "a--b/c",
            "a/../b",
            "./x",
            "a/b.",
            "-a/b",
            "",
        ] {
            assert!(RepoId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_revision_that_could_leave_the_cache_folder_is_refused() {
        let options = HubOptions {
            repo: RepoId::parse("a/b").unwrap(),
            revision: "../../etc".into(),
            cache_dir: std::env::temp_dir(),
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            offline: true,
            retries: 0,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(fetch_model(&options)).unwrap_err();
        assert!(matches!(e, HubError::InvalidRevision { .. }), "{e}");
    }
}
