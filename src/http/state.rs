//! The state every handler receives: settings, metrics, and, once the model has loaded, the
//! two towers' queues with the preprocessing that feeds them.
//!
//! The server binds and answers `/health` before the model is loaded; [`AppState::serving`]
//! is `NotReady` until [`AppState::set_model`] is called, and again once shutdown begins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::batcher::{BatchPolicy, Batcher, RunContext};
use crate::cache::TextCache;
use crate::config::Settings;
use crate::engine::Engine;
use crate::preprocess::pixels::PixelTensor;
use crate::preprocess::text::TokenIds;
use crate::telemetry::Metrics;

/// What handlers need of a loaded model.
pub struct Serving {
    /// The engine (folder metadata, tokenizer, encoders). Handlers use its metadata and
    /// tokenizer; only the batchers' threads run its encoders.
    pub engine: Arc<Engine>,
    /// The image tower's queue.
    pub images: Batcher<PixelTensor>,
    /// The text tower's queue.
    pub texts: Batcher<TokenIds>,
    /// Bounds concurrent image decodes (CPU and memory), one permit per decode.
    pub decode_permits: Arc<Semaphore>,
    /// Recent text embeddings by token ids, consulted before the text queue.
    pub text_cache: TextCache,
}

struct Inner {
    settings: Settings,
    metrics: Metrics,
    serving: OnceLock<Serving>,
    draining: AtomicBool,
}

/// A cheap, cloneable handle to the app's shared state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// State with no model yet: health answers, everything else is 503 until `set_model`.
    pub fn new(settings: Settings, metrics: Metrics) -> AppState {
        metrics.set_ready(false);
        AppState(Arc::new(Inner {
            settings,
            metrics,
            serving: OnceLock::new(),
            draining: AtomicBool::new(false),
        }))
    }

    /// Starts the towers' inference threads on a loaded engine and becomes ready.
    pub fn set_model(&self, engine: Arc<Engine>) -> std::io::Result<()> {
        let b = &self.0.settings.batching;
        let model = &self.0.settings.model;
        let runtime = tokio::runtime::Handle::current();
        crate::engine::set_intra_op_threads(model.intra_op_threads);
        let observer = Arc::new(self.0.metrics.clone());
        let linger = Duration::from_millis(b.linger_ms);
        let failure_cooldown = Duration::from_millis(b.failure_cooldown_ms);
        let image_engine = engine.clone();
        let image_pool = crate::engine::TowerPool::new(model.image_intra_op_threads);
        let (images, _) = Batcher::start(
            "image",
            BatchPolicy {
                max_items: b.max_image_batch,
                run_sizes: engine.image.graph().batch_sizes(),
                max_cost: usize::MAX,
                linger,
                linger_only_when_expected: b.image_linger_while_decoding,
                workers: b.image_workers,
                capacity: b.image_queue_capacity,
                failure_cooldown,
            },
            Arc::new(move |batch: &[PixelTensor], context: RunContext| {
                let views: Vec<&[f32]> = batch.iter().map(|p| p.as_slice()).collect();
                image_pool
                    .run(context.alone(), || image_engine.image.embed(&views))
                    .map_err(|e| e.to_string())
            }),
            observer.clone(),
            runtime.clone(),
        )?;
        let text_engine = engine.clone();
        let text_pool = crate::engine::TowerPool::new(model.text_intra_op_threads);
        let (texts, _) = Batcher::start(
            "text",
            BatchPolicy {
                max_items: b.max_text_batch,
                // Texts go through the symbolic plan by default, and a text's cost per item
                // falls steeply with the batch: take all that fits.
                run_sizes: Vec::new(),
                max_cost: b.max_batch_tokens,
                linger,
                // Texts are tokenized inline in microseconds; they are not announced.
                linger_only_when_expected: false,
                workers: b.text_workers,
                capacity: b.text_queue_capacity,
                failure_cooldown,
            },
            Arc::new(move |batch: &[TokenIds], context: RunContext| {
                let views: Vec<&[u32]> = batch.iter().map(|t| t.as_slice()).collect();
                text_pool
                    .run(context.alone(), || text_engine.text.embed(&views))
                    .map_err(|e| e.to_string())
            }),
            observer,
            runtime,
        )?;
        crate::batcher::spawn_idle_release(
            vec![images.watch(), texts.watch()],
            Duration::from_millis(b.idle_release_ms),
            crate::engine::release_free_memory,
        );
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
        let serving = Serving {
            engine,
            images,
            texts,
            decode_permits: Arc::new(Semaphore::new(permits)),
            text_cache: TextCache::new(model.text_cache_entries),
        };
        if self.0.serving.set(serving).is_err() {
            tracing::warn!("set_model called twice; keeping the first model");
        }
        self.0.metrics.set_ready(self.ready());
        Ok(())
    }

    /// The loaded model, or `NotReady` while loading or draining.
    pub fn serving(&self) -> Result<&Serving, ApiError> {
        if self.0.draining.load(Ordering::SeqCst) {
            return Err(ApiError::NotReady);
        }
        self.0.serving.get().ok_or(ApiError::NotReady)
    }

    /// The loaded model even while draining: work already accepted must still be answered.
    pub fn serving_for_accepted(&self) -> Option<&Serving> {
        self.0.serving.get()
    }

    /// True when the model is loaded and warmed up, both towers are healthy (live workers, and
    /// not in the cooldown after a run of failed batches: see `Batcher::healthy`), and the
    /// server is not shutting down. Keeps the `ready` gauge in step with what `/ready` says.
    pub fn ready(&self) -> bool {
        let ready = !self.0.draining.load(Ordering::SeqCst)
            && self
                .0
                .serving
                .get()
                .is_some_and(|s| s.images.healthy() && s.texts.healthy());
        self.0.metrics.set_ready(ready);
        ready
    }

    /// Marks the server as shutting down: readiness fails so load balancers stop sending, and
    /// new work is refused while accepted work finishes.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        self.0.metrics.set_ready(false);
    }

    /// The settings the server runs with.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}
