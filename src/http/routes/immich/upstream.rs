//! The immich-machine-learning instance that answers the tasks clipserve does not serve: the
//! request's entries and input forwarded to it, and its answer merged with ours.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::Input;
use crate::config::Settings;
use crate::http::types::{ErrorDetail, ErrorResponse};

/// The immich-machine-learning instance that gets the tasks clipserve does not serve: a cheap
/// handle (the client pools connections), built once from the settings.
#[derive(Clone)]
pub struct Upstream {
    /// `<immich.upstream_url>/predict`, resolved as immich resolves it.
    predict: Option<reqwest::Url>,
    /// What `immich.upstream_url` says, for messages.
    pub(super) configured: String,
    client: reqwest::Client,
}

impl Upstream {
    /// The upstream the settings name, if any. A URL that does not parse leaves none, and the
    /// refusal of a forwarded task says why (settings validation refuses it at start-up).
    pub fn new(settings: &Settings) -> Upstream {
        let configured = settings.immich.upstream_url.trim().to_string();
        let predict = Upstream::predict_url(settings);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.server.request_timeout_ms))
            .build()
            .unwrap_or_default();
        Upstream {
            predict,
            configured,
            client,
        }
    }

    /// `<immich.upstream_url>/predict`, resolved as immich resolves it (the path replaced), if
    /// the setting names a URL.
    pub fn predict_url(settings: &Settings) -> Option<reqwest::Url> {
        let configured = settings.immich.upstream_url.trim();
        (!configured.is_empty())
            .then(|| reqwest::Url::parse(configured).and_then(|u| u.join("/predict")))
            .and_then(Result::ok)
    }

    /// Whether forwarded tasks have somewhere to go.
    pub fn is_set(&self) -> bool {
        self.predict.is_some()
    }
}

/// What the upstream answered, as it answered it.
pub(super) struct UpstreamAnswer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

impl IntoResponse for UpstreamAnswer {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        if let Some(ct) = self.content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        response
    }
}

/// An upstream that could not be reached or answered nonsense: 502, in the API's error shape.
pub(super) struct BadGateway(pub(super) String);

impl IntoResponse for BadGateway {
    fn into_response(self) -> Response {
        tracing::warn!(message = %self.0, "immich upstream failed");
        let body = ErrorResponse {
            error: ErrorDetail {
                kind: "upstream_unavailable".into(),
                message: self.0,
                index: None,
            },
        };
        (StatusCode::BAD_GATEWAY, Json(body)).into_response()
    }
}

/// Sends `entries` with the request's own input to the upstream's `/predict`.
pub(super) async fn forward(
    upstream: &Upstream,
    entries: String,
    input: &Input,
) -> Result<UpstreamAnswer, BadGateway> {
    let url = upstream
        .predict
        .clone()
        .ok_or_else(|| BadGateway("no upstream configured".into()))?;
    let form = reqwest::multipart::Form::new().text("entries", entries);
    let form = match input {
        Input::Text(text) => form.text("text", text.clone()),
        Input::Image(image) => {
            let length = image.bytes.len() as u64;
            let mut part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::from(image.bytes.clone()),
                length,
            );
            if let Some(name) = &image.file_name {
                part = part.file_name(name.clone());
            }
            if let Some(ct) = &image.content_type {
                part = part
                    .mime_str(ct)
                    .map_err(|e| BadGateway(format!("the image part's content type: {e}")))?;
            }
            form.part("image", part)
        }
    };
    let response = upstream
        .client
        .post(url.clone())
        .multipart(form)
        .send()
        .await
        .map_err(|e| BadGateway(format!("immich upstream {url}: {e}")))?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let body = response
        .bytes()
        .await
        .map_err(|e| BadGateway(format!("immich upstream {url}: reading its answer: {e}")))?;
    Ok(UpstreamAnswer {
        status,
        content_type,
        body,
    })
}

/// Our `clip` answer merged into the upstream's: its bytes are kept as they came, our keys are
/// added in front. A failed upstream answer is the answer.
pub(super) fn merge(
    ours: Map<String, Value>,
    theirs: Result<UpstreamAnswer, BadGateway>,
) -> Response {
    let theirs = match theirs {
        Ok(answer) if answer.status.is_success() => answer,
        Ok(answer) => return answer.into_response(),
        Err(failure) => return failure.into_response(),
    };
    let Ok(their_keys) = serde_json::from_slice::<Map<String, Value>>(&theirs.body) else {
        return BadGateway(
            "the immich upstream answered something that is not a JSON object".into(),
        )
        .into_response();
    };
    // The image size is in both answers, measured alike: keep the upstream's, once.
    let mut ours = ours;
    ours.retain(|key, _| !their_keys.contains_key(key));
    let text = String::from_utf8_lossy(&theirs.body);
    let rest = text.trim_start().trim_start_matches('{').trim_start();
    let ours = Value::Object(ours).to_string();
    let ours = ours.trim_end_matches('}');
    let merged = if rest.starts_with('}') {
        format!("{ours}}}")
    } else {
        format!("{ours},{rest}")
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        merged,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Result<UpstreamAnswer, BadGateway> {
        Ok(UpstreamAnswer {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from(body.to_string()),
        })
    }

    async fn text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_merged_answer_keeps_the_upstream_bytes_and_adds_ours() {
        let mut ours = Map::new();
        ours.insert("clip".into(), Value::String("[1.0,2.0]".into()));
        let merged = text(merge(
            ours.clone(),
            answer(r#" { "ocr": {"text": ["a"]}, "imageWidth": 3}"#),
        ))
        .await;
        assert_eq!(
            merged,
            r#"{"clip":"[1.0,2.0]","ocr": {"text": ["a"]}, "imageWidth": 3}"#
        );
        let v: Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(v["imageWidth"], 3);
        assert_eq!(
            text(merge(ours, answer("{ }"))).await,
            r#"{"clip":"[1.0,2.0]"}"#
        );
    }

    #[tokio::test]
    async fn an_upstream_answer_that_is_not_an_object_is_a_bad_gateway() {
        let r = merge(Map::new(), answer("[1, 2]"));
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn the_upstream_path_is_resolved_as_immich_resolves_it() {
        let mut settings = Settings::default();
        settings.immich.upstream_url = "http://ml:3003/some/path".into();
        let upstream = Upstream::new(&settings);
        assert_eq!(upstream.predict.unwrap().as_str(), "http://ml:3003/predict");
        settings.immich.upstream_url = "not a url".into();
        assert!(!Upstream::new(&settings).is_set());
        assert!(!Upstream::new(&Settings::default()).is_set());
    }
}
