//! `POST /v1/similarity` and `POST /v1/classify`: embeddings compared, and zero-shot labels.

use axum::extract::State;
use axum::Json;

use crate::config::LimitSettings;
use crate::embedding::{cosine_matrix, softmax, Embedding};
use crate::http::error::ApiError;
use crate::http::extract::ApiJson;
use crate::http::schema::BodyErrors;
use crate::http::state::AppState;
use crate::http::types::{
    label_max_chars, template_max_chars, ClassifyRequest, ClassifyResponse, ImageLabels,
    LabelScore, SimilarityRequest, SimilarityResponse, DEFAULT_TEMPLATE,
};
use crate::service::{validate, Service, ServiceError};

enum Side {
    Images(Vec<String>),
    Texts(Vec<String>),
}

async fn embed_side(
    service: &Service,
    limits: &LimitSettings,
    side: Side,
) -> Result<Vec<Embedding>, ServiceError> {
    match side {
        Side::Images(images) => {
            validate::count("images", images.len(), limits.max_images_per_request)?;
            let bytes = validate::image_data_list(&images)?;
            service.embed_images(bytes).await
        }
        Side::Texts(texts) => {
            validate::count("texts", texts.len(), limits.max_texts_per_request)?;
            service.embed_texts(texts).await
        }
    }
}

/// Cosine scores and softmax probabilities between two sets: images x texts, texts x texts_b,
/// or images x images_b.
#[utoipa::path(
    post,
    path = "/v1/similarity",
    tag = "scores",
    request_body = SimilarityRequest,
    responses(
        (status = 200, description = "Scores and probabilities, rows by columns.", body = SimilarityResponse),
        BodyErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn similarity(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SimilarityRequest>,
) -> Result<Json<SimilarityResponse>, ApiError> {
    let service = state.service()?;
    let limits = &state.settings().limits;
    let (rows, cols) = match (body.images, body.texts, body.texts_b, body.images_b) {
        (Some(images), Some(texts), None, None) => (Side::Images(images), Side::Texts(texts)),
        (None, Some(texts), Some(texts_b), None) => (Side::Texts(texts), Side::Texts(texts_b)),
        (Some(images), None, None, Some(images_b)) => (Side::Images(images), Side::Images(images_b)),
        _ => {
            return Err(ApiError::bad_request(
                "send exactly one pair: `images` and `texts`, `texts` and `texts_b`, or `images` and `images_b`",
            ))
        }
    };
    // Both sides are embedded concurrently: images on the image tower, texts on the text tower.
    let (rows, cols) = tokio::try_join!(
        embed_side(service, limits, rows),
        embed_side(service, limits, cols)
    )?;
    let scores = cosine_matrix(&rows, &cols);
    let scale = service.model().logit_scale;
    let probabilities = scores.iter().map(|row| softmax(row, scale)).collect();
    Ok(Json(SimilarityResponse {
        model: service.model().name.clone(),
        scores,
        probabilities,
    }))
}

/// Zero-shot classification: each image against `template` filled with each label.
#[utoipa::path(
    post,
    path = "/v1/classify",
    tag = "scores",
    request_body = ClassifyRequest,
    responses(
        (status = 200, description = "Labels of each image, most probable first.", body = ClassifyResponse),
        BodyErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn classify(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ClassifyRequest>,
) -> Result<Json<ClassifyResponse>, ApiError> {
    let service = state.service()?;
    let template = body.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
    if !template.contains("{}") {
        return Err(ApiError::bad_request(
            "`template` must contain `{}` where the label goes, e.g. \"a photo of a {}.\"",
        ));
    }
    let limits = &state.settings().limits;
    validate::count("labels", body.labels.len(), limits.max_texts_per_request)?;
    // Each bound alone keeps every prompt within the text limit, so the document states both.
    let (template_max, label_max) = (
        template_max_chars(limits.max_text_chars),
        label_max_chars(limits.max_text_chars),
    );
    let chars = template.chars().count();
    if chars > template_max {
        return Err(ApiError::over_limit(
            "text_too_long",
            format!("`template` has {chars} characters; the limit is {template_max}"),
            None,
        ));
    }
    if let Some((index, chars)) = body
        .labels
        .iter()
        .map(|l| l.chars().count())
        .enumerate()
        .find(|&(_, chars)| chars > label_max)
    {
        return Err(ApiError::over_limit(
            "text_too_long",
            format!("label {index} has {chars} characters; the limit is {label_max}"),
            Some(index),
        ));
    }
    let prompts: Vec<String> = body
        .labels
        .iter()
        .map(|l| template.replacen("{}", l, 1))
        .collect();
    let (images, labels) = tokio::try_join!(
        embed_side(service, limits, Side::Images(body.images)),
        embed_side(service, limits, Side::Texts(prompts))
    )?;
    let scale = service.model().logit_scale;
    let results = cosine_matrix(&images, &labels)
        .into_iter()
        .map(|scores| {
            let probs = softmax(&scores, scale);
            let mut labels: Vec<LabelScore> = body
                .labels
                .iter()
                .zip(scores.iter().zip(probs))
                .map(|(label, (&score, probability))| LabelScore {
                    label: label.clone(),
                    probability,
                    score,
                })
                .collect();
            labels.sort_by(|a, b| b.probability.total_cmp(&a.probability));
            ImageLabels { labels }
        })
        .collect();
    Ok(Json(ClassifyResponse {
        model: service.model().name.clone(),
        results,
    }))
}
