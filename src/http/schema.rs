//! What the OpenAPI document says of request bodies and error responses that no JSON type
//! describes: image bytes and multipart uploads, each route family's error statuses, and the
//! [`Rules`] the running server enforces (limits from the settings, the model's size). A leaf
//! module: the routes name these in their annotations, and `openapi` (which names the routes)
//! builds the document from them, so neither imports the other.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::types::{label_max_chars, template_max_chars};

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

/// Statuses of `/embed`, TEI's: each TEI error type has its status (see `routes::tei`).
const TEI_ERRORS: &[(u16, &str)] = &[
    (400, "`Empty`: no inputs; `Validation`: malformed JSON, wrong field types, unknown fields."),
    (401, "`Validation`: missing or wrong API key (only when the server sets `server.api_key`)."),
    (408, "`Validation`: the request body arrived too slowly."),
    (413, "`Validation`: more inputs than `limits.max_texts_per_request`, a text over `limits.max_text_chars`, a text that fills the context with `truncate: false`, or a body over `limits.max_body_bytes`."),
    (415, "`Validation`: not `Content-Type: application/json`."),
    (422, "`Validation`: `normalize: false`, or `dimensions` out of range."),
    (424, "`Backend`: inference failed; the cause is in the server log."),
    (429, "`Overloaded`: the queue is full: retry after `Retry-After` seconds."),
    (503, "`Unhealthy`: the model is loading, the server is shutting down, or the request timed out: retry after `Retry-After` seconds."),
];

/// Statuses of immich's `/predict`.
const PREDICT_ERRORS: &[(u16, &str)] = &[
    (400, "Malformed form or `entries`, a model this server does not serve, a task it does not serve with no `immich.upstream_url` set."),
    (401, "Missing or wrong API key (only when the server sets `server.api_key`; immich sends none)."),
    (408, "The request body arrived too slowly."),
    (413, "The body is larger than `limits.max_body_bytes`."),
    (415, "Not `multipart/form-data`."),
    (422, "An image that cannot be decoded or is over `limits.max_image_pixels`, a text over `limits.max_text_chars`; or the upstream's 422, passed on."),
    (500, "Inference failed (the cause is in the server log), or the upstream's 500, passed on."),
    (502, "The upstream immich-machine-learning could not be reached or did not answer a JSON object."),
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
            if status == 503 || status == 429 {
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

/// The error responses of `/embed`, in TEI's shape.
pub struct TeiErrors;

impl IntoResponses for TeiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses("TeiErrorResponse", TEI_ERRORS)
    }
}

/// The error responses of `/predict` (the upstream's own, when passed on, are its shape).
pub struct PredictErrors;

impl IntoResponses for PredictErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses("ErrorResponse", PREDICT_ERRORS)
    }
}

/// immich's `/predict` form; the document states its parts from the running settings (see
/// [`Rules`]).
#[derive(ToSchema)]
pub struct PredictForm {
    /// A JSON object of tasks, e.g. `{"clip": {"visual": {"modelName": "..."}}}`.
    pub entries: String,
    /// The image, for `clip.visual` (and forwarded tasks).
    pub image: Option<ImageBytes>,
    /// The text, for `clip.textual`.
    pub text: Option<String>,
}

/// What `/predict` answers, as immich reads it.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct PredictAnswer {
    /// The embedding as a string holding a JSON array of numbers (immich stores it as a
    /// pgvector literal).
    pub clip: Option<String>,
    /// For an image: its stored height, before any EXIF rotation (as PIL reports it).
    #[schema(minimum = 1)]
    pub image_height: Option<u32>,
    /// For an image: its stored width.
    #[schema(minimum = 1)]
    pub image_width: Option<u32>,
}

/// The error responses of `/v1/embeddings`, in OpenAI's shape.
pub struct OpenAiErrors;

impl IntoResponses for OpenAiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses("OpenAiErrorResponse", BODY_ERRORS)
    }
}

// --- The rules the running server enforces, stated in the document ---------------------------

/// What the server enforces that depends on its settings and model: the document served at
/// `/openapi.json` states these, so that any request it allows is served and any request the
/// server refuses is one it refuses (checked by `.ci/schemathesis.sh` and tests/openapi.rs).
/// The rules no schema keyword can state are in the descriptions: whether bytes decode as an
/// image (and its pixel count), the body size, a text's token count (`/embed` with
/// `truncate: false`), and a full queue.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `limits.max_texts_per_request`.
    pub max_texts: usize,
    /// `limits.max_images_per_request`.
    pub max_images: usize,
    /// `limits.max_text_chars`.
    pub max_text_chars: usize,
    /// The model's embedding size, once it is loaded (`dimensions` may not exceed it).
    pub dimensions: Option<usize>,
    /// The model names `/predict` accepts.
    pub immich_models: Vec<String>,
    /// Whether `/predict` forwards other tasks (`immich.upstream_url` is set).
    pub immich_forwards: bool,
}

fn text(max_chars: usize) -> Value {
    json!({ "type": "string", "maxLength": max_chars })
}

fn texts(max_items: usize, max_chars: usize) -> Value {
    json!({
        "description": "One text, or a list of texts answered in order.",
        "oneOf": [
            text(max_chars),
            { "type": "array", "items": text(max_chars), "minItems": 1, "maxItems": max_items },
        ],
    })
}

/// An image in JSON: the `image` format is base64 (standard alphabet, padding optional) or a
/// `data:image/...;base64,` URI of JPEG, PNG, WebP, GIF, BMP or TIFF bytes.
fn image() -> Value {
    json!({
        "type": "string",
        "format": "image",
        "minLength": 1,
        "description": "An image as base64 or a `data:image/...;base64,...` URI (JPEG, PNG, WebP, GIF, BMP, TIFF; at most `limits.max_image_pixels` pixels). Never a URL.",
    })
}

fn images(max_items: usize) -> Value {
    json!({ "type": "array", "items": image(), "minItems": 1, "maxItems": max_items })
}

fn dimensions(full: Option<usize>) -> Value {
    let mut schema = json!({ "type": ["integer", "null"], "minimum": 1 });
    if let Some(full) = full {
        schema["maximum"] = full.into();
    }
    schema
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": false,
    })
}

fn nullable_string() -> Value {
    json!({ "type": ["string", "null"] })
}

impl Rules {
    /// The request schemas of the native, OpenAI and TEI routes, by (path, content type).
    fn requests(&self) -> Vec<(&'static str, &'static str, Value)> {
        let (n, m) = (self.max_texts, self.max_text_chars);
        let openai_common = |input: Value, modality: Value| {
            json!({
                "input": input,
                "model": nullable_string(),
                "encoding_format": { "enum": ["float", "base64"] },
                "dimensions": dimensions(self.dimensions),
                "user": nullable_string(),
                "modality": modality,
            })
        };
        vec![
            (
                "/v1/embed/text",
                JSON,
                object(&["texts"], json!({ "texts": texts(n, m) })),
            ),
            (
                "/v1/tokenize",
                JSON,
                object(&["texts"], json!({ "texts": texts(n, m) })),
            ),
            (
                "/v1/embed/image",
                JSON,
                object(&["images"], json!({ "images": images(self.max_images) })),
            ),
            (
                "/v1/embed/image",
                MULTIPART,
                object(
                    &["image"],
                    json!({ "image": {
                        "type": "array",
                        "items": { "type": "string", "format": "binary" },
                        "minItems": 1,
                        "maxItems": self.max_images,
                    }}),
                ),
            ),
            (
                "/v1/similarity",
                JSON,
                json!({
                    "description": "Exactly one pair: `images` and `texts`, `texts` and `texts_b`, or `images` and `images_b`.",
                    "oneOf": [
                        object(&["images", "texts"], json!({ "images": images(self.max_images), "texts": texts(n, m) })),
                        object(&["texts", "texts_b"], json!({ "texts": texts(n, m), "texts_b": texts(n, m) })),
                        object(&["images", "images_b"], json!({ "images": images(self.max_images), "images_b": images(self.max_images) })),
                    ],
                }),
            ),
            (
                "/v1/classify",
                JSON,
                object(
                    &["images", "labels"],
                    json!({
                        "images": images(self.max_images),
                        "labels": texts(n, label_max_chars(m)),
                        "template": {
                            "type": ["string", "null"],
                            "pattern": "\\{\\}",
                            "maxLength": template_max_chars(m),
                            "description": "A prompt with `{}` where the label goes; default `a photo of a {}.`.",
                        },
                    }),
                ),
            ),
            (
                "/v1/embeddings",
                JSON,
                json!({
                    "description": "Texts (the default), or with `\"modality\": \"image\"` images.",
                    "oneOf": [
                        object(&["input"], openai_common(texts(n, m), json!({ "enum": ["text"] }))),
                        object(
                            &["input", "modality"],
                            openai_common(
                                json!({ "oneOf": [image(), images(self.max_images)] }),
                                json!({ "enum": ["image"] }),
                            ),
                        ),
                    ],
                }),
            ),
            (
                "/embed",
                JSON,
                object(
                    &["inputs"],
                    json!({
                        "inputs": texts(n, m),
                        "normalize": { "const": true, "description": "Only `true`: embeddings are unit length." },
                        "truncate": {
                            "type": ["boolean", "null"],
                            "description": "Cut texts at the context length (the default). `false` refuses (413) a text whose tokens fill the context, which no schema keyword can state.",
                        },
                        "dimensions": dimensions(self.dimensions),
                    }),
                ),
            ),
            ("/predict", MULTIPART, self.predict_form()),
        ]
    }

    /// immich's form: `entries` with an image for `clip.visual`, or with a text for
    /// `clip.textual`; forwarded tasks (when an upstream is set) are objects passed on as they
    /// are.
    fn predict_form(&self) -> Value {
        let model = |options: Value| {
            object(
                &["modelName"],
                json!({ "modelName": { "enum": self.immich_models }, "options": options }),
            )
        };
        let entries = |kind: &str, options: Value| {
            let mut clip = object(&[kind], json!({}));
            clip["properties"][kind] = model(options);
            let mut entries = object(&[], json!({ "clip": clip }));
            entries["minProperties"] = 1.into();
            if self.immich_forwards {
                entries["additionalProperties"] = json!({ "type": "object" });
            } else {
                entries["required"] = json!(["clip"]);
            }
            entries
        };
        let no_options = json!({ "type": ["object", "null"], "additionalProperties": false });
        let language = json!({
            "type": ["object", "null"],
            "properties": { "language": nullable_string() },
            "additionalProperties": false,
        });
        json!({
            "description": "`entries` (a JSON object of tasks) with an `image` file for `clip.visual`, or with a `text` for `clip.textual`.",
            "oneOf": [
                object(&["entries", "image"], json!({
                    "entries": entries("visual", no_options),
                    "image": { "type": "string", "format": "binary", "description": "The image (as PIL reads it: JPEG, PNG, WebP, GIF, BMP, TIFF)." },
                })),
                object(&["entries", "text"], json!({
                    "entries": entries("textual", language),
                    // A form part is text whatever it spells (`12`, `true`), so no type to
                    // violate; only a missing part (what a null becomes) or a repeated one (what
                    // a list becomes) is refused.
                    "text": {
                        "not": { "type": ["null", "array"] },
                        "maxLength": self.max_text_chars,
                        "description": "The text, in any language; a part's content is read as text.",
                    },
                })),
            ],
        })
    }

    /// States the rules in a document built from the routes' annotations.
    pub fn apply(&self, doc: &mut Value) {
        for (path, content_type, schema) in self.requests() {
            set_request_schema(doc, path, content_type, schema);
        }
        let answer = &mut doc["components"]["schemas"]["PredictAnswer"];
        if answer.is_object() {
            answer["additionalProperties"] = self.immich_forwards.into();
        }
    }
}

const JSON: &str = "application/json";
const MULTIPART: &str = "multipart/form-data";

/// Replaces the schema of an operation's request body (the component it names, if it names
/// one), keeping the description the annotations gave it.
fn set_request_schema(doc: &mut Value, path: &str, content_type: &str, mut schema: Value) {
    let content = &mut doc["paths"][path]["post"]["requestBody"]["content"][content_type];
    if !content.is_object() {
        return;
    }
    let target = match content["schema"]["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default().to_string();
            &mut doc["components"]["schemas"][name]
        }
        None => &mut content["schema"],
    };
    if schema.get("description").is_none() {
        if let Some(description) = target.get("description") {
            schema["description"] = description.clone();
        }
    }
    // Property descriptions from the annotations, where the rule has none of its own.
    if let (Some(old), Some(new)) = (
        target.get("properties").cloned(),
        schema.get_mut("properties").and_then(Value::as_object_mut),
    ) {
        for (name, property) in new.iter_mut() {
            if property.get("description").is_none() {
                if let Some(description) = old[name].get("description") {
                    property["description"] = description.clone();
                }
            }
        }
    }
    *target = schema;
}
