//! The transport-free core: one cheap, cloneable [`Service`] handle that owns the loaded engine,
//! the two towers' batchers, the text cache and the image decode permits, and turns encoded
//! images and texts into embeddings.
//!
//! ```text
//! images (bytes) ─► validate ─► decode + preprocess (blocking pool, bounded) ─► image batcher ─┐
//! texts ─► validate ─► tokenize ─► text cache ─(misses)─► text batcher ───────────────────────┤
//!                                                                   engine (tract plans) ◄─────┘
//! ```
//!
//! It knows nothing of HTTP: every front end (the HTTP routes, the OpenAI route, the bulk
//! command's in-process mode) calls it and maps [`ServiceError`] to its own answer.

mod error;
#[cfg(feature = "fault-injection")]
mod faults;
mod images;
mod text_cache;
mod texts;
mod towers;
pub mod validate;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::batcher::{Batcher, InferError, QueueFull};
use crate::config::{LimitSettings, ModelSettings, Settings};
use crate::embedding::Embedding;
use crate::engine::{Buckets, Engine, EngineSettings, ModelFolder};
use crate::preprocess::image::{DecodeLimits, ExifPolicy};
use crate::preprocess::pixels::PixelTensor;
use crate::preprocess::text::TokenIds;
use crate::telemetry::Metrics;

pub use error::ServiceError;
pub use images::prepare_image;
pub use text_cache::TextCache;
pub use texts::tokenize_text;

/// The engine settings a model section implies (bucketed plans, precision).
pub fn engine_settings(model: &ModelSettings) -> EngineSettings {
    EngineSettings {
        image_buckets: Buckets {
            batch: model.image_batch_buckets.clone(),
            seq: Vec::new(),
        },
        text_buckets: Buckets {
            batch: model.text_batch_buckets.clone(),
            seq: model.text_seq_buckets.clone(),
        },
        image_precision: model.image_precision,
        text_precision: model.text_precision,
        precision_min_cosine: model.precision_min_cosine,
    }
}

/// What the service checks images and texts against: the request limits and how images are
/// read. Shared with the bulk command, so both accept and refuse the same inputs.
#[derive(Debug, Clone)]
pub struct InputRules {
    /// Largest decoded image, in pixels and bytes.
    pub decode: DecodeLimits,
    /// Whether EXIF orientation is applied.
    pub exif: ExifPolicy,
    /// Longest text, in characters.
    pub max_text_chars: usize,
}

impl InputRules {
    /// The rules the settings give.
    pub fn new(limits: &LimitSettings, model: &ModelSettings) -> InputRules {
        InputRules {
            decode: DecodeLimits::for_pixels(limits.max_image_pixels),
            exif: model.exif,
            max_text_chars: limits.max_text_chars,
        }
    }
}

struct Inner {
    engine: Arc<Engine>,
    images: Batcher<PixelTensor>,
    texts: Batcher<TokenIds>,
    /// Bounds concurrent image decodes (CPU and memory), one permit per decode.
    decode_permits: Arc<Semaphore>,
    text_cache: TextCache,
    rules: InputRules,
    metrics: Metrics,
    #[cfg(feature = "fault-injection")]
    faults: Arc<faults::Faults>,
}

/// A cheap, cloneable handle to the running service (see the module docs).
#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    /// Starts the towers' inference threads on a loaded engine, as the settings say. Must be
    /// called within a tokio runtime (the workers wait on its timers).
    pub fn start(
        engine: Arc<Engine>,
        settings: &Settings,
        metrics: Metrics,
    ) -> std::io::Result<Service> {
        #[cfg(feature = "fault-injection")]
        let faults = Arc::new(faults::Faults::default());
        let (images, texts) = towers::start(
            &engine,
            settings,
            &metrics,
            #[cfg(feature = "fault-injection")]
            &faults,
        )?;
        metrics.set_precision(&engine.precision());
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Service(Arc::new(Inner {
            engine,
            images,
            texts,
            decode_permits: Arc::new(Semaphore::new(permits)),
            text_cache: TextCache::new(settings.model.text_cache_entries),
            rules: InputRules::new(&settings.limits, &settings.model),
            metrics,
            #[cfg(feature = "fault-injection")]
            faults,
        })))
    }

    /// The served model's metadata: its name, embedding size, context length, logit scale and
    /// preprocessing.
    pub fn model(&self) -> &ModelFolder {
        &self.0.engine.folder
    }

    /// What each tower's products run in (f32 or bf16) and what the start-up check measured.
    pub fn precision(&self) -> crate::engine::PrecisionReport {
        self.0.engine.precision()
    }

    /// True when both towers can serve (see `Batcher::healthy`).
    pub fn healthy(&self) -> bool {
        self.0.images.healthy() && self.0.texts.healthy()
    }

    /// The image tower's queue (for its depth, capacity and worker counts).
    pub fn images(&self) -> &Batcher<PixelTensor> {
        &self.0.images
    }

    /// The text tower's queue.
    pub fn texts(&self) -> &Batcher<TokenIds> {
        &self.0.texts
    }

    /// Test hook (feature `fault-injection`): while on, the image encoder fails on images of
    /// one flat colour as it would on a bad input, so a test can show that such an item fails
    /// only itself, whatever shares its batch.
    #[cfg(feature = "fault-injection")]
    pub fn fail_uniform_images(&self, on: bool) {
        self.0.faults.fail_uniform_images(on);
    }
}

impl Service {
    /// Queues items on a tower and awaits each answer in order; `positions` are the items'
    /// places in the caller's request, for errors. All items are queued or none.
    async fn run_on<I: Send + 'static>(
        &self,
        batcher: &Batcher<I>,
        items: Vec<(I, usize)>,
        positions: Vec<usize>,
    ) -> Result<Vec<Embedding>, ServiceError> {
        let receivers = batcher.submit(items).map_err(|QueueFull { tower, .. }| {
            self.0.metrics.queue_rejection(tower);
            ServiceError::Overloaded { tower }
        })?;
        let mut out = Vec::with_capacity(receivers.len());
        for (rx, index) in receivers.into_iter().zip(positions) {
            let answer = rx.await.unwrap_or(Err(InferError::WorkerGone));
            out.push(answer.map_err(|e| ServiceError::Encode {
                index,
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }
}
