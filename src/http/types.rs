//! The JSON bodies of the API, in one place. Field names are fixed: clients rely on them.
//! Requests refuse unknown fields, so a misspelt field is an error rather than ignored.

use serde::{Deserialize, Serialize};

/// `POST /v1/embed/image` as JSON: each image as base64 or a `data:` URI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesRequest {
    /// Base64 (standard alphabet) or `data:image/...;base64,...` strings.
    pub images: Vec<String>,
}

/// `POST /v1/embed/text` and `POST /v1/tokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextsRequest {
    /// Texts in any language; an empty text is valid (it embeds as `<s></s>`).
    pub texts: Vec<String>,
}

/// Embeddings in input order.
#[derive(Debug, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    /// The model that produced them.
    pub model: String,
    /// Length of each embedding.
    pub dimensions: usize,
    /// Unit-length embeddings, one per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
}

/// Token ids as the text encoder sees them, without padding.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenizeResponse {
    /// One list of ids per text, `<s>` first and `</s>` last, truncated to the context length.
    pub ids: Vec<Vec<u32>>,
}

/// `POST /v1/similarity`: images against texts, texts against texts, or images against
/// images. Rows are `images` (or `texts` when there are no images); columns are `texts`,
/// `texts_b` or `images_b`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarityRequest {
    /// Row images (base64 or data URIs).
    #[serde(default)]
    pub images: Option<Vec<String>>,
    /// Column texts against images, or row texts against `texts_b`.
    #[serde(default)]
    pub texts: Option<Vec<String>>,
    /// Column texts for text-to-text similarity.
    #[serde(default)]
    pub texts_b: Option<Vec<String>>,
    /// Column images for image-to-image similarity.
    #[serde(default)]
    pub images_b: Option<Vec<String>>,
}

/// Cosine scores and per-row softmax probabilities.
#[derive(Debug, Serialize, Deserialize)]
pub struct SimilarityResponse {
    /// The model that produced them.
    pub model: String,
    /// `scores[i][j]`: cosine of row item i and column item j.
    pub scores: Vec<Vec<f32>>,
    /// `probabilities[i]`: softmax over columns of `logit_scale x scores[i]`.
    pub probabilities: Vec<Vec<f32>>,
}

/// `POST /v1/classify`: zero-shot classification of images over labels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    /// Images (base64 or data URIs).
    pub images: Vec<String>,
    /// Candidate labels, in any language.
    pub labels: Vec<String>,
    /// A prompt with `{}` where the label goes; default `a photo of a {}.`.
    #[serde(default)]
    pub template: Option<String>,
}

/// One label's probability for one image.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabelScore {
    /// The label as given.
    pub label: String,
    /// Softmax probability over the labels.
    pub probability: f32,
    /// Cosine of the image with the prompted label.
    pub score: f32,
}

/// The labels of one image, most probable first.
#[derive(Debug, Serialize, Deserialize)]
pub struct ImageLabels {
    /// Labels sorted by probability, highest first.
    pub labels: Vec<LabelScore>,
}

/// Zero-shot results, one entry per image in input order.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClassifyResponse {
    /// The model that produced them.
    pub model: String,
    /// One entry per image.
    pub results: Vec<ImageLabels>,
}

/// `GET /info`.
#[derive(Debug, Serialize, Deserialize)]
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
    /// Whether EXIF orientation is applied.
    pub exif: crate::preprocess::image::ExifPolicy,
    /// The server's version.
    pub version: String,
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `ok`, `loading` or `draining`.
    pub status: String,
}
