//! In-process embedding for `clipserve embed --model`: the service's own functions for turning
//! images and texts into encoder inputs ([`prepare_image`], [`tokenize_text`], under the same
//! [`InputRules`]) and the same engine, called directly instead of through the service's
//! queues. Each batch runs on the blocking pool, so two batches in flight overlap one batch's
//! decoding with the other's inference.

use std::sync::Arc;

use super::items::{Item, Kind};
use super::{BulkError, Outcome};
use crate::embedding::Embedding;
use crate::engine::{EncodeError, Engine};
use crate::service::{prepare_image, tokenize_text, InputRules};

/// A loaded engine plus the rules the server would apply, so both modes accept and refuse the
/// same inputs.
#[derive(Clone, Debug)]
pub struct LocalBackend {
    engine: Arc<Engine>,
    rules: InputRules,
}

impl LocalBackend {
    /// Wraps a loaded engine with the input rules in force.
    pub fn new(engine: Arc<Engine>, rules: InputRules) -> LocalBackend {
        LocalBackend { engine, rules }
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
        for (index, item) in items.iter().enumerate() {
            let prepared = item
                .file
                .as_deref()
                .ok_or_else(|| "not a file".to_string())
                .and_then(|path| std::fs::read(path).map_err(|e| format!("cannot read: {e}")))
                .and_then(|bytes| {
                    prepare_image(&bytes, &self.engine.folder.preprocess, &self.rules, index)
                        .map_err(|e| reason(&e.to_string()))
                });
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
        let context = self.engine.folder.context_length;
        for (index, item) in items.iter().enumerate() {
            let tokens = tokenize_text(
                &item.name,
                &self.engine.tokenizer,
                &self.rules,
                context,
                index,
            )
            .map_err(|e| reason(&e.to_string()));
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

/// A service error's message without its "image 3: " / "text 3 " prefix: the bulk output
/// names the item by its file or line, not by its position in an internal batch.
fn reason(message: &str) -> String {
    for prefix in ["image ", "text "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                let rest = &rest[digits..];
                return rest
                    .strip_prefix(": ")
                    .unwrap_or(rest.trim_start())
                    .to_string();
            }
        }
    }
    message.to_string()
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
