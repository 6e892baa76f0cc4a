//! Talking to the hub: file metadata by `HEAD`, and downloads into `.incomplete` files that
//! resume with HTTP Range, are retried with backoff, logged as they progress, checked against
//! the announced size and hash, and only then renamed into the cache.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_RANGE, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::io::AsyncWriteExt;

use super::cache::{FileRecord, RepoCache};
use super::error::HubError;
use super::verify::verify;
use super::HubOptions;

/// How often a running download logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// First retry delay; each further retry doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Redirects followed per request (renamed repositories, then the storage backend).
const MAX_REDIRECTS: usize = 10;

/// A failed attempt: worth retrying, or final.
enum Failure {
    Retry(HubError, Option<Duration>),
    Fatal(HubError),
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Self {
        Failure::Fatal(e)
    }
}

/// A file as the hub describes it, at the commit the revision resolved to.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    /// `X-Repo-Commit`.
    pub commit: String,
    /// ETag and size.
    pub record: FileRecord,
}

/// An HTTP client for one repository on one hub.
pub(crate) struct Hub<'a> {
    client: reqwest::Client,
    endpoint: Url,
    options: &'a HubOptions,
}

impl<'a> Hub<'a> {
    /// A client for `options.repo` on `options.endpoint`.
    pub fn new(options: &'a HubOptions) -> Result<Hub<'a>, HubError> {
        let invalid = || HubError::InvalidEndpoint {
            endpoint: options.endpoint.clone(),
        };
        let endpoint = Url::parse(options.endpoint.trim_end_matches('/')).map_err(|_| invalid())?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(invalid());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("clipserve/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(HubError::Client)?;
        Ok(Hub {
            client,
            endpoint,
            options,
        })
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub fn url(&self, revision: &str, file: &str) -> String {
        let revision: String = revision
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).into(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let base = self.endpoint.as_str().trim_end_matches('/');
        format!("{base}/{}/resolve/{revision}/{file}", self.options.repo)
    }

    /// The commit, ETag and size of `file` at `revision`; `None` when the hub has no such file.
    pub async fn head(&self, revision: &str, file: &str) -> Result<Option<FileMeta>, HubError> {
        let url = &self.url(revision, file);
        self.retrying(file, || async move {
            let r = self.send(Method::HEAD, url, None, false).await?;
            if r.status().is_success() || r.status().is_redirection() {
                return Ok(Some(self.meta(&r)?));
            }
            match self.refusal(r, file) {
                Failure::Fatal(HubError::FileNotFound { .. }) => Ok(None),
                other => Err(other),
            }
        })
        .await
    }

    fn meta(&self, r: &Response) -> Result<FileMeta, HubError> {
        let h = r.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let missing = |header| HubError::MissingHeader {
            url: r.url().to_string(),
            header,
        };
        let commit = text("x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?;
        let etag = text("x-linked-etag")
            .or_else(|| text("etag"))
            .ok_or_else(|| missing("ETag"))?;
        let size = text("x-linked-size")
            .or_else(|| text("content-length"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| missing("Content-Length"))?;
        let etag = etag.trim_start_matches("W/").trim_matches('"').to_string();
        if etag.is_empty() || !etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(missing("usable ETag"));
        }
        Ok(FileMeta {
            commit: commit.to_string(),
            record: FileRecord { etag, size },
        })
    }

    /// Downloads `file` at `commit` into its blob, unless the blob is already there.
    pub async fn download(
        &self,
        cache: &RepoCache,
        commit: &str,
        file: &str,
        record: &FileRecord,
    ) -> Result<(), HubError> {
        let _lock = super::lock::exclusive(&cache.lock_file(&record.etag), file).await?;
        if cache.has_blob(record) {
            return Ok(()); // another process finished it while we waited
        }
        let url = &self.url(commit, file);
        let part = &cache.incomplete(&record.etag);
        let blobs = part.parent().expect("a blob has a folder");
        tokio::fs::create_dir_all(blobs)
            .await
            .map_err(HubError::io(blobs))?;
        self.retrying(file, || async move {
            self.fetch_into(url, part, file, record.size).await?;
            let checked = part.clone();
            let (name, expected) = (file.to_string(), record.clone());
            let verdict = tokio::task::spawn_blocking(move || verify(&checked, &name, &expected))
                .await
                .expect("the hashing task does not panic");
            if let Err(e) = verdict {
                let _ = tokio::fs::remove_file(part).await;
                return Err(Failure::Retry(e, None));
            }
            Ok(())
        })
        .await?;
        let blob = cache.blob(&record.etag);
        tokio::fs::rename(part, &blob)
            .await
            .map_err(HubError::io(&blob))
    }

    /// One attempt: appends to `part` from where it ends (Range), or rewrites it.
    async fn fetch_into(
        &self,
        url: &str,
        part: &Path,
        file: &str,
        size: u64,
    ) -> Result<(), Failure> {
        let mut have = tokio::fs::metadata(part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if have > size {
            tokio::fs::remove_file(part)
                .await
                .map_err(HubError::io(part))?;
            have = 0;
        }
        if have == size {
            return Ok(());
        }
        let r = self.send(Method::GET, url, Some(have), true).await?;
        let resumed = match r.status() {
            StatusCode::PARTIAL_CONTENT if content_range_start(r.headers()) == Some(have) => true,
            StatusCode::OK => false,
            StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                let _ = tokio::fs::remove_file(part).await;
                let e = HubError::Status {
                    url: url.into(),
                    status: r.status().as_u16(),
                };
                return Err(Failure::Retry(e, None));
            }
            _ => return Err(self.refusal(r, file)),
        };
        if have > 0 {
            tracing::info!(
                file,
                from = have,
                resumed,
                "continuing an interrupted download"
            );
        }
        let start = if resumed { have } else { 0 };
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(part)
            .await
            .map_err(HubError::io(part))?;
        let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, &mut out);
        let mut progress = Progress::new(file, start, size);
        let mut body = r.bytes_stream();
        let streamed = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    writer.write_all(&chunk).await.map_err(HubError::io(part))?;
                    progress.advance(chunk.len() as u64);
                }
                Some(Err(source)) => {
                    break Err(HubError::Network {
                        url: url.into(),
                        source,
                    })
                }
                None => break Ok(()),
            }
        };
        // What was received stays on disk, so the next attempt resumes after it.
        writer.flush().await.map_err(HubError::io(part))?;
        out.sync_all().await.map_err(HubError::io(part))?;
        streamed.map_err(|e| Failure::Retry(e, None))?;
        match progress.done {
            got if got < size => Err(Failure::Retry(
                HubError::Truncated {
                    file: file.into(),
                    got,
                    expected: size,
                },
                None,
            )),
            _ => {
                progress.finish();
                Ok(())
            }
        }
    }

    /// Sends a request, following relative redirects (renamed repositories) always and
    /// absolute ones (the storage backend) when `follow_absolute`. The token only goes to the
    /// endpoint's own origin.
    async fn send(
        &self,
        method: Method,
        url: &str,
        from: Option<u64>,
        follow_absolute: bool,
    ) -> Result<Response, Failure> {
        let mut url = Url::parse(url).map_err(|_| HubError::InvalidEndpoint {
            endpoint: url.into(),
        })?;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.client.request(method.clone(), url.clone());
            if let (Some(token), true) = (&self.options.token, same_origin(&url, &self.endpoint)) {
                // bearer_auth marks the header sensitive, so no debug output shows it.
                request = request.bearer_auth(token.expose());
            }
            if let Some(from) = from.filter(|&f| f > 0) {
                request = request.header(RANGE, format!("bytes={from}-"));
            }
            let r = request.send().await.map_err(|source| {
                Failure::Retry(
                    HubError::Network {
                        url: url.to_string(),
                        source,
                    },
                    None,
                )
            })?;
            let location = r.headers().get(LOCATION).and_then(|l| l.to_str().ok());
            let relative = location.is_some_and(|l| !l.contains("://"));
            match (r.status().is_redirection(), location) {
                (true, Some(l)) if relative || follow_absolute => {
                    url = r.url().join(l).map_err(|_| HubError::Status {
                        url: r.url().to_string(),
                        status: r.status().as_u16(),
                    })?;
                }
                _ => return Ok(r),
            }
        }
        Err(Failure::Fatal(HubError::Status {
            url: url.to_string(),
            status: 310,
        }))
    }

    /// Maps an unsuccessful answer to an error naming the repository, revision or file.
    fn refusal(&self, r: Response, file: &str) -> Failure {
        let status = r.status();
        let url = r.url().to_string();
        let code = r
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok());
        let repo = self.options.repo.to_string();
        let revision = self.options.revision.clone();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs);
        match (status.as_u16(), code) {
            (401 | 403, _) | (404, Some("RepoNotFound")) => Failure::Fatal(HubError::RepoRefused {
                repo,
                url,
                status: status.as_u16(),
                hint: if self.options.token.is_some() {
                    "the token (HF_TOKEN) does not give access to it"
                } else {
                    "needs a token: set HF_TOKEN"
                },
            }),
            (404, Some("RevisionNotFound")) => Failure::Fatal(HubError::RevisionNotFound {
                repo,
                revision,
                url,
            }),
            (404, _) => Failure::Fatal(HubError::FileNotFound {
                repo,
                revision,
                file: file.into(),
                url,
            }),
            (408 | 429 | 500..=599, _) => Failure::Retry(
                HubError::Status {
                    url,
                    status: status.as_u16(),
                },
                retry_after,
            ),
            (s, _) => Failure::Fatal(HubError::Status { url, status: s }),
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retries run out.
    async fn retrying<T, F, Fut>(&self, file: &str, mut attempt: F) -> Result<T, HubError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let attempts = self.options.retries + 1;
        for n in 1..=attempts {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e, _)) if n == attempts => {
                    return Err(HubError::GaveUp {
                        file: file.into(),
                        attempts,
                        last: Box::new(e),
                    })
                }
                Err(Failure::Retry(e, hint)) => {
                    let delay = backoff(n).max(hint.unwrap_or_default().min(MAX_BACKOFF));
                    let error = crate::hub::chain(&e);
                    tracing::warn!(file, attempt = n, of = attempts, ?delay, %error, "hub request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Exponential backoff with up to 25% jitter, so replicas that failed together spread out.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << attempt.min(16).saturating_sub(1))
        .min(MAX_BACKOFF);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The first byte of a `Content-Range: bytes <start>-<end>/<size>` answer.
fn content_range_start(h: &HeaderMap) -> Option<u64> {
    let v = h.get(CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Logs a download's progress every few seconds, and once at the end.
struct Progress<'a> {
    file: &'a str,
    total: u64,
    start: u64,
    done: u64,
    began: Instant,
    logged: Instant,
}

impl<'a> Progress<'a> {
    fn new(file: &'a str, start: u64, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            file,
            total,
            start,
            done: start,
            began: now,
            logged: now,
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if self.logged.elapsed() >= PROGRESS_EVERY {
            self.logged = Instant::now();
            tracing::info!(
                file = self.file,
                mb = self.done / 1_000_000,
                of_mb = self.total / 1_000_000,
                percent = self.done * 100 / self.total.max(1),
                mb_per_s = self.rate(),
                "downloading"
            );
        }
    }

    fn rate(&self) -> u64 {
        let secs = self.began.elapsed().as_secs_f64().max(1e-3);
        ((self.done - self.start) as f64 / secs / 1e6) as u64
    }

    fn finish(&self) {
        tracing::info!(
            file = self.file,
            bytes = self.done,
            secs = self.began.elapsed().as_secs(),
            mb_per_s = self.rate(),
            "downloaded"
        );
    }
}
