//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! `ToSchema` types of [`super::types`], and the open routes that serve it: `/openapi.json` and
//! an interactive Swagger UI at `/docs` whose assets are compiled into the binary (no CDN).
//!
//! The document served states the rules of the running server ([`Rules`]: limits from the
//! settings, the model's size once loaded, the model names and tasks `/predict` takes), so a
//! request it allows is served and a request the server refuses is one it refuses.
//!
//! `tests/openapi.rs` keeps this in step with the router: every route served is documented
//! with its method, nothing else is, real responses validate against the schemas, and request
//! bodies are served exactly when the document allows them (`.ci/schemathesis.sh` checks the
//! same with generated requests).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::routes;
use super::schema::Rules;
use super::state::AppState;
use super::types::{ErrorResponse, OpenAiErrorResponse, TeiErrorResponse};

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where the interactive page is served.
pub const DOCS_PATH: &str = "/docs";
/// The security scheme's name in the document: the optional bearer API key.
pub const API_KEY_SCHEME: &str = "api_key";

/// The whole document. Title, version and license come from Cargo.toml.
#[derive(OpenApi)]
#[openapi(
    paths(
        routes::embed::image,
        routes::embed::text,
        routes::embed::tokenize_texts,
        routes::scores::similarity,
        routes::scores::classify,
        routes::openai::embeddings,
        routes::openai::models,
        routes::tei::embed,
        routes::immich::ping,
        routes::immich::predict,
        routes::ops::info,
        routes::ops::health,
        routes::ops::ready,
        routes::ops::metrics,
    ),
    components(schemas(ErrorResponse, OpenAiErrorResponse, TeiErrorResponse)),
    modifiers(&ApiKey),
    tags(
        (name = "embeddings", description = "Images and texts to unit-length 512-d vectors in one space"),
        (name = "scores", description = "Cosine scores and zero-shot classification"),
        (name = "openai", description = "The OpenAI embeddings API, for existing clients"),
        (name = "tei", description = "text-embeddings-inference's /embed, for its clients"),
        (name = "immich", description = "immich's machine-learning protocol: point immich's Machine Learning URL here"),
        (name = "operations", description = "Liveness, readiness, model information, metrics"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer API key scheme that routes with `security(("api_key" = []))` refer to.
struct ApiKey;

impl Modify for ApiKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Only when the server sets `server.api_key`: `Authorization: Bearer <key>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The rules of the running server: its limits, and its model once loaded.
pub fn rules(state: &AppState) -> Rules {
    let limits = &state.settings().limits;
    let service = state.service().ok();
    Rules {
        max_texts: limits.max_texts_per_request,
        max_images: limits.max_images_per_request,
        max_text_chars: limits.max_text_chars,
        dimensions: service.map(|s| s.model().embed_dim),
        immich_models: match service {
            Some(service) => routes::immich::accepted_model_names(service),
            None => routes::immich::immich_names(),
        },
        immich_forwards: routes::immich::Upstream::predict_url(state.settings()).is_some(),
    }
}

/// The document of the running server.
pub fn document(state: &AppState) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi())
        .expect("the OpenAPI document is plain data and serializes");
    rules(state).apply(&mut doc);
    doc
}

/// The routes that serve the document and the page; they need no API key.
pub fn docs_router() -> Router<AppState> {
    let ui: Router<AppState> = SwaggerUi::new(DOCS_PATH)
        .config(Config::from(OPENAPI_PATH))
        .into();
    ui.route(
        OPENAPI_PATH,
        get(|State(state): State<AppState>| async move { Json(document(&state)) }),
    )
}
