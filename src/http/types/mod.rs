//! The JSON bodies of the API, in one place. Field names are fixed: clients rely on them.
//! Requests refuse unknown fields, so a misspelt field is an error rather than ignored, and a
//! list of texts may be sent as a single string.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

mod compat;

pub use compat::*;

/// A string or a list of strings: what `texts`, `labels` and `inputs` take.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TextsInput {
    /// One text: the same as a list of one.
    One(String),
    /// Texts, answered in order.
    Many(Vec<String>),
}

impl From<TextsInput> for Vec<String> {
    fn from(input: TextsInput) -> Vec<String> {
        match input {
            TextsInput::One(text) => vec![text],
            TextsInput::Many(texts) => texts,
        }
    }
}

/// Reads a string or a list of strings as a list.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    TextsInput::deserialize(d)
        .map(Vec::from)
        .map_err(|_| serde::de::Error::custom("expected a string or a list of strings"))
}

/// An optional field that, when present, is a string or a list of strings (`null` is refused,
/// as the document says: a field is sent or left out).
fn some_one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(d).map(Some)
}

/// An optional count such as `dimensions`: a whole number, written `8` or `8.0` (JSON Schema's
/// `integer` allows both), or `null`.
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(n) = n.as_u64() {
        return usize::try_from(n)
            .map(Some)
            .map_err(serde::de::Error::custom);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64 => Ok(Some(f as usize)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number of at least 0, got {n}"
        ))),
    }
}

/// An optional list that, when present, is a list (`null` is refused).
fn some_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Vec::<String>::deserialize(d).map(Some)
}

/// `POST /v1/embed/image` as JSON: each image as base64 or a `data:` URI.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagesRequest {
    /// Base64 (standard alphabet) or `data:image/...;base64,...` strings.
    pub images: Vec<String>,
}

/// `POST /v1/embed/text` and `POST /v1/tokenize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextsRequest {
    /// Texts in any language, or one text; an empty text is valid (it embeds as `<s></s>`).
    #[serde(deserialize_with = "one_or_many")]
    #[schema(value_type = TextsInput)]
    pub texts: Vec<String>,
}

/// Embeddings in input order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// The model that produced them.
    pub model: String,
    /// Length of each embedding.
    pub dimensions: usize,
    /// Unit-length embeddings, one per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
}

/// Token ids as the text encoder sees them, without padding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    /// One list of ids per text, `<s>` first and `</s>` last, truncated to the context length.
    pub ids: Vec<Vec<u32>>,
}

/// `POST /v1/similarity`: images against texts, texts against texts, or images against
/// images. Rows are `images` (or `texts` when there are no images); columns are `texts`,
/// `texts_b` or `images_b`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarityRequest {
    /// Row images (base64 or data URIs).
    #[serde(default, deserialize_with = "some_list")]
    pub images: Option<Vec<String>>,
    /// Column texts against images, or row texts against `texts_b` (a list, or one text).
    #[serde(default, deserialize_with = "some_one_or_many")]
    #[schema(value_type = Option<TextsInput>)]
    pub texts: Option<Vec<String>>,
    /// Column texts for text-to-text similarity (a list, or one text).
    #[serde(default, deserialize_with = "some_one_or_many")]
    #[schema(value_type = Option<TextsInput>)]
    pub texts_b: Option<Vec<String>>,
    /// Column images for image-to-image similarity.
    #[serde(default, deserialize_with = "some_list")]
    pub images_b: Option<Vec<String>>,
}

/// Cosine scores and per-row softmax probabilities.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SimilarityResponse {
    /// The model that produced them.
    pub model: String,
    /// `scores[i][j]`: cosine of row item i and column item j.
    pub scores: Vec<Vec<f32>>,
    /// `probabilities[i]`: softmax over columns of `logit_scale x scores[i]`.
    pub probabilities: Vec<Vec<f32>>,
}

/// `POST /v1/classify`: zero-shot classification of images over labels.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    /// Images (base64 or data URIs).
    pub images: Vec<String>,
    /// Candidate labels, in any language (a list, or one label).
    #[serde(deserialize_with = "one_or_many")]
    #[schema(value_type = TextsInput)]
    pub labels: Vec<String>,
    /// A prompt with `{}` where the label goes; default `a photo of a {}.`.
    #[serde(default)]
    pub template: Option<String>,
}

/// The zero-shot prompt `/v1/classify` uses when a request names none.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// The longest `template` `/v1/classify` takes, in characters, when texts may have
/// `max_text_chars`: a quarter of it, at least the default template's length and at most 256.
/// With [`label_max_chars`] it keeps every prompt within the text limit, and lets the document
/// state both as plain lengths.
pub fn template_max_chars(max_text_chars: usize) -> usize {
    let default = DEFAULT_TEMPLATE.chars().count();
    (max_text_chars / 4).clamp(default, 256)
}

/// The longest label `/v1/classify` takes: whatever the longest template leaves of the text
/// limit (its `{}` is replaced by the label).
pub fn label_max_chars(max_text_chars: usize) -> usize {
    (max_text_chars + 2).saturating_sub(template_max_chars(max_text_chars))
}

/// One label's probability for one image.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LabelScore {
    /// The label as given.
    pub label: String,
    /// Softmax probability over the labels.
    pub probability: f32,
    /// Cosine of the image with the prompted label.
    pub score: f32,
}

/// The labels of one image, most probable first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageLabels {
    /// Labels sorted by probability, highest first.
    pub labels: Vec<LabelScore>,
}

/// Zero-shot results, one entry per image in input order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassifyResponse {
    /// The model that produced them.
    pub model: String,
    /// One entry per image.
    pub results: Vec<ImageLabels>,
}

/// `GET /info`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InfoResponse {
    /// The model served.
    pub model: String,
    /// Embedding dimensions.
    pub dimensions: usize,
    /// Maximum tokens per text, special tokens included.
    pub context_length: usize,
    /// The exp'd logit scale used for probabilities.
    pub logit_scale: f32,
    /// Image input size (height, width).
    pub image_size: [u32; 2],
    /// The request limits in force.
    pub limits: crate::config::LimitSettings,
    /// Whether EXIF orientation is applied (`apply`) or not (`ignore`).
    #[schema(schema_with = exif_policy_schema)]
    pub exif: crate::preprocess::image::ExifPolicy,
    /// The server's version.
    pub version: String,
    /// What each tower's products by its weight matrices run in, chosen at start-up.
    pub precision: PrecisionInfo,
}

/// What each tower runs (`model.image_precision`, `model.text_precision`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PrecisionInfo {
    /// The image tower.
    pub image: TowerPrecisionInfo,
    /// The text tower.
    pub text: TowerPrecisionInfo,
}

/// One tower's arithmetic and the start-up check behind it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TowerPrecisionInfo {
    /// `f32`, `bf16` (bf16 inputs, f32 sums), `int8` (int8 inputs, integer sums scaled to
    /// f32) or `int16` (as int8, in 16-bit integers of 10-bit levels).
    #[schema(example = "int8")]
    pub active: String,
    /// The highest of the lowest cosines the checks found (`checks`): the active arithmetic's
    /// when it is a lossy one, the closest any came when all failed; null when nothing was
    /// checked.
    pub check_min_cosine: Option<f64>,
    /// Each lossy arithmetic's check at start-up: the lowest cosine between a calibration
    /// item's embedding in it and in f32, or null where it did not run.
    pub checks: LossyInfo,
    /// How many times as fast a product ran in each lossy arithmetic as in f32 on this CPU,
    /// measured once at start-up for `auto` (or the arithmetic asked for) where the CPU has its
    /// instructions; `auto` tries one only from 1.15 up. Null otherwise.
    pub speedups: LossyInfo,
    /// Why: `f32_requested`, `unsupported_cpu`, `not_faster`, `check_passed`, `check_failed`
    /// or `requested`.
    #[schema(example = "check_passed")]
    pub reason: String,
}

/// One figure for each lossy arithmetic, null where there is none.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LossyInfo {
    /// bf16 products.
    pub bf16: Option<f64>,
    /// int8 products.
    pub int8: Option<f64>,
    /// 16-bit integer products.
    pub int16: Option<f64>,
}

impl From<crate::engine::Lossy<Option<f64>>> for LossyInfo {
    fn from(l: crate::engine::Lossy<Option<f64>>) -> Self {
        LossyInfo {
            bf16: l.bf16,
            int8: l.int8,
            int16: l.int16,
        }
    }
}

impl From<crate::engine::PrecisionReport> for PrecisionInfo {
    fn from(report: crate::engine::PrecisionReport) -> Self {
        let tower = |p: crate::engine::TowerPrecision| TowerPrecisionInfo {
            active: p.active.as_str().into(),
            check_min_cosine: p.check_min_cosine(),
            checks: p.checks.into(),
            speedups: p.speedups.into(),
            reason: serde_json::to_value(p.reason)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        };
        PrecisionInfo {
            image: tower(report.image),
            text: tower(report.text),
        }
    }
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    /// `ok`, `loading` or `draining`.
    pub status: String,
}

/// The error shape of every route but `/v1/embeddings` (see [`crate::http::error`]).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error: a stable code, a message for people, and the offending item if there is one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_image`, `too_many_items`, `overloaded`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_image")]
    pub kind: String,
    /// What went wrong and what to do next.
    pub message: String,
    /// The index of the offending item in the request's list, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

/// The schema of [`crate::preprocess::image::ExifPolicy`], which lives outside the HTTP layer.
fn exif_policy_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["apply", "ignore"]))
        .build()
}

/// A JSON value's type, as an error message names it.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
