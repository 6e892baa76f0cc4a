//! `POST /v1/embeddings`: the OpenAI embeddings API over the same pipeline as `/v1/embed/*`, so
//! existing clients (the `openai` SDKs, LangChain's `OpenAIEmbeddings`) work unchanged. Images go
//! through the same route with `"modality": "image"`, as the `infinity` server takes them.
//! `GET /v1/models` lists the one model served, for clients that look before they embed.
//!
//! Every error on this route, those of the outer layers (401, 405, 413, timeouts) included, has
//! OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, where `code` is the
//! `type` the other routes would answer.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::response::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde_json::Value;

use crate::embedding::Embedding;
use crate::http::error::{fallback_message, keep_headers, native_error, ApiError};
use crate::http::extract::ApiJson;
use crate::http::schema::{ModelErrors, OpenAiErrors};
use crate::http::state::AppState;
use crate::http::types::{
    EncodingFormat, Modality, OpenAiEmbedding, OpenAiEmbeddingsRequest, OpenAiEmbeddingsResponse,
    OpenAiErrorDetail, OpenAiErrorResponse, OpenAiModel, OpenAiModelList, OpenAiUsage,
    OpenAiVector,
};
use crate::preprocess::text::TokenIds;
use crate::service::validate;

/// The route's path, which [`openai_errors`] watches.
pub const PATH: &str = "/v1/embeddings";

/// Embeds texts (or, with `"modality": "image"`, images) and answers as OpenAI does.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "openai",
    request_body = OpenAiEmbeddingsRequest,
    responses(
        (status = 200, description = "One embedding per input, in order, with token usage.", body = OpenAiEmbeddingsResponse),
        OpenAiErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn embeddings(
    State(state): State<AppState>,
    body: Result<ApiJson<OpenAiEmbeddingsRequest>, ApiError>,
) -> Result<Json<OpenAiEmbeddingsResponse>, OpenAiError> {
    let ApiJson(request) = body?;
    let service = state.service()?;
    let full = service.model().embed_dim;
    let dimensions = match request.dimensions {
        Some(d) if d == 0 || d > full => {
            return Err(OpenAiError::new(
                ApiError::bad_request(format!(
                    "`dimensions` must be between 1 and {full} (this model's size); got {d}"
                )),
                "dimensions",
            ))
        }
        Some(d) if d < full => Some(d),
        _ => None,
    };
    let inputs = input_strings(request.input).map_err(|e| OpenAiError::new(e, "input"))?;
    let limits = &state.settings().limits;
    let on_input = |e: crate::service::ServiceError| OpenAiError::new(e.into(), "input");
    let (embeddings, prompt_tokens) = match request.modality {
        Modality::Text => {
            validate::count("texts", inputs.len(), limits.max_texts_per_request)
                .map_err(on_input)?;
            let ids = service
                .tokenize_off_runtime(inputs)
                .await
                .map_err(on_input)?;
            let tokens = ids.iter().map(TokenIds::len).sum();
            let embeddings = service.embed_token_ids(ids).await.map_err(ApiError::from)?;
            (embeddings, tokens)
        }
        Modality::Image => {
            validate::count("images", inputs.len(), limits.max_images_per_request)
                .map_err(on_input)?;
            let bytes = validate::image_data_list(&inputs).map_err(on_input)?;
            (service.embed_images(bytes).await.map_err(on_input)?, 0)
        }
    };
    let data = embeddings
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| {
            let embedding = match dimensions {
                Some(d) => embedding.truncated(d).map_err(|e| ApiError::Internal {
                    log: format!("truncating embedding {index} to {d} dimensions: {e}"),
                })?,
                None => embedding,
            };
            Ok(OpenAiEmbedding {
                object: "embedding".into(),
                index,
                embedding: encode(embedding, request.encoding_format),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(OpenAiEmbeddingsResponse {
        object: "list".into(),
        data,
        model: service.model().name.clone(),
        usage: OpenAiUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

/// When the router was built, in Unix seconds: the `created` of the model `/v1/models` lists.
#[derive(Debug, Clone, Copy)]
pub struct StartedAt(pub u64);

impl StartedAt {
    /// Now.
    pub fn now() -> StartedAt {
        StartedAt(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    }
}

/// The model served, in OpenAI's list shape.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "The one model this server serves.", body = OpenAiModelList),
        ModelErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn models(
    State(state): State<AppState>,
    Extension(started): Extension<StartedAt>,
) -> Result<Json<OpenAiModelList>, ApiError> {
    let service = state.service()?;
    Ok(Json(OpenAiModelList {
        object: "list".into(),
        data: vec![OpenAiModel {
            id: service.model().name.clone(),
            object: "model".into(),
            created: started.0,
            owned_by: "clipserve".into(),
        }],
    }))
}

/// `input` as a list of strings: a string is a list of one; token ids are refused with a reason.
fn input_strings(input: Value) -> Result<Vec<String>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![s]),
        Value::Array(items) => items,
        other => {
            return Err(ApiError::bad_request(format!(
                "`input` must be a string or a list of strings; got {}",
                json_kind(&other)
            )))
        }
    };
    if items.iter().any(|v| v.is_number() || v.is_array()) {
        return Err(ApiError::bad_request(
            "`input` holds token ids, which this server cannot read: its model uses the \
             XLM-RoBERTa tokenizer, not OpenAI's. Send the texts as strings (LangChain: \
             `OpenAIEmbeddings(..., check_embedding_ctx_length=False)`)",
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(s) => Ok(s),
            other => Err(ApiError::BadRequest {
                message: format!(
                    "`input[{index}]` is {}: send a list of strings",
                    json_kind(&other)
                ),
                index: Some(index),
            }),
        })
        .collect()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Image URLs are never fetched (no outbound requests from a replica); say what to send instead.
fn encode(embedding: Embedding, format: EncodingFormat) -> OpenAiVector {
    match format {
        EncodingFormat::Float => OpenAiVector::Float(embedding.into_vec()),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = embedding
                .as_slice()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            OpenAiVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

/// An [`ApiError`] answered in OpenAI's shape, with the request field at fault when known.
pub struct OpenAiError {
    error: ApiError,
    param: Option<&'static str>,
}

impl OpenAiError {
    fn new(error: ApiError, param: &'static str) -> Self {
        OpenAiError {
            error,
            param: Some(param),
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        OpenAiError { error, param: None }
    }
}

/// Marks a response whose body already has OpenAI's shape.
#[derive(Clone, Copy)]
struct OpenAiShaped;

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let (kind, message) = (self.error.kind(), self.error.message());
        // The native response logs the error and carries its status and Retry-After.
        let (parts, _) = self.error.into_response().into_parts();
        reshaped(parts, Some(kind.to_string()), message, self.param)
    }
}

/// Replaces an error response's body with OpenAI's shape, keeping its status and headers.
fn reshaped(parts: Parts, code: Option<String>, message: String, param: Option<&str>) -> Response {
    let kind = if parts.status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = OpenAiErrorResponse {
        error: OpenAiErrorDetail {
            message,
            kind: kind.into(),
            param: param.map(str::to_string),
            code,
        },
    };
    let mut response = (parts.status, Json(body)).into_response();
    keep_headers(&parts.headers, &mut response);
    response.extensions_mut().insert(OpenAiShaped);
    response
}

/// Middleware for the outermost layer: gives the errors that layers and extractors answer on
/// [`PATH`] before the handler runs (401, 405, 413, 408, timeouts) OpenAI's shape too.
pub async fn openai_errors(req: Request, next: Next) -> Response {
    if req.uri().path() != PATH {
        return next.run(req).await;
    }
    let (parts, native) = match native_error::<OpenAiShaped>(next.run(req).await).await {
        Ok(error) => error,
        Err(response) => return response,
    };
    let (code, message) = match native {
        Some(native) => (Some(native.error.kind), native.error.message),
        None => (None, fallback_message(parts.status)),
    };
    reshaped(parts, code, message, None)
}
