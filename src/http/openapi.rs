//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! `ToSchema` types of [`super::types`], and the open routes that serve it: `/openapi.json` and
//! an interactive Swagger UI at `/docs` whose assets are compiled into the binary (no CDN).
//!
//! `tests/openapi.rs` keeps this in step with the router: every route served is documented
//! with its method, nothing else is, and real responses validate against the schemas.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::routes;
use super::types::{ErrorResponse, OpenAiErrorResponse};

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
        routes::ops::info,
        routes::ops::health,
        routes::ops::ready,
        routes::ops::metrics,
    ),
    components(schemas(ErrorResponse, OpenAiErrorResponse)),
    modifiers(&ApiKey),
    tags(
        (name = "embeddings", description = "Images and texts to unit-length 512-d vectors in one space"),
        (name = "scores", description = "Cosine scores and zero-shot classification"),
        (name = "openai", description = "The OpenAI embeddings API, for existing clients"),
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

/// The routes that serve the document and the page; they need no API key.
pub fn docs_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    SwaggerUi::new(DOCS_PATH)
        .url(OPENAPI_PATH, ApiDoc::openapi())
        .into()
}
