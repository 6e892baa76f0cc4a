//! In-process embedding for `clipserve embed --model`: the same decoding, preprocessing,
//! tokenization and engine the server runs (`preprocess::image`, the model folder's
//! `PreprocessConfig`, `TextTokenizer`, `engine::Engine`), called directly instead of through
//! the HTTP pipeline and its queues. Each batch runs on the blocking pool, so two batches in
//! flight overlap one batch's decoding with the other's inference.

use std::sync::Arc;

use super::items::{Item, Kind};
use super::{BulkError, Outcome};
use crate::embedding::Embedding;
use crate::engine::{EncodeError, Engine};
use crate::preprocess::image::{decode_rgb, DecodeLimits, ExifPolicy};

/// A loaded engine plus the limits the server would apply, so both modes accept and refuse
/// the same inputs.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    engine: Arc<Engine>,
    decode: DecodeLimits,
    exif: ExifPolicy,
    max_text_chars: usize,
}

impl LocalBackend {
    /// Wraps a loaded engine with the decode limits, EXIF policy and text limit in force.
    pub fn new(
        engine: Arc<Engine>,
        max_image_pixels: u64,
        exif: ExifPolicy,
        max_text_chars: usize,
    ) -> LocalBackend {
        LocalBackend {
            engine,
            decode: DecodeLimits::for_pixels(max_image_pixels),
            exif,
            max_text_chars,
        }
    }

    /// The embedding width.
    pub fn dims(&self) -> usize {
        self.engine.folder.embed_dim
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.engine.folder.name
    }

    /// Embeds one batch on the blocking pool; one outcome per item, in order.
    pub async fn embed(&self, kind: Kind, items: Vec<Item>) -> Result<Vec<Outcome>, BulkError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || match kind {
            Kind::Images => this.images(&items),
            Kind::Texts => this.texts(&items),
        })
        .await
        .map_err(|e| BulkError::Engine(format!("the embedding task failed: {e}")))?
    }

    fn images(&self, items: &[Item]) -> Result<Vec<Outcome>, BulkError> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(items.len());
        let mut tensors = Vec::new();
        for item in items {
            let prepared = item
                .file
                .as_deref()
                .ok_or_else(|| "not a file".to_string())
                .and_then(|path| std::fs::read(path).map_err(|e| format!("cannot read: {e}")))
                .and_then(|bytes| {
                    decode_rgb(&bytes, &self.decode, self.exif).map_err(|e| e.to_string())
                })
                .map(|rgb| self.engine.folder.preprocess.tensor(&rgb));
            match prepared {
                Ok(tensor) => {
                    tensors.push(tensor);
                    outcomes.push(Ok(Vec::new()));
                }
                Err(reason) => outcomes.push(Err(reason)),
            }
        }
        let slices: Vec<&[f32]> = tensors.iter().map(|t| t.as_slice()).collect();
        let embedded = run_batch(&slices, |batch| self.engine.image.embed(batch))?;
        fill(&mut outcomes, embedded);
        Ok(outcomes)
    }

    fn texts(&self, items: &[Item]) -> Result<Vec<Outcome>, BulkError> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(items.len());
        let mut ids = Vec::new();
        for item in items {
            let chars = item.name.chars().count();
            let tokens = if chars > self.max_text_chars {
                Err(format!(
                    "{chars} characters; the limit is {}",
                    self.max_text_chars
                ))
            } else {
                self.engine
                    .tokenizer
                    .encode(&item.name)
                    .map_err(|e| e.to_string())
            };
            match tokens {
                Ok(t) => {
                    ids.push(t);
                    outcomes.push(Ok(Vec::new()));
                }
                Err(reason) => outcomes.push(Err(reason)),
            }
        }
        let slices: Vec<&[u32]> = ids.iter().map(|t| t.as_slice()).collect();
        let embedded = run_batch(&slices, |batch| self.engine.text.embed(batch))?;
        fill(&mut outcomes, embedded);
        Ok(outcomes)
    }
}

/// Runs a batch; if the model fails on it (an output that is not a usable embedding), runs
/// each item alone so one bad item costs only itself. A failure of the graph itself stops the
/// run.
fn run_batch<T: ?Sized>(
    items: &[&T],
    embed: impl Fn(&[&T]) -> Result<Vec<Embedding>, EncodeError>,
) -> Result<Vec<Result<Embedding, String>>, BulkError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    match embed(items) {
        Ok(all) => Ok(all.into_iter().map(Ok).collect()),
        Err(EncodeError::Output { .. }) => items
            .iter()
            .map(|item| match embed(std::slice::from_ref(item)) {
                Ok(mut one) => Ok(Ok(one.remove(0))),
                Err(EncodeError::Output { source, .. }) => Ok(Err(source.to_string())),
                Err(e) => Err(BulkError::Engine(e.to_string())),
            })
            .collect(),
        Err(e) => Err(BulkError::Engine(e.to_string())),
    }
}

/// Puts the embeddings of the prepared items into their slots (the `Ok` placeholders).
fn fill(outcomes: &mut [Outcome], embedded: Vec<Result<Embedding, String>>) {
    let slots = outcomes.iter_mut().filter(|o| o.is_ok());
    for (slot, result) in slots.zip(embedded) {
        *slot = result.map(Embedding::into_vec);
    }
}
