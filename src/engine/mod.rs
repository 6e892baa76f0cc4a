//! The model engine: a model folder loaded into tract, ready to turn preprocessed images and
//! token ids into embeddings.
//!
//! [`Engine::load`] reads the folder ([`folder`]), loads both graphs and builds their plans
//! ([`graph`]) in the arithmetic each tower's setting and the start-up check on the served
//! weights choose ([`precision`], with the calibration set of [`calibration`]), wraps them as
//! encoders ([`encoders`]) and warms every plan up, so that the first request pays no
//! first-run cost. The engine is `Send + Sync`: inference threads share it through an `Arc`.

mod alloc;
pub mod calibration;
pub mod encoders;
pub mod folder;
pub mod graph;
mod narrow;
mod onnx_file;
pub mod ops;
pub mod precision;
mod table;
mod team;
pub mod threads;
pub mod weights;

use std::path::Path;
use std::time::Instant;

use thiserror::Error;

pub use alloc::release_free_memory;
pub use encoders::{EncodeError, ImageEncoder, TextEncoder};
pub use folder::{FolderError, ModelFolder};
pub use graph::{Buckets, GraphError};
pub use precision::{
    Arithmetic, Lossy, Precision, PrecisionReport, Reason, TowerPrecision, MIN_SPEEDUP,
};
pub use threads::{intra_op_threads, set_intra_op_threads, TowerPool};

use crate::preprocess::image::ImageError;
use crate::preprocess::text::{TextError, TextTokenizer};

/// How the engine builds its plans.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Shapes that get a specialized plan in the image tower (batch sizes only).
    pub image_buckets: Buckets,
    /// Shapes that get a specialized plan in the text tower (batch sizes x sequence lengths).
    pub text_buckets: Buckets,
    /// The image tower's products by its weights: `auto` (the fastest lossy arithmetic this CPU
    /// has whose start-up check passes, else f32), `f32`, `bf16`, `int8` or `int16`.
    pub image_precision: Precision,
    /// The same for the text tower.
    pub text_precision: Precision,
    /// The lowest cosine between a calibration item's embeddings in a lossy arithmetic and in
    /// f32 that lets `auto` keep that arithmetic.
    pub precision_min_cosine: f64,
}

/// The threshold `auto` holds lossy products to by default: the text parity tolerance.
pub const DEFAULT_PRECISION_MIN_COSINE: f64 = 0.9999;

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            image_buckets: Buckets::default(),
            text_buckets: Buckets::default(),
            image_precision: Precision::Auto,
            text_precision: Precision::Auto,
            precision_min_cosine: DEFAULT_PRECISION_MIN_COSINE,
        }
    }
}

/// A model that could not be loaded.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The folder breaks the contract.
    #[error(transparent)]
    Folder(#[from] FolderError),
    /// A graph could not be loaded or does not fit the contract.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The tokenizer could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] TextError),
    /// The two towers disagree with each other or with config.json.
    #[error("{0}")]
    Mismatch(String),
    /// The warm-up run failed.
    #[error("warm-up failed: {0}")]
    Warmup(#[from] EncodeError),
    /// The calibration set could not be embedded, so the precision check could not run.
    #[error("precision check: {0}")]
    Check(EncodeError),
    /// A calibration photo compiled into the binary could not be read (a broken build).
    #[error("calibration photo: {0}")]
    Calibration(#[from] ImageError),
    /// The settings ask for something the engine cannot do.
    #[error("{0}")]
    Settings(String),
}

/// Both towers of a CLIP model with their preprocessing, loaded and warmed up.
#[derive(Debug)]
pub struct Engine {
    /// The folder's metadata (embedding size, context length, logit scale, preprocessing).
    pub folder: ModelFolder,
    /// Text cleaning and tokenization, as the text tower expects it.
    pub tokenizer: TextTokenizer,
    /// The image tower.
    pub image: ImageEncoder,
    /// The text tower.
    pub text: TextEncoder,
    /// What each tower's products run in, and why.
    precision: PrecisionReport,
}

impl Engine {
    /// Loads the model folder at `root`, builds all plans in the precision the settings and
    /// the start-up check choose, and warms them up.
    pub fn load(root: &Path, settings: &EngineSettings) -> Result<Engine, EngineError> {
        let started = Instant::now();
        let min_cosine = settings.precision_min_cosine;
        if !(0.0..=1.0).contains(&min_cosine) {
            return Err(EngineError::Settings(format!(
                "model.precision_min_cosine is {min_cosine}, expected a cosine between 0 and 1"
            )));
        }
        alloc::before_load();
        let folder = ModelFolder::open(root)?;
        // The calibration texts' ids, when the text tower's check will run. The tokenizer that
        // makes them is dropped at once and loaded again after the towers (~125 ms), so that it
        // does not stack on the towers' load peaks (loaded first and kept, it measured +18 MB
        // of start-up peak on the full-size model).
        let (text_ids, pad_id) = if precision::checks(settings.text_precision) {
            let tokenizer =
                TextTokenizer::from_file(folder.tokenizer_json(), folder.context_length)?;
            let ids = calibration::texts()
                .into_iter()
                .map(|t| tokenizer.encode(t))
                .collect::<Result<Vec<_>, _>>()?;
            (ids, tokenizer.pad_id())
        } else {
            // XLM-RoBERTa's `<pad>`, until the tokenizer names its own below.
            (Vec::new(), 1)
        };
        // The text tower before the image tower, so that the transient of reading its weights
        // does not stack on top of the image tower's finished plans.
        let text = {
            let ids: Vec<&[u32]> = text_ids.iter().map(|t| t.as_slice()).collect();
            let prepared = graph::Graph::prepare(&folder.textual_onnx(), 2)?;
            TextEncoder::check(&prepared, folder.context_length)?;
            precision::choose(
                "text",
                settings.text_precision,
                min_cosine,
                ops::speedups,
                |arithmetic| {
                    Ok(TextEncoder::build(
                        &prepared,
                        &settings.text_buckets,
                        folder.context_length,
                        pad_id,
                        arithmetic,
                    )?)
                },
                |tower| tower.embed(&ids),
            )?
        };
        drop(text_ids);
        let (height, width) = folder.preprocess.size();
        let (height, width) = (height as usize, width as usize);
        let image = {
            let pixels = if precision::checks(settings.image_precision) {
                calibration::pixels(&folder.preprocess)?
            } else {
                Vec::new()
            };
            let pixels: Vec<&[f32]> = pixels.iter().map(|p| p.as_slice()).collect();
            let prepared = graph::Graph::prepare(&folder.visual_onnx(), 4)?;
            ImageEncoder::check(&prepared, height, width)?;
            precision::choose(
                "image",
                settings.image_precision,
                min_cosine,
                ops::speedups,
                |arithmetic| {
                    Ok(ImageEncoder::build(
                        &prepared,
                        &settings.image_buckets,
                        height,
                        width,
                        arithmetic,
                    )?)
                },
                |tower| tower.embed(&pixels),
            )?
        };
        let ((image, image_precision), (mut text, text_precision)) = (image, text);
        let tokenizer = TextTokenizer::from_file(folder.tokenizer_json(), folder.context_length)?;
        text.set_pad_id(tokenizer.pad_id());
        for (tower, dim) in [("visual", image.dim()), ("textual", text.dim())] {
            if dim != folder.embed_dim {
                return Err(EngineError::Mismatch(format!(
                    "{tower}/model.onnx outputs {dim} dimensions but config.json's embed_dim is {}",
                    folder.embed_dim
                )));
            }
        }
        let engine = Engine {
            folder,
            tokenizer,
            image,
            text,
            precision: PrecisionReport {
                image: image_precision,
                text: text_precision,
            },
        };
        tracing::info!(
            model = %engine.folder.name,
            image_plans = ?engine.image.graph().plan_shapes(),
            text_plans = ?engine.text.graph().plan_shapes(),
            image_precision = engine.precision.image.active.as_str(),
            text_precision = engine.precision.text.active.as_str(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        engine.warm_up()?;
        alloc::after_load();
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model warmed up"
        );
        Ok(engine)
    }

    /// What each tower's products run in (f32, bf16, int8 or int16), what the start-up check
    /// measured and why, for `/info` and the metrics.
    pub fn precision(&self) -> PrecisionReport {
        self.precision
    }

    /// Runs each tower once at batch 1 (every sequence bucket for text), so that the first
    /// request pays no first-run cost (allocator arenas, page faults, the tokenizer's caches).
    /// Larger plans are not run: a tract plan keeps no state between runs, and running the
    /// batch-32 plans once cost most of the start-up time.
    pub fn warm_up(&self) -> Result<(), EncodeError> {
        let (h, w) = self.folder.preprocess.size();
        let pixels = vec![0f32; 3 * h as usize * w as usize];
        self.image.embed(&[&pixels])?;
        // The empty text is `<s></s>`: it names the special ids without hard-coding them.
        let empty = self.tokenizer.encode("").map_err(|e| EncodeError::Shape {
            index: 0,
            what: format!("the tokenizer cannot encode the empty text: {e}"),
        })?;
        let bos_eos = [empty.as_slice()[0], empty.as_slice()[empty.len() - 1]];
        let mut text_shapes = self.text.graph().plan_shapes();
        text_shapes.retain(|(b, _)| *b == 1);
        text_shapes.push((1, 2));
        for (b, s) in text_shapes {
            let s = s.clamp(2, self.folder.context_length);
            let mut ids = vec![self.tokenizer.pad_id(); s];
            ids[0] = bos_eos[0];
            ids[s - 1] = bos_eos[1];
            // A pad id inside a text is masked like padding, which is all a warm-up needs.
            let batch: Vec<&[u32]> = vec![&ids; b];
            self.text.embed(&batch)?;
        }
        Ok(())
    }
}
