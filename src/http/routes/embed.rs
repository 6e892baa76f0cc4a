//! `POST /v1/embed/image`, `POST /v1/embed/text`, `POST /v1/tokenize`.

use axum::extract::State;
use axum::Json;

use crate::embedding::Embedding;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ImageInputs};
use crate::http::schema::{BodyErrors, ImageBytes, ImageUpload};
use crate::http::state::AppState;
use crate::http::types::{EmbeddingsResponse, ImagesRequest, TextsRequest, TokenizeResponse};
use crate::service::{validate, Service};

pub(crate) fn embeddings_response(
    service: &Service,
    embeddings: Vec<Embedding>,
) -> EmbeddingsResponse {
    EmbeddingsResponse {
        model: service.model().name.clone(),
        dimensions: service.model().embed_dim,
        embeddings: embeddings.into_iter().map(Embedding::into_vec).collect(),
    }
}

/// Embeds one or more images (multipart parts, JSON base64 / data URIs, or a raw image body).
#[utoipa::path(
    post,
    path = "/v1/embed/image",
    tag = "embeddings",
    request_body(
        description = "Images as multipart parts, as JSON base64 / data URIs, or one raw image body.",
        content(
            (ImagesRequest = "application/json"),
            (inline(ImageUpload) = "multipart/form-data"),
            (inline(ImageBytes) = "image/*"),
            (inline(ImageBytes) = "application/octet-stream"),
        ),
    ),
    responses(
        (status = 200, description = "One unit-length embedding per image, in order.", body = EmbeddingsResponse),
        BodyErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn image(
    State(state): State<AppState>,
    ImageInputs(images): ImageInputs,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let service = state.service()?;
    let embeddings = service.embed_images(images).await?;
    Ok(Json(embeddings_response(service, embeddings)))
}

/// Embeds texts in any language.
#[utoipa::path(
    post,
    path = "/v1/embed/text",
    tag = "embeddings",
    request_body = TextsRequest,
    responses(
        (status = 200, description = "One unit-length embedding per text, in order.", body = EmbeddingsResponse),
        BodyErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn text(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TextsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let service = state.service()?;
    let max = state.settings().limits.max_texts_per_request;
    validate::count("texts", body.texts.len(), max)?;
    let embeddings = service.embed_texts(body.texts).await?;
    Ok(Json(embeddings_response(service, embeddings)))
}

/// The token ids each text becomes (cleaned and truncated as the encoder sees it, unpadded).
#[utoipa::path(
    post,
    path = "/v1/tokenize",
    tag = "embeddings",
    request_body = TextsRequest,
    responses(
        (status = 200, description = "The token ids of each text, in order.", body = TokenizeResponse),
        BodyErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn tokenize_texts(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TextsRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let service = state.service()?;
    let max = state.settings().limits.max_texts_per_request;
    validate::count("texts", body.texts.len(), max)?;
    let ids = service.tokenize(&body.texts)?;
    Ok(Json(TokenizeResponse {
        ids: ids.into_iter().map(|t| t.as_slice().to_vec()).collect(),
    }))
}
