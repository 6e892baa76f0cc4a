//! `clipserve embed --server`: batches sent to a running clipserve over its public API
//! (`GET /info` for the model and limits, `POST /v1/embed/image` as multipart,
//! `POST /v1/embed/text` as JSON). An item the server refuses (`invalid_image`,
//! `image_too_large`, `text_too_long`, which name the item's `index`) is reported as skipped and
//! the rest of its batch is sent again; a full queue (503 / 429) is retried after its
//! `Retry-After`; anything else stops the run.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::{header, Client, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::items::{Item, Kind};
use super::{BulkError, Outcome};
use crate::config::Secret;

/// Room left in each request body for multipart framing and JSON quoting.
const BODY_MARGIN: usize = 64 * 1024;
/// How many times one request is retried while the server is busy or unreachable.
const MAX_RETRIES: u32 = 30;

#[derive(Debug, Clone, Deserialize)]
struct Info {
    model: String,
    dimensions: usize,
    limits: Limits,
}

#[derive(Debug, Clone, Deserialize)]
struct Limits {
    max_body_bytes: usize,
    max_images_per_request: usize,
    max_texts_per_request: usize,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: String,
    message: String,
    index: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct Embeddings {
    embeddings: Vec<Vec<f32>>,
}

/// A running server, its model and limits.
#[derive(Debug, Clone)]
pub struct RemoteBackend {
    client: Client,
    base: String,
    /// Printed as `***` by `Debug`.
    api_key: Option<Secret>,
    info: Info,
}

/// What one request came back with.
enum Reply {
    Embeddings(Vec<Vec<f32>>),
    /// The server refused one item of the request.
    Item {
        index: usize,
        reason: String,
    },
    /// The body was over the server's limit.
    TooLarge,
}

impl RemoteBackend {
    /// Reads the server's model and limits from `/info` (waiting while it is still loading).
    pub async fn connect(server: &str, api_key: Option<Secret>) -> Result<Self, BulkError> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(BulkError::Usage(format!(
                "--server {server}: expected a URL such as http://127.0.0.1:8080"
            )));
        }
        let client = Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| BulkError::Server(format!("cannot build an HTTP client: {e}")))?;
        let mut backend = RemoteBackend {
            client,
            base,
            api_key,
            info: Info {
                model: String::new(),
                dimensions: 0,
                limits: Limits {
                    max_body_bytes: 0,
                    max_images_per_request: 0,
                    max_texts_per_request: 0,
                },
            },
        };
        let info = backend.get("/info");
        let response = backend
            .send(|| info.try_clone())
            .await
            .map_err(Refused::into_error)?;
        backend.info = response.json().await.map_err(|e| {
            BulkError::Server(format!(
                "{}/info is not a clipserve answer: {e}",
                backend.base
            ))
        })?;
        Ok(backend)
    }

    /// The embedding width.
    pub fn dims(&self) -> usize {
        self.info.dimensions
    }

    /// The model the server runs.
    pub fn model(&self) -> &str {
        &self.info.model
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.auth(self.client.get(format!("{}{path}", self.base)))
    }

    fn auth(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key.expose()),
            None => request,
        }
    }

    /// Embeds one batch; one outcome per item, in order.
    pub async fn embed(&self, kind: Kind, items: Vec<Item>) -> Result<Vec<Outcome>, BulkError> {
        let mut outcomes: Vec<Outcome> = vec![Ok(Vec::new()); items.len()];
        let mut payloads: Vec<Bytes> = Vec::with_capacity(items.len());
        let budget = self.info.limits.max_body_bytes.saturating_sub(BODY_MARGIN);
        for (item, outcome) in items.iter().zip(outcomes.iter_mut()) {
            let bytes = match (&item.file, kind) {
                (Some(path), Kind::Images) => read(path).await,
                _ => Ok(Bytes::from(
                    serde_json::to_vec(&item.name).unwrap_or_default(),
                )),
            };
            let payload = match bytes {
                Ok(b) if b.len() > budget => {
                    *outcome = Err(format!(
                        "{} bytes, more than the server accepts in one request ({} bytes)",
                        b.len(),
                        self.info.limits.max_body_bytes
                    ));
                    Bytes::new()
                }
                Ok(b) => b,
                Err(reason) => {
                    *outcome = Err(reason);
                    Bytes::new()
                }
            };
            payloads.push(payload);
        }
        let max_count = match kind {
            Kind::Images => self.info.limits.max_images_per_request,
            Kind::Texts => self.info.limits.max_texts_per_request,
        };
        let ready: Vec<usize> = (0..items.len()).filter(|&i| outcomes[i].is_ok()).collect();
        let mut queue: VecDeque<Vec<usize>> = groups(&ready, &payloads, max_count.max(1), budget);
        while let Some(group) = queue.pop_front() {
            match self.request(kind, &items, &payloads, &group).await? {
                Reply::Embeddings(vectors) if vectors.len() == group.len() => {
                    for (&i, v) in group.iter().zip(vectors) {
                        outcomes[i] = Ok(v);
                    }
                }
                Reply::Embeddings(vectors) => {
                    return Err(BulkError::Server(format!(
                        "sent {} {}, got {} embeddings back",
                        group.len(),
                        kind.noun(),
                        vectors.len()
                    )))
                }
                Reply::Item { index, reason } => {
                    outcomes[group[index]] = Err(reason);
                    let rest: Vec<usize> =
                        group.into_iter().filter(|&i| outcomes[i].is_ok()).collect();
                    if !rest.is_empty() {
                        queue.push_front(rest);
                    }
                }
                Reply::TooLarge if group.len() > 1 => {
                    let (a, b) = group.split_at(group.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Reply::TooLarge => {
                    outcomes[group[0]] = Err(format!(
                        "more than the server accepts in one request ({} bytes)",
                        self.info.limits.max_body_bytes
                    ));
                }
            }
        }
        Ok(outcomes)
    }

    /// Sends one group of items (retrying while the server is busy) and classifies the answer.
    async fn request(
        &self,
        kind: Kind,
        items: &[Item],
        payloads: &[Bytes],
        group: &[usize],
    ) -> Result<Reply, BulkError> {
        let build = || match kind {
            Kind::Images => {
                let mut form = reqwest::multipart::Form::new();
                for &i in group {
                    let part = reqwest::multipart::Part::stream_with_length(
                        payloads[i].clone(),
                        payloads[i].len() as u64,
                    )
                    .file_name(items[i].name.clone());
                    form = form.part("image", part);
                }
                Some(
                    self.auth(self.client.post(format!("{}/v1/embed/image", self.base)))
                        .multipart(form),
                )
            }
            Kind::Texts => {
                let texts: Vec<&str> = group.iter().map(|&i| items[i].name.as_str()).collect();
                Some(
                    self.auth(self.client.post(format!("{}/v1/embed/text", self.base)))
                        .json(&serde_json::json!({ "texts": texts })),
                )
            }
        };
        match self.send(build).await {
            Ok(response) => {
                let body: Embeddings = response.json().await.map_err(|e| {
                    BulkError::Server(format!("unreadable answer from {}: {e}", self.base))
                })?;
                Ok(Reply::Embeddings(body.embeddings))
            }
            Err(Refused::Item { index, reason }) if index < group.len() => {
                let noun = &kind.noun()[..kind.noun().len() - 1];
                let reason = reason
                    .strip_prefix(&format!("{noun} {index}: "))
                    .or_else(|| reason.strip_prefix(&format!("{noun} {index} ")))
                    .unwrap_or(&reason)
                    .to_string();
                Ok(Reply::Item { index, reason })
            }
            Err(Refused::Item { reason, .. }) => Err(BulkError::Server(reason)),
            Err(Refused::TooLarge) => Ok(Reply::TooLarge),
            Err(Refused::Fatal(e)) => Err(e),
        }
    }

    /// Sends a request built by `build` until it is answered with something other than "busy".
    async fn send(&self, build: impl Fn() -> Option<RequestBuilder>) -> Result<Response, Refused> {
        let mut attempt = 0;
        loop {
            let request = build().ok_or_else(|| {
                Refused::Fatal(BulkError::Server("the request cannot be repeated".into()))
            })?;
            attempt += 1;
            let wait = match request.send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r)
                    if matches!(
                        r.status(),
                        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
                    ) =>
                {
                    let secs = r
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1);
                    if attempt > MAX_RETRIES {
                        return Err(refusal(r).await);
                    }
                    Duration::from_secs(secs.clamp(1, 30))
                }
                Ok(r) => return Err(refusal(r).await),
                Err(e) if attempt <= 5 && (e.is_connect() || e.is_timeout()) => {
                    Duration::from_secs(1 << attempt.min(4))
                }
                Err(e) => {
                    return Err(Refused::Fatal(BulkError::Server(format!(
                        "{}: {e}",
                        self.base
                    ))))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Why the server did not answer with embeddings.
enum Refused {
    Item { index: usize, reason: String },
    TooLarge,
    Fatal(BulkError),
}

impl Refused {
    /// The refusal as a run-stopping error, for requests that carry no items.
    fn into_error(self) -> BulkError {
        match self {
            Refused::Item { reason, .. } => BulkError::Server(reason),
            Refused::TooLarge => BulkError::Server("the request was too large".into()),
            Refused::Fatal(e) => e,
        }
    }
}

async fn refusal(response: Response) -> Refused {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<ErrorBody>(&text)
        .ok()
        .map(|b| b.error);
    match detail {
        Some(d) if is_item_error(&d.kind) && d.index.is_some() => Refused::Item {
            index: d.index.unwrap_or_default(),
            reason: d.message,
        },
        Some(d) if d.kind == "payload_too_large" => Refused::TooLarge,
        Some(d) if status == StatusCode::UNAUTHORIZED => {
            Refused::Fatal(BulkError::Server(format!(
                "{status}: {}; pass the server's key with --api-key (or CLIPSERVE_API_KEY)",
                d.message
            )))
        }
        Some(d) => Refused::Fatal(BulkError::Server(format!(
            "{status} {}: {}",
            d.kind, d.message
        ))),
        None if status == StatusCode::PAYLOAD_TOO_LARGE => Refused::TooLarge,
        None => Refused::Fatal(BulkError::Server(format!(
            "{status}: {}",
            text.chars().take(200).collect::<String>()
        ))),
    }
}

/// Errors that blame one item of the batch (named by `index`), not the request.
fn is_item_error(kind: &str) -> bool {
    matches!(
        kind,
        "invalid_image" | "image_too_large" | "text_too_long" | "invalid_request"
    )
}

async fn read(path: &Path) -> Result<Bytes, String> {
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| format!("cannot read: {e}"))
}

/// Splits item indices into requests of at most `max_count` items and `budget` bytes.
fn groups(
    ready: &[usize],
    payloads: &[Bytes],
    max_count: usize,
    budget: usize,
) -> VecDeque<Vec<usize>> {
    let mut out = VecDeque::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for &i in ready {
        let size = payloads[i].len() + 256;
        if !current.is_empty() && (current.len() == max_count || bytes + size > budget) {
            out.push_back(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        out.push_back(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_respect_the_count_and_the_byte_budget() {
        let payloads: Vec<Bytes> = [100, 100, 5000, 100, 100]
            .iter()
            .map(|&n| Bytes::from(vec![0; n]))
            .collect();
        let ready = [0, 1, 2, 3, 4];
        let by_count: Vec<Vec<usize>> = groups(&ready, &payloads, 2, usize::MAX).into();
        assert_eq!(by_count, [vec![0, 1], vec![2, 3], vec![4]]);
        let by_bytes: Vec<Vec<usize>> = groups(&ready, &payloads, 10, 1000).into();
        assert_eq!(by_bytes, [vec![0, 1], vec![2], vec![3, 4]]);
    }
}
