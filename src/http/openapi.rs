//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! `ToSchema` types of [`super::types`], and the open routes that serve it: `/openapi.json` and
//! an interactive Swagger UI at `/docs` whose assets are compiled into the binary (no CDN).
//!
//! `tests/openapi.rs` keeps this in step with the router: every route served is documented
//! with its method, nothing else is, and real responses validate against the schemas.

use std::collections::BTreeMap;

use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Response, Type};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};
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

/// The encoded bytes of one image: JPEG, PNG, WebP, GIF (first frame), BMP or TIFF.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct ImageBytes(pub Vec<u8>);

/// `POST /v1/embed/image` as `multipart/form-data`: one part per image, named `image` (or any
/// part that carries a file name).
#[derive(ToSchema)]
pub struct ImageUpload {
    /// The images, in order.
    #[schema(inline)]
    pub image: Vec<ImageBytes>,
}

/// Statuses and what they mean on a route that reads a body and runs the model.
const BODY_ERRORS: &[(u16, &str)] = &[
    (400, "Malformed request: invalid JSON, wrong field types, unknown fields, bad base64 or multipart."),
    (401, "Missing or wrong API key (only when the server sets `server.api_key`)."),
    (408, "The request body arrived too slowly."),
    (413, "The body is larger than `limits.max_body_bytes`: send fewer or smaller items."),
    (415, "A content type this route does not read."),
    (422, "An image that cannot be decoded, no items, or over a limit (items per request, text length, pixels); `index` names the item."),
    (500, "Inference failed; the cause is in the server log."),
    (503, "The queue is full, the model is loading, the server is shutting down, or the request timed out: retry after `Retry-After` seconds."),
];

/// Statuses of a route that reads no body but needs the model.
const MODEL_ERRORS: &[(u16, &str)] = &[
    (
        401,
        "Missing or wrong API key (only when the server sets `server.api_key`).",
    ),
    (
        503,
        "The model is loading or the server is shutting down: retry after `Retry-After` seconds.",
    ),
];

/// Error responses, all with one JSON schema; 503s carry `Retry-After`.
fn error_responses(schema: &str, statuses: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|&(status, description)| {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(schema)))
                    .build(),
            );
            if status == 503 {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("Seconds to wait before retrying."))
                        .build(),
                );
            }
            (status.to_string(), response.build().into())
        })
        .collect()
}

/// The error responses of the native routes that read a body.
pub struct BodyErrors;

impl IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses("ErrorResponse", BODY_ERRORS)
    }
}

/// The error responses of `/info`.
pub struct ModelErrors;

impl IntoResponses for ModelErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses("ErrorResponse", MODEL_ERRORS)
    }
}

/// The error responses of `/v1/embeddings`, in OpenAI's shape.
pub struct OpenAiErrors;

impl IntoResponses for OpenAiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses("OpenAiErrorResponse", BODY_ERRORS)
    }
}
