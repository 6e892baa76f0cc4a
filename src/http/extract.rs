//! Reading request bodies at the edge: JSON with our error shape, and images in any of the
//! three forms `/v1/embed/image` takes (multipart parts, JSON base64 / data URIs, a raw
//! `image/*` body). Sizes and counts are checked here, while the body streams in, by the
//! service's rules (`service::validate`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;
use super::types::ImagesRequest;
use crate::service::validate;

/// How long a client may take to send its body before it gets 408 (`server.body_timeout_ms`).
fn body_timeout(state: &AppState) -> Duration {
    Duration::from_millis(state.settings().server.body_timeout_ms)
}

fn content_type(req: &Request) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == "application/json" || essence.ends_with("+json")
}

/// Reads the whole body, mapping an over-limit body to 413 (as soon as the limit is passed,
/// not after buffering the rest) and one not finished within `timeout` to 408.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::RequestTimeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(body_error(&e, limit)),
    }
}

fn body_error(e: &(dyn std::error::Error + 'static), limit: usize) -> ApiError {
    if over_length_limit(e) {
        return ApiError::PayloadTooLarge { limit };
    }
    ApiError::bad_request(format!("could not read the request body: {e}"))
}

/// Whether the body limit layer cut the body, anywhere in an error's source chain.
fn over_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A JSON body deserialized into `T`, with every failure in the API's error shape: 415 for a
/// non-JSON content type, 413 over the size limit, 400 for anything malformed (syntax, types,
/// unknown or missing fields, nesting too deep, invalid UTF-8).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ct = content_type(&req);
        if !is_json(&ct) {
            return Err(ApiError::UnsupportedMediaType {
                message: format!(
                    "expected `Content-Type: application/json`, got `{}`",
                    if ct.is_empty() { "nothing" } else { &ct }
                ),
            });
        }
        let limit = state.settings().limits.max_body_bytes;
        let bytes = read_body(req.into_body(), limit, body_timeout(state)).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes a JSON object body with the API's 400 error. Every request body is an object:
/// serde's derived structs would also take an array of their fields (`[""]` as `{"texts": ""}`),
/// which the OpenAPI document refuses, so anything else is refused here first.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|&b| b != b'{') {
        let kind = match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => super::types::json_kind(&v),
            Err(e) => return Err(ApiError::bad_request(format!("invalid JSON body: {e}"))),
        };
        return Err(ApiError::bad_request(format!(
            "invalid JSON body: expected an object, got {kind}"
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The images of a request, as encoded bytes, in order.
pub struct ImageInputs(pub Vec<Bytes>);

impl FromRequest<AppState> for ImageInputs {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limits = &state.settings().limits;
        let ct = content_type(&req);
        let essence = ct.split(';').next().unwrap_or("").trim().to_string();
        let images = if essence == "multipart/form-data" {
            let multipart = Multipart::from_request(req, state)
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
            multipart_images(
                multipart,
                limits.max_images_per_request,
                limits.max_body_bytes,
                body_timeout(state),
            )
            .await?
        } else if is_json(&ct) {
            let ApiJson(body) = ApiJson::<ImagesRequest>::from_request(req, state).await?;
            validate::count("images", body.images.len(), limits.max_images_per_request)?;
            validate::image_data_list(&body.images)?
        } else if essence.starts_with("image/") || essence == "application/octet-stream" {
            vec![read_body(req.into_body(), limits.max_body_bytes, body_timeout(state)).await?]
        } else {
            return Err(ApiError::UnsupportedMediaType {
                message: format!(
                    "send images as multipart/form-data, as JSON {{\"images\": [base64...]}}, or as a raw image/* body; got `{}`",
                    if ct.is_empty() { "no content type" } else { &ct }
                ),
            });
        };
        validate::count("images", images.len(), limits.max_images_per_request)?;
        Ok(ImageInputs(images))
    }
}

async fn multipart_images(
    mut multipart: Multipart,
    max_images: usize,
    body_limit: usize,
    timeout: Duration,
) -> Result<Vec<Bytes>, ApiError> {
    let mut images = Vec::new();
    loop {
        let next = tokio::time::timeout(timeout, multipart.next_field())
            .await
            .map_err(|_| ApiError::RequestTimeout)?;
        let field = match next {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, body_limit)),
        };
        let name = field.name().unwrap_or("").to_string();
        let is_image =
            field.file_name().is_some() || name.starts_with("image") || name.starts_with("file");
        if !is_image {
            return Err(ApiError::BadRequest {
                message: format!(
                    "multipart part `{name}` is not an image: name parts `image` (or send a file)"
                ),
                index: Some(images.len()),
            });
        }
        validate::at_most("images", images.len() + 1, max_images)?;
        let bytes = tokio::time::timeout(timeout, field.bytes())
            .await
            .map_err(|_| ApiError::RequestTimeout)?
            .map_err(|e| multipart_error(e, body_limit))?;
        images.push(bytes);
    }
    Ok(images)
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    // axum only recognises its own limit here; a chunked body cut by the limit layer surfaces
    // as "failed to read stream", with the length-limit error in its source chain.
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE || over_length_limit(&e) {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::bad_request(format!("invalid multipart body: {}", e.body_text()))
    }
}
