//! The two towers as encoders: they take already preprocessed items (pixel tensors, token ids),
//! lay them out as the graph's input tensor with padding, run the plans the graph schedules,
//! and return unit-length embeddings in input order.

use thiserror::Error;
use tract_onnx::prelude::*;

use super::graph::{Axis, Buckets, Graph, GraphError, Prepared};
use super::precision::Arithmetic;
use crate::embedding::{Embedding, EmbeddingError};

/// Why a batch could not be embedded.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// tract failed, or the graph broke its contract at run time.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The graph produced an output that is not a usable embedding.
    #[error("item {index}: {source}")]
    Output {
        /// Position of the item in the batch.
        index: usize,
        /// What was wrong with it.
        source: EmbeddingError,
    },
    /// An item did not have the shape the encoder was built for (a bug upstream: preprocessing
    /// guarantees shapes before items are queued).
    #[error("item {index}: {what}")]
    Shape {
        /// Position of the item in the batch.
        index: usize,
        /// The mismatch.
        what: String,
    },
}

fn embeddings(rows: Vec<Vec<f32>>, offset: usize) -> Result<Vec<Embedding>, EncodeError> {
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            Embedding::new(row).map_err(|source| EncodeError::Output {
                index: offset + i,
                source,
            })
        })
        .collect()
}

/// The image tower: `[N, 3, H, W]` float32 pixels to `[N, D]`.
#[derive(Debug)]
pub struct ImageEncoder {
    graph: Graph,
    height: usize,
    width: usize,
}

impl ImageEncoder {
    /// Checks the prepared visual graph takes `[N, 3, height, width]` float32.
    pub fn check(prepared: &Prepared, height: usize, width: usize) -> Result<(), GraphError> {
        let expected = [3, height, width];
        let shape = prepared.input_shape();
        let fits = shape[1..]
            .iter()
            .zip(expected)
            .all(|(axis, want)| axis.fixed().is_none_or(|n| n == want));
        if !fits || prepared.input_type() != f32::datum_type() {
            return Err(GraphError::Contract {
                path: prepared.path().to_path_buf(),
                what: format!(
                    "input 0 is {:?} {:?}, expected float32 [N, 3, {height}, {width}] as visual/preprocess_cfg.json's size says",
                    prepared.input_type(),
                    shape
                ),
            });
        }
        Ok(())
    }

    /// Builds the plans of a visual graph that passed [`ImageEncoder::check`].
    pub fn build(
        prepared: &Prepared,
        buckets: &Buckets,
        height: usize,
        width: usize,
        arithmetic: Arithmetic,
    ) -> Result<Self, GraphError> {
        Ok(ImageEncoder {
            graph: Graph::build(prepared, buckets, 0, arithmetic)?,
            height,
            width,
        })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.graph.output_dim()
    }

    /// The graph, for inspection (plans, input facts).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Embeds pixel tensors, each `3 x height x width` values in CHW order.
    pub fn embed(&self, images: &[&[f32]]) -> Result<Vec<Embedding>, EncodeError> {
        let item_len = 3 * self.height * self.width;
        for (index, px) in images.iter().enumerate() {
            if px.len() != item_len {
                return Err(EncodeError::Shape {
                    index,
                    what: format!("{} pixel values, expected {item_len}", px.len()),
                });
            }
        }
        let mut out = Vec::with_capacity(images.len());
        let mut done = 0;
        for run in self.graph.schedule(images.len(), 0)? {
            let mut data = vec![0f32; run.batch * item_len];
            for (slot, px) in data
                .chunks_exact_mut(item_len)
                .zip(&images[done..done + run.items])
            {
                slot.copy_from_slice(px);
            }
            let input = Tensor::from_shape(&[run.batch, 3, self.height, self.width], &data)
                .map_err(|e| GraphError::Run(format!("{e:#}")))?;
            let mut rows = self.graph.run(&run.plan, input)?;
            rows.truncate(run.items);
            out.extend(embeddings(rows, done)?);
            done += run.items;
        }
        Ok(out)
    }
}

/// The text tower: `[N, S]` token ids to `[N, D]`; padding uses the tokenizer's pad id, which
/// the graph masks out.
#[derive(Debug)]
pub struct TextEncoder {
    graph: Graph,
    pad_id: u32,
    context_length: usize,
}

impl TextEncoder {
    /// Checks the prepared textual graph takes `[N, S]` int32 or int64 ids, with a fixed S (if
    /// any) long enough for `context_length` tokens.
    pub fn check(prepared: &Prepared, context_length: usize) -> Result<(), GraphError> {
        let path = prepared.path().to_path_buf();
        let int_ids = [i32::datum_type(), i64::datum_type()].contains(&prepared.input_type());
        if !int_ids {
            return Err(GraphError::Contract {
                path,
                what: format!(
                    "input 0 is {:?}, expected int32 or int64 token ids",
                    prepared.input_type()
                ),
            });
        }
        if let Axis::Fixed(s) = prepared.input_shape()[1] {
            if s < context_length {
                return Err(GraphError::Contract {
                    path,
                    what: format!("input 0 has a fixed length of {s} tokens, shorter than config.json's text_cfg.context_length {context_length}"),
                });
            }
        }
        Ok(())
    }

    /// Builds the plans of a textual graph that passed [`TextEncoder::check`]; padding uses
    /// `pad_id` (the tokenizer's), which the graph masks out.
    pub fn build(
        prepared: &Prepared,
        buckets: &Buckets,
        context_length: usize,
        pad_id: u32,
        arithmetic: Arithmetic,
    ) -> Result<Self, GraphError> {
        Ok(TextEncoder {
            graph: Graph::build(prepared, buckets, context_length, arithmetic)?,
            pad_id,
            context_length,
        })
    }

    /// The id that fills the padding of shorter texts in a batch (masked out of the pooling):
    /// the engine builds the tower before it loads the tokenizer that names it, so that the
    /// tokenizer (15 MB held, 29 MB while it loads) does not add to the tower's load peak.
    pub fn set_pad_id(&mut self, pad_id: u32) {
        self.pad_id = pad_id;
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.graph.output_dim()
    }

    /// The graph, for inspection (plans, input facts).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Embeds token id sequences (each at most the context length, special tokens included).
    /// Texts are run longest first in runs of similar length, so each run pads only to its own
    /// longest item (or to the bucket its plan was specialized for); results come back in
    /// input order.
    pub fn embed(&self, texts: &[&[u32]]) -> Result<Vec<Embedding>, EncodeError> {
        for (index, ids) in texts.iter().enumerate() {
            if ids.is_empty() || ids.len() > self.context_length {
                return Err(EncodeError::Shape {
                    index,
                    what: format!(
                        "{} tokens, expected 1 to {}",
                        ids.len(),
                        self.context_length
                    ),
                });
            }
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out: Vec<Option<Embedding>> = vec![None; texts.len()];
        let mut done = 0;
        while done < order.len() {
            // The longest remaining text comes first, so it sets the run's length. The run
            // stops before the first text under half that length: padding at most doubles a
            // text's cost (32 texts of which 8 fill 77 tokens and 24 are short queries run as
            // 8 x 77 + 24 x 16 tokens, not 32 x 77).
            let longest = texts[order[done]].len();
            let similar = order[done..]
                .iter()
                .take_while(|&&i| 2 * texts[i].len() > longest)
                .count();
            let run = self
                .graph
                .schedule(similar, longest)?
                .into_iter()
                .next()
                .expect("schedule returns at least one run for a non-empty batch");
            let chunk = &order[done..done + run.items];
            let seq = run.seq.max(longest);
            let mut ids = vec![i64::from(self.pad_id); run.batch * seq];
            for (row, &i) in ids.chunks_exact_mut(seq).zip(chunk) {
                for (slot, &id) in row.iter_mut().zip(texts[i].iter()) {
                    *slot = i64::from(id);
                }
            }
            let input = Tensor::from_shape(&[run.batch, seq], &ids)
                .and_then(|t| {
                    t.cast_to_dt(self.graph.input_type())
                        .map(|t| t.into_owned())
                })
                .map_err(|e| GraphError::Run(format!("{e:#}")))?;
            let mut rows = self.graph.run(&run.plan, input)?;
            rows.truncate(run.items);
            for (&i, row) in chunk.iter().zip(rows) {
                out[i] = Some(
                    Embedding::new(row)
                        .map_err(|source| EncodeError::Output { index: i, source })?,
                );
            }
            done += run.items;
        }
        Ok(out
            .into_iter()
            .map(|e| e.expect("every item is in exactly one run"))
            .collect())
    }
}
