//! `POST /v1/embed/image`, `POST /v1/embed/text`, `POST /v1/tokenize`.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::embedding::Embedding;
use crate::http::error::ApiError;
use crate::http::extract::{check_count, ApiJson, ImageInputs};
use crate::http::pipeline::{embed_images, embed_texts, tokenize};
use crate::http::state::{AppState, Serving};
use crate::http::types::{EmbeddingsResponse, TextsRequest, TokenizeResponse};

pub(crate) fn embeddings_response(
    serving: &Serving,
    embeddings: Vec<Embedding>,
) -> EmbeddingsResponse {
    EmbeddingsResponse {
        model: serving.engine.folder.name.clone(),
        dimensions: serving.engine.folder.embed_dim,
        embeddings: embeddings.into_iter().map(Embedding::into_vec).collect(),
    }
}

/// Embeds one or more images (multipart parts, JSON base64 / data URIs, or a raw image body).
pub async fn image(
    State(state): State<AppState>,
    ImageInputs(images): ImageInputs,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let serving = state.serving()?;
    let embeddings = embed_images(&state, serving, images).await?;
    Ok(Json(embeddings_response(serving, embeddings)))
}

/// Embeds texts in any language.
pub async fn text(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TextsRequest>,
) -> Result<Json<EmbeddingsResponse>, ApiError> {
    let serving = state.serving()?;
    check_count(
        "texts",
        body.texts.len(),
        state.settings().limits.max_texts_per_request,
    )?;
    let embeddings = embed_texts(&state, serving, Arc::new(body.texts)).await?;
    Ok(Json(embeddings_response(serving, embeddings)))
}

/// The token ids each text becomes (cleaned and truncated as the encoder sees it, unpadded).
pub async fn tokenize_texts(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TextsRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let serving = state.serving()?;
    check_count(
        "texts",
        body.texts.len(),
        state.settings().limits.max_texts_per_request,
    )?;
    let ids = tokenize(&state, serving, &body.texts)?;
    Ok(Json(TokenizeResponse {
        ids: ids.into_iter().map(|t| t.as_slice().to_vec()).collect(),
    }))
}
