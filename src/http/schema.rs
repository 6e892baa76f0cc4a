//! What the OpenAPI document says of request bodies and error responses that no JSON type
//! describes: image bytes and multipart uploads, and each route family's error statuses. A
//! leaf module: the routes name these in their annotations, and `openapi` (which names the
//! routes) builds the document from them, so neither imports the other.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Response, Type};
use utoipa::{IntoResponses, ToSchema};

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
