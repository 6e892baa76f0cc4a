//! The path every embedding takes after the body is read, shared by all routes:
//! validate -> preprocess (images on the blocking pool, texts inline) -> queue -> await each
//! item's own answer, in input order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::error::ApiError;
use super::state::{AppState, Serving};
use crate::batcher::{Batcher, InferError, QueueFull};
use crate::embedding::Embedding;
use crate::preprocess::image::{decode_rgb, DecodeLimits, ImageError};
use crate::preprocess::pixels::PixelTensor;
use crate::preprocess::text::TokenIds;

/// What clients are told to wait when a queue is full.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Decodes and preprocesses images on the blocking pool (a bounded number at a time), so
/// decoding overlaps inference and never stalls the async runtime.
pub async fn preprocess_images(
    state: &AppState,
    serving: &Serving,
    images: Vec<Bytes>,
) -> Result<Vec<PixelTensor>, ApiError> {
    let limits = DecodeLimits::for_pixels(state.settings().limits.max_image_pixels);
    let exif = state.settings().model.exif;
    let mut tasks = Vec::with_capacity(images.len());
    for bytes in images {
        let permits = serving.decode_permits.clone();
        let engine = serving.engine.clone();
        let index = tasks.len();
        tasks.push(tokio::spawn(async move {
            // The semaphore is never closed; a closed one would only mean shutdown.
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| ApiError::NotReady)?;
            let span = tracing::debug_span!("preprocess_image", index, bytes = bytes.len());
            tokio::task::spawn_blocking(move || {
                let _enter = span.enter();
                decode_rgb(&bytes, &limits, exif)
                    .map(|rgb| engine.folder.preprocess.tensor(&rgb))
                    .map_err(|e| image_error(e, index))
            })
            .await
            .map_err(|e| ApiError::Internal {
                log: format!("decoding image {index} crashed: {e}"),
            })?
        }));
    }
    // Dropping this future (the client went away) aborts nothing already running, but the
    // results are simply discarded; each task holds at most one decode permit.
    let mut tensors = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.into_iter().enumerate() {
        let tensor = task.await.map_err(|e| ApiError::Internal {
            log: format!("decoding image {index} failed to join: {e}"),
        })??;
        tensors.push(tensor);
    }
    Ok(tensors)
}

fn image_error(e: ImageError, index: usize) -> ApiError {
    match e {
        ImageError::TooLarge { .. } => ApiError::over_limit(
            "image_too_large",
            format!("image {index}: {e}; resize it before sending"),
            Some(index),
        ),
        other => ApiError::InvalidImage {
            message: format!("image {index}: {other}"),
            index,
        },
    }
}

/// Validates texts against the limits and tokenizes them.
pub fn tokenize(
    state: &AppState,
    serving: &Serving,
    texts: &[String],
) -> Result<Vec<TokenIds>, ApiError> {
    let limits = &state.settings().limits;
    for (index, text) in texts.iter().enumerate() {
        let chars = text.chars().count();
        if chars > limits.max_text_chars {
            return Err(ApiError::over_limit(
                "text_too_long",
                format!(
                    "text {index} has {chars} characters; the limit is {} (the model reads at most {} tokens anyway)",
                    limits.max_text_chars, serving.engine.folder.context_length
                ),
                Some(index),
            ));
        }
    }
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            serving
                .engine
                .tokenizer
                .encode(text)
                .map_err(|e| ApiError::Internal {
                    log: format!("tokenizing text {index}: {e}"),
                })
        })
        .collect()
}

/// Queues items on a tower and awaits each answer in order. All items are queued or none.
pub async fn run_on<I: Send + 'static>(
    state: &AppState,
    batcher: &Batcher<I>,
    items: Vec<(I, usize)>,
) -> Result<Vec<Embedding>, ApiError> {
    let receivers = batcher.submit(items).map_err(|QueueFull { tower, .. }| {
        state.metrics().queue_rejection(tower);
        ApiError::Overloaded {
            retry_after: RETRY_AFTER,
        }
    })?;
    let mut out = Vec::with_capacity(receivers.len());
    for rx in receivers {
        let answer = rx.await.unwrap_or(Err(InferError::WorkerGone));
        out.push(answer.map_err(|e| ApiError::Internal { log: e.to_string() })?);
    }
    Ok(out)
}

/// Images (encoded bytes) to embeddings.
pub async fn embed_images(
    state: &AppState,
    serving: &Serving,
    images: Vec<Bytes>,
) -> Result<Vec<Embedding>, ApiError> {
    // A worker with a lone image lingers only while others are being decoded.
    let expected = serving.images.expect(images.len());
    let tensors = preprocess_images(state, serving, images).await?;
    drop(expected);
    run_on(
        state,
        &serving.images,
        tensors.into_iter().map(|t| (t, 1)).collect(),
    )
    .await
}

/// Texts to embeddings. Long requests are tokenized on the blocking pool.
pub async fn embed_texts(
    state: &AppState,
    serving: &Serving,
    texts: Arc<Vec<String>>,
) -> Result<Vec<Embedding>, ApiError> {
    let ids = tokenize_off_runtime(state, serving, texts).await?;
    embed_token_ids(state, serving, ids).await
}

/// [`tokenize`], on the blocking pool when the texts are long enough to stall the runtime.
pub async fn tokenize_off_runtime(
    state: &AppState,
    serving: &Serving,
    texts: Arc<Vec<String>>,
) -> Result<Vec<TokenIds>, ApiError> {
    let total: usize = texts.iter().map(String::len).sum();
    if total <= 16 * 1024 {
        return tokenize(state, serving, &texts);
    }
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let serving = state.serving_for_accepted().ok_or(ApiError::NotReady)?;
        tokenize(&state, serving, &texts)
    })
    .await
    .map_err(|e| ApiError::Internal {
        log: format!("tokenizer task: {e}"),
    })?
}

/// Token ids (from [`tokenize`]) to embeddings: recent ones from the text cache, the others on
/// the text tower (each costs its length), which then go into the cache.
pub async fn embed_token_ids(
    state: &AppState,
    serving: &Serving,
    ids: Vec<TokenIds>,
) -> Result<Vec<Embedding>, ApiError> {
    let cache = &serving.text_cache;
    let mut out: Vec<Option<Embedding>> = ids.iter().map(|t| cache.get(t.as_slice())).collect();
    let (slots, misses): (Vec<usize>, Vec<TokenIds>) = ids
        .into_iter()
        .enumerate()
        .filter(|(i, _)| out[*i].is_none())
        .unzip();
    if cache.capacity() > 0 {
        state
            .metrics()
            .text_cache(out.len() - misses.len(), misses.len());
    }
    if !misses.is_empty() {
        let keys: Vec<TokenIds> = if cache.capacity() > 0 {
            misses.clone()
        } else {
            Vec::new()
        };
        let embedded = run_on(
            state,
            &serving.texts,
            misses
                .into_iter()
                .map(|t| {
                    let len = t.len();
                    (t, len)
                })
                .collect(),
        )
        .await?;
        for (i, (slot, e)) in slots.into_iter().zip(embedded).enumerate() {
            if let Some(key) = keys.get(i) {
                cache.put(key.as_slice(), e.clone());
            }
            out[slot] = Some(e);
        }
    }
    Ok(out
        .into_iter()
        .map(|e| e.expect("every text is a cache hit or was just embedded"))
        .collect())
}
