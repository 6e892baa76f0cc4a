//! Operational routes: liveness, readiness, model information and metrics. Health,
//! readiness and metrics stay open when an API key is configured.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::error::ApiError;
use crate::http::schema::ModelErrors;
use crate::http::state::AppState;
use crate::http::types::{InfoResponse, StatusResponse};

/// Liveness: the process is up and answering. Never depends on the model.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "The process is up: `{\"status\": \"ok\"}`.", body = StatusResponse)),
)]
pub async fn health() -> Json<StatusResponse> {
    Json(StatusResponse {
        status: "ok".into(),
    })
}

/// Readiness: 200 once the model is loaded and warmed up and both towers have live workers;
/// 503 while loading, after a tower's worker died, and once shutdown has begun.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to serve: `{\"status\": \"ready\"}`.", body = StatusResponse),
        (status = 503, description = "Not ready: `loading` or `unavailable`; retry after `Retry-After` seconds.", body = StatusResponse,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again."))),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.ready() {
        Json(StatusResponse {
            status: "ready".into(),
        })
        .into_response()
    } else {
        let status = if state.service().is_err() {
            "loading"
        } else {
            "unavailable"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(StatusResponse {
                status: status.into(),
            }),
        )
            .into_response()
    }
}

/// What is served and under which limits.
#[utoipa::path(
    get,
    path = "/info",
    tag = "operations",
    responses(
        (status = 200, description = "The model, its dimensions and the limits in force.", body = InfoResponse),
        ModelErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn info(State(state): State<AppState>) -> Result<Json<InfoResponse>, ApiError> {
    let service = state.service()?;
    let folder = service.model();
    let (h, w) = folder.preprocess.size();
    Ok(Json(InfoResponse {
        model: folder.name.clone(),
        dimensions: folder.embed_dim,
        context_length: folder.context_length,
        logit_scale: folder.logit_scale,
        image_size: [h, w],
        limits: state.settings().limits.clone(),
        exif: state.settings().model.exif,
        version: env!("CARGO_PKG_VERSION").into(),
        precision: service.precision().into(),
    }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics().render(),
    )
        .into_response()
}
