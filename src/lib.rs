//! # clipserve
//!
//! Multilingual CLIP embeddings over HTTP: OpenCLIP `xlm-roberta-base-ViT-B-32`
//! (`laion5b_s13b_b90k`) exported to ONNX, run by tract, served by axum.
//!
//! One request, from socket to model and back:
//!
//! ```text
//! http::server (accept, header timeout, graceful drain)
//!   └─ http::router (request id, trace, metrics, JSON errors, timeout, body limit, drain, key)
//!       └─ http::routes::* ─ http::extract (JSON / multipart / raw body, counts and sizes)
//!           └─ service (transport-free core: validate, cache, queue; typed ServiceError)
//!               ├─ preprocess::image + pixels (decode, EXIF, PIL-exact resize, crop, normalize)
//!               │   on the blocking pool
//!               ├─ preprocess::clean + text (OpenCLIP cleaning, XLM-R tokenizer, truncation)
//!               └─ batcher (bounded queue per tower, batches across requests, own thread,
//!                   one bad item fails only itself)
//!                   └─ engine (tract plans per shape bucket) ─► embedding (unit vectors)
//! ```
//!
//! [`config`] holds the settings, [`telemetry`] logs and metrics, [`app`] loads the model and
//! starts the service and the server for the `serve` command, [`hub`] downloads a model
//! repository into the Hugging Face cache.
//! [`bulk`] is the `embed` command: a folder of images or a file of texts, embedded in bulk.

pub mod app;
pub mod batcher;
pub mod bulk;
pub mod config;
pub mod embedding;
pub mod engine;
pub mod http;
pub mod hub;
pub mod preprocess;
pub mod service;
pub mod telemetry;
