//! The JSON bodies of the routes other servers' clients speak: OpenAI's embeddings and model
//! list, text-embeddings-inference's `/embed`, and immich's `/predict` entries.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::{json_kind, one_or_many, whole_number, TextsInput};

// --- The OpenAI-compatible embeddings route -------------------------------------------------

/// `POST /v1/embeddings`, as the OpenAI embeddings API takes it, plus `modality` (as the
/// `infinity` server does) to embed images through the same route.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiEmbeddingsRequest {
    /// A string or a list of strings: texts, or with `"modality": "image"` images as `data:`
    /// URIs or bare base64. Token-id arrays are refused: this model's XLM-RoBERTa ids are not
    /// OpenAI's.
    #[schema(value_type = OpenAiInput)]
    pub input: serde_json::Value,
    /// Accepted and not checked: the answer names the model actually served.
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (the default) or `base64`: little-endian f32 bytes, base64-encoded.
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Keep the first `dimensions` components and renormalize to unit length (1 to the model's
    /// dimensions).
    #[serde(default, deserialize_with = "whole_number")]
    pub dimensions: Option<usize>,
    /// Accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// `text` (the default) or `image`.
    #[serde(default)]
    pub modality: Modality,
}

/// What `input` holds: one item, or a list of items.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiInput {
    /// One text (or image).
    One(String),
    /// Several, embedded in one request and answered in order.
    Many(Vec<String>),
}

/// How the embeddings are written in the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// A base64 string of the little-endian f32 bytes (4 per dimension).
    Base64,
}

/// What the inputs are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Texts, in any language.
    #[default]
    Text,
    /// Images as `data:image/...;base64,...` URIs or bare base64.
    Image,
}

/// The answer of `POST /v1/embeddings`, in OpenAI's shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiEmbeddingsResponse {
    /// Always `list`.
    #[schema(value_type = String, pattern = "^list$")]
    pub object: String,
    /// One entry per input, in input order.
    pub data: Vec<OpenAiEmbedding>,
    /// The model actually served.
    pub model: String,
    /// Tokens read.
    pub usage: OpenAiUsage,
}

/// One input's embedding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    #[schema(value_type = String, pattern = "^embedding$")]
    pub object: String,
    /// The input's position in the request.
    pub index: usize,
    /// Unit length (after truncation to `dimensions`, if asked).
    pub embedding: OpenAiVector,
}

/// An embedding as numbers or as base64, per the request's `encoding_format`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OpenAiVector {
    /// `encoding_format: float`.
    Float(Vec<f32>),
    /// `encoding_format: base64`: little-endian f32 bytes.
    Base64(String),
}

/// Token counts, from the model's own tokenizer (special tokens included, after truncation).
/// Images count no tokens.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiUsage {
    /// Tokens in the inputs.
    pub prompt_tokens: usize,
    /// The same as `prompt_tokens`: embeddings generate nothing.
    pub total_tokens: usize,
}

/// The error shape of `/v1/embeddings`, as OpenAI's clients expect it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiErrorResponse {
    /// What went wrong.
    pub error: OpenAiErrorDetail,
}

/// One error in OpenAI's shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiErrorDetail {
    /// What went wrong and what to do next.
    pub message: String,
    /// `invalid_request_error` for 4xx, `server_error` for 5xx.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// clipserve's own error code (the `type` of its other routes), e.g. `text_too_long`.
    pub code: Option<String>,
}

/// `GET /v1/models`: the models served, in OpenAI's list shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiModelList {
    /// Always `list`.
    #[schema(value_type = String, pattern = "^list$")]
    pub object: String,
    /// The one model this server serves.
    pub data: Vec<OpenAiModel>,
}

/// One model, as OpenAI describes it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpenAiModel {
    /// The name to send as `model` (any name is accepted; this is what answers).
    pub id: String,
    /// Always `model`.
    #[schema(value_type = String, pattern = "^model$")]
    pub object: String,
    /// When the server started serving it, in Unix seconds.
    pub created: u64,
    /// Always `clipserve`.
    pub owned_by: String,
}

// --- The text-embeddings-inference route ----------------------------------------------------

/// `POST /embed`, as text-embeddings-inference takes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeiEmbedRequest {
    /// A text or a list of texts, in any language.
    #[serde(deserialize_with = "one_or_many")]
    #[schema(value_type = TextsInput)]
    pub inputs: Vec<String>,
    /// Only `true`: embeddings are unit length.
    #[serde(default = "always")]
    pub normalize: bool,
    /// Cut texts at the model's context length (the default); `false` refuses a text that
    /// fills it.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Keep the first `dimensions` components and renormalize to unit length.
    #[serde(default, deserialize_with = "whole_number")]
    pub dimensions: Option<usize>,
}

fn always() -> bool {
    true
}

/// TEI's error shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TeiErrorResponse {
    /// What went wrong and what to do next.
    pub error: String,
    /// The kind of error, which fixes the status.
    pub error_type: TeiErrorType,
}

/// TEI's error kinds, each with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum TeiErrorType {
    /// 503: the model is not loaded, or the server is shutting down.
    Unhealthy,
    /// 424: inference failed (the cause is in the server log).
    Backend,
    /// 429: the queue is full; retry after `Retry-After` seconds.
    Overloaded,
    /// 413 for too many or too long inputs; other refused requests keep their own status.
    Validation,
    /// 422: a text could not be tokenized.
    Tokenizer,
    /// 400: no inputs.
    Empty,
}

// --- immich's /predict ------------------------------------------------------------------------

/// The `clip` task of immich's `entries`: one model type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipTask {
    /// Embed the `image` part.
    #[serde(default, deserialize_with = "object_or_null")]
    pub visual: Option<VisualEntry>,
    /// Embed the `text` part.
    #[serde(default, deserialize_with = "object_or_null")]
    pub textual: Option<TextualEntry>,
}

/// `clip.visual`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisualEntry {
    /// immich's model name.
    #[serde(rename = "modelName")]
    pub model_name: String,
    /// immich sends none; an empty object is accepted.
    #[serde(default, deserialize_with = "object_or_null")]
    pub options: Option<NoOptions>,
}

/// Options of a model type that takes none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// `clip.textual`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextualEntry {
    /// immich's model name.
    #[serde(rename = "modelName")]
    pub model_name: String,
    /// The search language.
    #[serde(default, deserialize_with = "object_or_null")]
    pub options: Option<TextualOptions>,
}

/// `clip.textual.options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextualOptions {
    /// The user's language (e.g. `de`): immich uses it only for NLLB models; this model reads
    /// every language as it is.
    #[serde(default)]
    pub language: Option<String>,
}

/// An optional nested object, strictly: serde's derived structs also accept a JSON array of
/// their fields (`[]` would pass as an empty options object), which the documented schema, and
/// so a client that trusts it, says is refused.
fn object_or_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        value @ serde_json::Value::Object(_) => serde_json::from_value(value)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected an object or null, got {}",
            json_kind(&other)
        ))),
    }
}
