//! The one error shape every route answers with, and its mapping to HTTP statuses:
//!
//! ```json
//! {"error": {"type": "invalid_image", "message": "image 2: ...", "index": 2}}
//! ```
//!
//! `type` is a stable machine-readable code; `message` is for people and says what to do next;
//! `index` names the offending item of a batch when there is one. A 500 says little to the caller
//! and logs the cause.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::types::{ErrorDetail, ErrorResponse};
use crate::service::ServiceError;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// The request is malformed: bad JSON, wrong field types, unknown fields, bad base64.
    BadRequest {
        message: String,
        index: Option<usize>,
    },
    /// No or a wrong API key.
    Unauthorized,
    /// No such route.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The client sent the body too slowly.
    RequestTimeout,
    /// The body is larger than `limits.max_body_bytes`.
    PayloadTooLarge { limit: usize },
    /// The content type is not one this route reads.
    UnsupportedMediaType { message: String },
    /// An image could not be decoded.
    InvalidImage { message: String, index: usize },
    /// Over a configured limit (items per request, pixels, characters) or empty input.
    OverLimit {
        kind: &'static str,
        message: String,
        index: Option<usize>,
    },
    /// The tower's queue is full; try again shortly (503 + Retry-After).
    Overloaded { retry_after: Duration },
    /// Models are still loading, or the server is shutting down (503 + Retry-After).
    NotReady,
    /// The request took longer than `server.request_timeout_ms`.
    Timeout,
    /// The encoder failed on one item of the request (the rest of its batch was answered);
    /// `log` holds the cause for the server log only.
    Inference { index: usize, log: String },
    /// Something failed inside; `log` holds the cause for the server log only.
    Internal { log: String },
}

/// The one place where the service's errors become answers.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let message = e.to_string();
        match e {
            ServiceError::Empty { .. } => ApiError::over_limit("empty_input", message, None),
            ServiceError::TooMany { max, .. } => {
                ApiError::over_limit("too_many_items", message, Some(max))
            }
            ServiceError::BadImageData { index, .. } => ApiError::BadRequest {
                message,
                index: Some(index),
            },
            ServiceError::InvalidImage { index, .. } => ApiError::InvalidImage { message, index },
            ServiceError::ImageTooLarge { index, .. } => {
                ApiError::over_limit("image_too_large", message, Some(index))
            }
            ServiceError::TextTooLong { index, .. } => {
                ApiError::over_limit("text_too_long", message, Some(index))
            }
            ServiceError::Overloaded { .. } => ApiError::Overloaded {
                retry_after: RETRY_AFTER,
            },
            ServiceError::NotReady => ApiError::NotReady,
            ServiceError::Encode { index, message } => ApiError::Inference {
                index,
                log: message,
            },
            ServiceError::Internal(log) => ApiError::Internal { log },
        }
    }
}

/// What clients are told to wait when a queue is full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl ApiError {
    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            index: None,
        }
    }

    /// A limit broken by the request as a whole or by one item.
    pub fn over_limit(
        kind: &'static str,
        message: impl Into<String>,
        index: Option<usize>,
    ) -> Self {
        ApiError::OverLimit {
            kind,
            message: message.into(),
            index,
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidImage { .. } | ApiError::OverLimit { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Overloaded { .. } | ApiError::NotReady | ApiError::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Inference { .. } | ApiError::Internal { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable `type` code.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::InvalidImage { .. } => "invalid_image",
            ApiError::OverLimit { kind, .. } => kind,
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::NotReady => "not_ready",
            ApiError::Timeout => "timeout",
            ApiError::Inference { .. } | ApiError::Internal { .. } => "internal_error",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest { message, .. }
            | ApiError::UnsupportedMediaType { message }
            | ApiError::InvalidImage { message, .. }
            | ApiError::OverLimit { message, .. } => message.clone(),
            ApiError::Unauthorized => {
                "missing or wrong API key: send `Authorization: Bearer <key>`".into()
            }
            ApiError::NotFound => "no such route: see /docs for the API".into(),
            ApiError::MethodNotAllowed => "this route does not take that method: see /docs".into(),
            ApiError::RequestTimeout => "the request body arrived too slowly".into(),
            ApiError::PayloadTooLarge { limit } => format!(
                "the request body is larger than {limit} bytes: send fewer or smaller items per request"
            ),
            ApiError::Overloaded { retry_after } => format!(
                "the server is at capacity: retry after {} s, or send to another replica",
                retry_after.as_secs().max(1)
            ),
            ApiError::NotReady => {
                "the model is not ready (loading or shutting down): retry shortly".into()
            }
            ApiError::Timeout => "the request took too long: retry, or send fewer items".into(),
            ApiError::Inference { index, .. } => {
                format!("inference failed on item {index}; the error was logged")
            }
            ApiError::Internal { .. } => "inference failed; the error was logged".into(),
        }
    }

    /// The batch item this error is about, if any.
    pub fn index(&self) -> Option<usize> {
        match self {
            ApiError::BadRequest { index, .. } | ApiError::OverLimit { index, .. } => *index,
            ApiError::InvalidImage { index, .. } | ApiError::Inference { index, .. } => {
                Some(*index)
            }
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying, for the 503s that have one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded { retry_after } => Some(retry_after.as_secs().max(1)),
            ApiError::NotReady | ApiError::Timeout => Some(1),
            _ => None,
        }
    }

    /// Builds the error an error status with no body of its own should carry (a 404 from the
    /// router, a 413 or 408 from a middleware layer), so every answer has the one shape.
    pub fn from_status(status: StatusCode, body_limit: usize) -> Option<ApiError> {
        Some(match status {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit: body_limit },
            StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout,
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Timeout,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType {
                message: "unsupported content type".into(),
            },
            StatusCode::INTERNAL_SERVER_ERROR => ApiError::Internal {
                log: "a middleware answered 500".into(),
            },
            _ => return None,
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal { log } | ApiError::Inference { log, .. } = &self {
            tracing::error!(cause = %log, index = ?self.index(), "internal error");
        } else if status.is_server_error() {
            tracing::warn!(kind = self.kind(), "request refused");
        } else {
            tracing::info!(kind = self.kind(), message = %self.message(), index = ?self.index(), "bad request");
        }
        let body = ErrorResponse {
            error: ErrorDetail {
                kind: self.kind().to_string(),
                message: self.message(),
                index: self.index(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// An error response that a compatibility route (OpenAI's, TEI's) gives its own shape, read
/// back by that route's middleware: the response's parts and, when its body is the native error
/// body, that body (`None` for a body of another kind, e.g. from a layer). A success, or a
/// response already marked with the route's `Shaped` extension, comes back as it is, in `Err`.
pub(crate) async fn native_error<Shaped: Send + Sync + 'static>(
    response: Response,
) -> Result<(axum::http::response::Parts, Option<ErrorResponse>), Response> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<Shaped>().is_some()
    {
        return Err(response);
    }
    let (parts, body) = response.into_parts();
    // Native error bodies are a few hundred bytes; anything unreadable keeps only its status.
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    Ok((parts, serde_json::from_slice::<ErrorResponse>(&bytes).ok()))
}

/// Copies `headers` (`Retry-After`, `WWW-Authenticate`, ...) onto a reshaped error `response`,
/// all but the body's own type and length.
pub(crate) fn keep_headers(headers: &axum::http::HeaderMap, response: &mut Response) {
    for (name, value) in headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().append(name, value.clone());
        }
    }
}

/// What a status is called, for an error whose body said nothing readable.
pub(crate) fn fallback_message(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("request failed")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_type() {
        let cases = [
            (ApiError::bad_request("x"), 400, "invalid_request"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                ApiError::UnsupportedMediaType {
                    message: "x".into(),
                },
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::InvalidImage {
                    message: "x".into(),
                    index: 2,
                },
                422,
                "invalid_image",
            ),
            (
                ApiError::over_limit("too_many_items", "x", None),
                422,
                "too_many_items",
            ),
            (
                ApiError::Overloaded {
                    retry_after: Duration::from_secs(1),
                },
                503,
                "overloaded",
            ),
            (
                ApiError::Internal { log: "x".into() },
                500,
                "internal_error",
            ),
        ];
        for (error, status, kind) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.kind(), kind);
        }
    }

    #[test]
    fn overload_carries_retry_after_and_internal_errors_hide_their_cause() {
        let r = ApiError::Overloaded {
            retry_after: Duration::from_millis(10),
        }
        .into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let e = ApiError::Internal {
            log: "secret path /x".into(),
        };
        assert!(!e.message().contains("secret"));
    }
}
