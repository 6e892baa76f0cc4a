//! `POST /embed`: text-embeddings-inference's embedding route, so TEI clients (`huggingface_hub`'s
//! `InferenceClient.feature_extraction`, LangChain's `HuggingFaceEndpointEmbeddings`, plain
//! HTTP) work unchanged: `{"inputs": "a text" | ["a text", ...]}` answers `[[f32, ...], ...]`.
//!
//! Every error on this route, those of the outer layers (401, 413, timeouts) included, has TEI's
//! shape `{"error": "...", "error_type": "Validation"}` and TEI's status for its type: `Empty`
//! 400, `Validation` 413, `Tokenizer` 422, `Backend` 424, `Overloaded` 429, `Unhealthy` 503.
//! Errors TEI has no type for (a wrong API key, malformed JSON, a wrong content type) keep
//! clipserve's status and are typed `Validation`.
//!
//! The semantics are TEI's with the server's `--auto-truncate` on, as CLIP reads at most the
//! context length anyway: `truncate` defaults to true; with `truncate: false` a text that fills
//! the context is refused. `normalize: false` is refused: the service hands out unit-length
//! embeddings only.

use axum::extract::{Request, State};
use axum::http::response::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::embedding::Embedding;
use crate::http::error::{fallback_message, keep_headers, native_error, ApiError};
use crate::http::extract::ApiJson;
use crate::http::schema::TeiErrors;
use crate::http::state::AppState;
use crate::http::types::{TeiEmbedRequest, TeiErrorResponse, TeiErrorType};
use crate::service::validate;

/// The route's path, which [`tei_errors`] watches.
pub const PATH: &str = "/embed";

/// Embeds texts and answers as text-embeddings-inference does: one list of floats per input.
#[utoipa::path(
    post,
    path = "/embed",
    tag = "tei",
    request_body = TeiEmbedRequest,
    responses(
        (status = 200, description = "One embedding per input, in order (a single string is a list of one).", body = Vec<Vec<f32>>),
        TeiErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn embed(
    State(state): State<AppState>,
    body: Result<ApiJson<TeiEmbedRequest>, ApiError>,
) -> Result<Json<Vec<Vec<f32>>>, TeiError> {
    let ApiJson(request) = body?;
    let service = state.service()?;
    let model = service.model();
    if !request.normalize {
        return Err(TeiError::validation(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`normalize: false` is not supported: this server returns unit-length CLIP \
             embeddings only (compare them by dot product)",
        ));
    }
    let dimensions = match request.dimensions {
        Some(d) if d == 0 || d > model.embed_dim => {
            return Err(TeiError::validation(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "`dimensions` must be between 1 and {} (this model's size); got {d}",
                    model.embed_dim
                ),
            ))
        }
        Some(d) if d < model.embed_dim => Some(d),
        _ => None,
    };
    let limits = &state.settings().limits;
    validate::count("inputs", request.inputs.len(), limits.max_texts_per_request)
        .map_err(ApiError::from)?;
    let ids = service
        .tokenize_off_runtime(request.inputs)
        .await
        .map_err(ApiError::from)?;
    if request.truncate == Some(false) {
        // The tokenizer cuts at the context length, so a text that fills it may have been cut.
        if let Some(index) = ids.iter().position(|t| t.len() >= model.context_length) {
            return Err(TeiError::new(
                TeiErrorType::Validation,
                format!(
                    "`inputs` must have less than {} tokens. Given: at least {} (input {index}); \
                     send `truncate: true` to cut it",
                    model.context_length, model.context_length
                ),
            ));
        }
    }
    let embeddings = service.embed_token_ids(ids).await.map_err(ApiError::from)?;
    let vectors = embeddings
        .into_iter()
        .enumerate()
        .map(|(index, e)| match dimensions {
            Some(d) => e
                .truncated(d)
                .map(Embedding::into_vec)
                .map_err(|e| ApiError::Internal {
                    log: format!("truncating embedding {index} to {d} dimensions: {e}"),
                }),
            None => Ok(e.into_vec()),
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(vectors))
}

/// An error answered in TEI's shape and with TEI's status for its type.
#[derive(Debug)]
pub struct TeiError {
    status: StatusCode,
    kind: TeiErrorType,
    message: String,
    /// The native answer, when the error came from one (for its log line and `Retry-After`).
    native: Option<ApiError>,
}

impl TeiError {
    fn new(kind: TeiErrorType, message: impl Into<String>) -> TeiError {
        TeiError {
            status: tei_status(kind),
            kind,
            message: message.into(),
            native: None,
        }
    }

    fn validation(status: StatusCode, message: impl Into<String>) -> TeiError {
        TeiError {
            status,
            kind: TeiErrorType::Validation,
            message: message.into(),
            native: None,
        }
    }
}

/// TEI's status for each of its error types.
fn tei_status(kind: TeiErrorType) -> StatusCode {
    match kind {
        TeiErrorType::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        TeiErrorType::Backend => StatusCode::FAILED_DEPENDENCY,
        TeiErrorType::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        TeiErrorType::Validation => StatusCode::PAYLOAD_TOO_LARGE,
        TeiErrorType::Tokenizer => StatusCode::UNPROCESSABLE_ENTITY,
        TeiErrorType::Empty => StatusCode::BAD_REQUEST,
    }
}

/// TEI's type and status for a native error code (the `type` of clipserve's other routes).
fn tei_type(code: &str, status: StatusCode) -> (TeiErrorType, StatusCode) {
    let kind = match code {
        "empty_input" => TeiErrorType::Empty,
        "too_many_items" | "text_too_long" | "payload_too_large" => TeiErrorType::Validation,
        "overloaded" => TeiErrorType::Overloaded,
        "not_ready" | "timeout" => TeiErrorType::Unhealthy,
        "internal_error" => TeiErrorType::Backend,
        // No TEI type of its own: a malformed request, a wrong key or content type.
        _ => return (TeiErrorType::Validation, status),
    };
    (kind, tei_status(kind))
}

impl From<ApiError> for TeiError {
    fn from(error: ApiError) -> TeiError {
        let (kind, status) = tei_type(error.kind(), error.status());
        TeiError {
            status,
            kind,
            message: error.message(),
            native: Some(error),
        }
    }
}

/// Marks a response whose body already has TEI's shape.
#[derive(Clone, Copy)]
struct TeiShaped;

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        // The native response logs the error and carries its Retry-After.
        let parts = self.native.map(|e| e.into_response().into_parts().0);
        reshaped(parts, self.status, self.kind, self.message)
    }
}

fn reshaped(
    parts: Option<Parts>,
    status: StatusCode,
    kind: TeiErrorType,
    message: String,
) -> Response {
    let body = TeiErrorResponse {
        error: message,
        error_type: kind,
    };
    let mut response = (status, Json(body)).into_response();
    if let Some(parts) = &parts {
        keep_headers(&parts.headers, &mut response);
    }
    response.extensions_mut().insert(TeiShaped);
    response
}

/// Middleware for the outermost layer: gives the errors that layers and extractors answer on
/// [`PATH`] before the handler runs (401, 405, 413, 408, timeouts) TEI's shape too.
pub async fn tei_errors(req: Request, next: Next) -> Response {
    if req.uri().path() != PATH {
        return next.run(req).await;
    }
    let (parts, native) = match native_error::<TeiShaped>(next.run(req).await).await {
        Ok(error) => error,
        Err(response) => return response,
    };
    let (kind, status, message) = match native {
        Some(native) => {
            let (kind, status) = tei_type(&native.error.kind, parts.status);
            (kind, status, native.error.message)
        }
        None => (
            TeiErrorType::Validation,
            parts.status,
            fallback_message(parts.status),
        ),
    };
    reshaped(Some(parts), status, kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_errors_take_tei_types_and_statuses() {
        let cases = [
            ("empty_input", 422, TeiErrorType::Empty, 400),
            ("too_many_items", 422, TeiErrorType::Validation, 413),
            ("text_too_long", 422, TeiErrorType::Validation, 413),
            ("overloaded", 503, TeiErrorType::Overloaded, 429),
            ("not_ready", 503, TeiErrorType::Unhealthy, 503),
            ("internal_error", 500, TeiErrorType::Backend, 424),
            ("invalid_request", 400, TeiErrorType::Validation, 400),
            ("unauthorized", 401, TeiErrorType::Validation, 401),
        ];
        for (code, native, kind, status) in cases {
            let (k, s) = tei_type(code, StatusCode::from_u16(native).unwrap());
            assert_eq!((k, s.as_u16()), (kind, status), "{code}");
        }
    }
}
