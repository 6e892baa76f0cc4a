//! Images: decoded and preprocessed on the blocking pool (a bounded number at a time, so
//! decoding overlaps inference and never stalls the async runtime), then queued on the image
//! tower.

use bytes::Bytes;

use super::{InputRules, Service, ServiceError};
use crate::embedding::Embedding;
use crate::preprocess::image::{decode_rgb, ImageError};
use crate::preprocess::pixels::{PixelTensor, PreprocessConfig};

/// Decodes one encoded image and preprocesses it as the model folder says; `index` is its
/// position in the caller's request. The one way images become tensors, for the service and
/// the bulk command alike.
pub fn prepare_image(
    bytes: &[u8],
    preprocess: &PreprocessConfig,
    rules: &InputRules,
    index: usize,
) -> Result<PixelTensor, ServiceError> {
    let rgb = decode_rgb(bytes, &rules.decode, rules.exif).map_err(|e| match e {
        ImageError::TooLarge { .. } => ServiceError::ImageTooLarge {
            index,
            message: e.to_string(),
        },
        other => ServiceError::InvalidImage {
            index,
            message: other.to_string(),
        },
    })?;
    Ok(preprocess.tensor(&rgb))
}

impl Service {
    /// Encoded images to embeddings, in order. Every image is decoded before any is queued,
    /// and the first that fails fails the request.
    pub async fn embed_images(&self, images: Vec<Bytes>) -> Result<Vec<Embedding>, ServiceError> {
        // A worker with a lone image lingers only while others are being decoded.
        let expected = self.0.images.expect(images.len());
        let tensors = self.prepare_images(images).await;
        drop(expected);
        let tensors = tensors.into_iter().collect::<Result<Vec<_>, _>>()?;
        let positions = (0..tensors.len()).collect();
        let items = tensors.into_iter().map(|t| (t, 1)).collect();
        self.run_on(&self.0.images, items, positions).await
    }

    /// Decodes and preprocesses each image on the blocking pool, at most one per decode permit
    /// at a time; one result per image, in order.
    async fn prepare_images(&self, images: Vec<Bytes>) -> Vec<Result<PixelTensor, ServiceError>> {
        let mut tasks = Vec::with_capacity(images.len());
        for (index, bytes) in images.into_iter().enumerate() {
            let permits = self.0.decode_permits.clone();
            let service = self.clone();
            tasks.push(tokio::spawn(async move {
                // The semaphore is never closed.
                let _permit = permits
                    .acquire_owned()
                    .await
                    .map_err(|_| ServiceError::Internal("the decode permits were closed".into()))?;
                let span = tracing::debug_span!("preprocess_image", index, bytes = bytes.len());
                tokio::task::spawn_blocking(move || {
                    let _enter = span.enter();
                    let inner = &service.0;
                    let started = std::time::Instant::now();
                    let tensor =
                        prepare_image(&bytes, &inner.engine.folder.preprocess, &inner.rules, index);
                    inner.metrics.image_prepared(started.elapsed());
                    tensor
                })
                .await
                .map_err(|e| {
                    ServiceError::Internal(format!("decoding image {index} crashed: {e}"))
                })?
            }));
        }
        // Dropping this future (the client went away) aborts nothing already running, but the
        // results are simply discarded; each task holds at most one decode permit.
        let mut out = Vec::with_capacity(tasks.len());
        for (index, task) in tasks.into_iter().enumerate() {
            out.push(task.await.unwrap_or_else(|e| {
                Err(ServiceError::Internal(format!(
                    "decoding image {index} failed to join: {e}"
                )))
            }));
        }
        out
    }
}
