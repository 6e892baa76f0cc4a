//! `GET /ping` and `POST /predict`: the protocol of immich-machine-learning, so that immich's
//! Machine Learning URL can point at clipserve for smart search (CLIP).
//!
//! immich's server sends `multipart/form-data` with an `entries` part, a JSON object of tasks
//! (`{"clip": {"visual": {"modelName": "..."}}}`), and either an `image` file part or a `text`
//! part; it reads `clip` as a string holding a JSON array (stored as a pgvector literal) and, for
//! images, `imageHeight` and `imageWidth` as PIL measures them: the stored size, before any
//! EXIF rotation. Embeddings are the service's, equal to `/v1/embed/*` for the same input.
//!
//! Tasks clipserve does not serve (`facial-recognition`, `ocr`) are forwarded with the same
//! input to `immich.upstream_url`, an immich-machine-learning instance; a request that mixes
//! both is split, run concurrently and the answers merged. immich sends no credentials, so with
//! `server.api_key` set these routes answer 401 to it (see the README).

use std::io::Cursor;
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::http::error::ApiError;
use crate::http::schema::PredictErrors;
use crate::http::state::AppState;
use crate::http::types::{ClipTask, ErrorResponse};
use crate::service::Service;

mod upstream;

pub use upstream::Upstream;
use upstream::{forward, merge};

/// immich's name for the model this server serves (its `_OPENCLIP_MODELS` entry).
pub const IMMICH_MODEL: &str = "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k";

/// The organisation immich downloads its exports from, which its model names may carry.
const IMMICH_ORG: &str = "immich-app/";

/// The task clipserve serves itself; every other one is forwarded.
pub const CLIP_TASK: &str = "clip";

/// immich's name of this model, with and without its organisation.
pub fn immich_names() -> Vec<String> {
    vec![
        IMMICH_MODEL.to_string(),
        format!("{IMMICH_ORG}{IMMICH_MODEL}"),
    ]
}

/// The model names `/predict` accepts: immich's name with and without its organisation, and
/// the name `/info` reports (a local folder of this architecture included).
pub fn accepted_model_names(service: &Service) -> Vec<String> {
    let mut names = immich_names();
    let served = &service.model().name;
    if !names.contains(served) {
        names.push(served.clone());
    }
    names
}

/// immich's health check: `pong` once the model is loaded and the server is not draining.
#[utoipa::path(
    get,
    path = "/ping",
    tag = "immich",
    responses(
        (status = 200, description = "`pong`: ready to serve.", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong API key (only when the server sets `server.api_key`; immich sends none).", body = ErrorResponse),
        (status = 503, description = "The model is loading or the server is shutting down: retry after `Retry-After` seconds.", body = ErrorResponse,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security((), ("api_key" = [])),
)]
pub async fn ping(State(state): State<AppState>) -> Response {
    if state.ready() {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "pong",
        )
            .into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

/// Runs immich's `clip` task here and forwards the others (see the module docs).
#[utoipa::path(
    post,
    path = "/predict",
    tag = "immich",
    request_body(
        description = "immich's form: `entries` (a JSON object of tasks) with an `image` file or a `text`.",
        content((crate::http::schema::PredictForm = "multipart/form-data")),
    ),
    responses(
        (status = 200, description = "`clip`: the embedding as a string holding a JSON array; for images `imageHeight` and `imageWidth`; forwarded tasks' answers as the upstream gave them.", body = crate::http::schema::PredictAnswer),
        PredictErrors,
    ),
    security((), ("api_key" = [])),
)]
pub async fn predict(
    State(state): State<AppState>,
    Extension(upstream): Extension<Upstream>,
    req: Request,
) -> Result<Response, ApiError> {
    let service = state.service()?.clone();
    let form = read_form(req, &state).await?;
    let mut tasks: Map<String, Value> = serde_json::from_str(&form.entries).map_err(|e| {
        ApiError::bad_request(format!(
            "`entries` must be a JSON object of tasks, e.g. {{\"clip\": {{\"visual\": {{\"modelName\": \"{IMMICH_MODEL}\"}}}}}}: {e}"
        ))
    })?;
    if tasks.is_empty() {
        return Err(ApiError::bad_request("`entries` names no task"));
    }
    let input = match (form.image, form.text) {
        (Some(image), None) => Input::Image(image),
        (None, Some(text)) => Input::Text(text),
        (None, None) => {
            return Err(ApiError::bad_request(
                "send an `image` file part or a `text` part",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send an `image` file part or a `text` part, not both",
            ))
        }
    };
    let clip = tasks
        .remove(CLIP_TASK)
        .map(|value| clip_job(value, &input, &service))
        .transpose()?;
    if let Some((name, value)) = tasks.iter().find(|(_, v)| !v.is_object()) {
        return Err(ApiError::bad_request(format!(
            "task `{name}` must be an object of model types, got {value}"
        )));
    }
    let forwarded = if tasks.is_empty() {
        None
    } else if upstream.is_set() {
        // A request of forwarded tasks only goes on exactly as it came.
        Some(if clip.is_none() {
            form.entries
        } else {
            Value::Object(tasks).to_string()
        })
    } else {
        let names: Vec<&str> = tasks.keys().map(String::as_str).collect();
        return Err(ApiError::bad_request(not_served_message(&names, &upstream)));
    };

    let clip_answer = async {
        match clip {
            Some(ClipJob::Image(bytes)) => embed_image(&service, bytes).await.map(Some),
            Some(ClipJob::Text(text)) => embed_text(&service, text).await.map(Some),
            None => Ok(None),
        }
    };
    let upstream_answer = async {
        match &forwarded {
            Some(entries) => Some(forward(&upstream, entries.clone(), &input).await),
            None => None,
        }
    };
    let (clip_answer, upstream_answer) = tokio::join!(clip_answer, upstream_answer);
    let clip_answer = clip_answer?;
    match (clip_answer, upstream_answer) {
        (Some(ours), None) => Ok(Json(Value::Object(ours)).into_response()),
        (None, Some(theirs)) => Ok(theirs.into_response()),
        (Some(ours), Some(theirs)) => Ok(merge(ours, theirs)),
        (None, None) => Err(ApiError::Internal {
            log: "a /predict request with tasks ran none".into(),
        }),
    }
}

/// The parts of immich's form.
pub struct PredictForm {
    /// The `entries` part: the tasks, as JSON text.
    pub entries: String,
    /// The `image` file part.
    pub image: Option<FilePart>,
    /// The `text` part.
    pub text: Option<String>,
}

/// An uploaded file, kept as it came so that it can be forwarded unchanged.
#[derive(Clone)]
pub struct FilePart {
    /// The file's bytes.
    pub bytes: Bytes,
    /// Its file name, if the part gave one.
    pub file_name: Option<String>,
    /// Its content type, if the part gave one.
    pub content_type: Option<String>,
}

enum Input {
    Image(FilePart),
    Text(String),
}

enum ClipJob {
    Image(Bytes),
    Text(String),
}

/// Reads the form, refusing unknown or repeated parts, within `server.body_timeout_ms`.
/// Public for the fuzz target `predict_form`.
pub async fn read_form(req: Request, state: &AppState) -> Result<PredictForm, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ct.starts_with("multipart/form-data") {
        return Err(ApiError::UnsupportedMediaType {
            message: format!(
                "/predict reads multipart/form-data (`entries` with `image` or `text`), as immich sends it; got `{}`",
                if ct.is_empty() { "no content type" } else { &ct }
            ),
        });
    }
    let limit = state.settings().limits.max_body_bytes;
    let timeout = Duration::from_millis(state.settings().server.body_timeout_ms);
    let mut multipart = Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
    let mut entries = None;
    let mut image = None;
    let mut text = None;
    loop {
        let field = match tokio::time::timeout(timeout, multipart.next_field()).await {
            Err(_) => return Err(ApiError::RequestTimeout),
            Ok(Err(e)) => return Err(multipart_error(e, limit)),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(field))) => field,
        };
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(str::to_string);
        let bytes = tokio::time::timeout(timeout, field.bytes())
            .await
            .map_err(|_| ApiError::RequestTimeout)?
            .map_err(|e| multipart_error(e, limit))?;
        let slot_taken = match name.as_str() {
            "entries" => entries.replace(utf8(&name, bytes)?).is_some(),
            "text" => text.replace(utf8(&name, bytes)?).is_some(),
            "image" => image
                .replace(FilePart {
                    bytes,
                    file_name,
                    content_type,
                })
                .is_some(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "multipart part `{name}` is not read by /predict: send `entries` with `image` or `text`"
                )))
            }
        };
        if slot_taken {
            return Err(ApiError::bad_request(format!(
                "multipart part `{name}` is sent twice"
            )));
        }
    }
    let entries = entries.ok_or_else(|| {
        ApiError::bad_request("no `entries` part: send the tasks as JSON, as immich does")
    })?;
    Ok(PredictForm {
        entries,
        image,
        text,
    })
}

fn utf8(name: &str, bytes: Bytes) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::bad_request(format!("multipart part `{name}` is not UTF-8 text")))
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::bad_request(format!("invalid multipart body: {}", e.body_text()))
    }
}

/// Checks the `clip` task against the input and the served model.
fn clip_job(value: Value, input: &Input, service: &Service) -> Result<ClipJob, ApiError> {
    // An object only: serde's derived struct would also take an array of its fields.
    let value = if value.is_object() {
        Ok(value)
    } else {
        Err(format!(
            "expected an object, got {}",
            crate::http::types::json_kind(&value)
        ))
    };
    let task: ClipTask = value.and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string())).map_err(|e| {
        ApiError::bad_request(format!(
            "`clip` must be {{\"visual\": {{\"modelName\": ...}}}} or {{\"textual\": {{\"modelName\": ..., \"options\": {{\"language\": ...}}}}}}: {e}"
        ))
    })?;
    let (model_name, job) =
        match (task.visual, task.textual, input) {
            (Some(visual), None, Input::Image(image)) => {
                (visual.model_name, ClipJob::Image(image.bytes.clone()))
            }
            // `language` only changes the prompt of NLLB models; this model reads any language.
            (None, Some(textual), Input::Text(text)) => {
                (textual.model_name, ClipJob::Text(text.clone()))
            }
            (Some(_), None, Input::Text(_)) => {
                return Err(ApiError::bad_request(
                    "`clip.visual` embeds an image: send an `image` part",
                ))
            }
            (None, Some(_), Input::Image(_)) => {
                return Err(ApiError::bad_request(
                    "`clip.textual` embeds a text: send a `text` part",
                ))
            }
            _ => return Err(ApiError::bad_request(
                "`clip` takes one model type: `visual` (with an image) or `textual` (with a text)",
            )),
        };
    let accepted = accepted_model_names(service);
    if !accepted.contains(&model_name) {
        return Err(ApiError::bad_request(format!(
            "model `{model_name}` is not served here: this server serves `{IMMICH_MODEL}` (also \
             accepted as {}); set it as immich's CLIP model",
            accepted[1..]
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    }
    Ok(job)
}

fn not_served_message(tasks: &[&str], upstream: &Upstream) -> String {
    let tasks = tasks
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if upstream.configured.is_empty() {
        format!(
            "task {tasks} is not served by clipserve, which serves `clip` only: set \
             `immich.upstream_url` to an immich-machine-learning instance to forward it, or turn \
             the task off in immich (Administration > Settings > Machine Learning)"
        )
    } else {
        format!(
            "task {tasks} cannot be forwarded: `immich.upstream_url` (`{}`) is not a valid URL",
            upstream.configured
        )
    }
}

/// `clip` as immich stores it: the embedding as a string holding a JSON array.
fn clip_value(embedding: &[f32]) -> Result<Value, ApiError> {
    serde_json::to_string(embedding)
        .map(Value::String)
        .map_err(|e| ApiError::Internal {
            log: format!("serializing an embedding: {e}"),
        })
}

async fn embed_image(service: &Service, bytes: Bytes) -> Result<Map<String, Value>, ApiError> {
    // PIL's size: what the header says, before any EXIF rotation (immich reads it that way).
    let size = image::ImageReader::new(Cursor::new(bytes.clone()))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    let embedding = service.embed_images(vec![bytes]).await?.remove(0);
    let (width, height) = size.ok_or_else(|| ApiError::InvalidImage {
        message: "image 0: its size could not be read".into(),
        index: 0,
    })?;
    let mut answer = Map::new();
    answer.insert(CLIP_TASK.into(), clip_value(embedding.as_slice())?);
    answer.insert("imageHeight".into(), height.into());
    answer.insert("imageWidth".into(), width.into());
    Ok(answer)
}

async fn embed_text(service: &Service, text: String) -> Result<Map<String, Value>, ApiError> {
    let embedding = service.embed_texts(vec![text]).await?.remove(0);
    let mut answer = Map::new();
    answer.insert(CLIP_TASK.into(), clip_value(embedding.as_slice())?);
    Ok(answer)
}
