//! Starting the two towers: a batcher per tower, with its batch policy from the settings and a
//! run function that calls the engine on the tower's thread pool; and the idle release that
//! hands memory back once both towers are quiet.

use std::sync::Arc;
use std::time::Duration;

use crate::batcher::{BatchPolicy, Batcher, RunContext, RunError};
use crate::config::Settings;
use crate::engine::{EncodeError, Engine, TowerPool};
use crate::preprocess::pixels::PixelTensor;
use crate::preprocess::text::TokenIds;
use crate::telemetry::Metrics;

/// Starts both towers' inference threads.
pub(super) fn start(
    engine: &Arc<Engine>,
    settings: &Settings,
    metrics: &Metrics,
    #[cfg(feature = "fault-injection")] faults: &Arc<super::faults::Faults>,
) -> std::io::Result<(Batcher<PixelTensor>, Batcher<TokenIds>)> {
    let b = &settings.batching;
    let model = &settings.model;
    let runtime = tokio::runtime::Handle::current();
    crate::engine::set_intra_op_threads(model.intra_op_threads);
    let observer = Arc::new(metrics.clone());
    let linger = Duration::from_millis(b.linger_ms);
    let failure_cooldown = Duration::from_millis(b.failure_cooldown_ms);
    let image_engine = engine.clone();
    let image_pool = TowerPool::new(model.image_intra_op_threads);
    #[cfg(feature = "fault-injection")]
    let image_faults = faults.clone();
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
            #[cfg(feature = "fault-injection")]
            let nan = vec![f32::NAN; views.iter().map(|v| v.len()).max().unwrap_or(0)];
            #[cfg(feature = "fault-injection")]
            let views = image_faults.apply(views, &nan);
            image_pool
                .run(context.alone(), || image_engine.image.embed(&views))
                .map_err(run_error)
        }),
        observer.clone(),
        runtime.clone(),
    )?;
    let text_engine = engine.clone();
    let text_pool = TowerPool::new(model.text_intra_op_threads);
    let (texts, _) = Batcher::start(
        "text",
        BatchPolicy {
            max_items: b.max_text_batch,
            // Texts go through the symbolic plan by default, and a text's cost per item falls
            // steeply with the batch: take all that fits.
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
                .map_err(run_error)
        }),
        observer,
        runtime,
    )?;
    crate::batcher::spawn_idle_release(
        vec![images.watch(), texts.watch()],
        Duration::from_millis(b.idle_release_ms),
        crate::engine::release_free_memory,
    );
    Ok((images, texts))
}

/// An encoder error as the batcher sees it: with the batch position of the item it names, so
/// the batcher can fail that item alone.
fn run_error(e: EncodeError) -> RunError {
    let item = match &e {
        EncodeError::Output { index, .. } | EncodeError::Shape { index, .. } => Some(*index),
        EncodeError::Graph(_) => None,
    };
    RunError {
        item,
        message: e.to_string(),
    }
}
