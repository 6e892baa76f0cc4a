//! The model engine: a model folder loaded into tract, ready to turn preprocessed images and
//! token ids into embeddings.
//!
//! [`Engine::load`] reads the folder ([`folder`]), loads both graphs and builds their plans
//! ([`graph`]), wraps them as encoders ([`encoders`]) and warms every plan up, so that the first
//! request pays no first-run cost. The engine is `Send + Sync`: inference threads share it
//! through an `Arc`.

mod alloc;
pub mod bf16;
pub mod encoders;
pub mod folder;
pub mod graph;
mod narrow;
mod onnx_file;
pub mod threads;
pub mod weights;

use std::path::Path;
use std::time::Instant;

use thiserror::Error;

pub use alloc::release_free_memory;
pub use encoders::{EncodeError, ImageEncoder, TextEncoder};
pub use folder::{FolderError, ModelFolder};
pub use graph::{Buckets, GraphError, Precision};
pub use threads::{intra_op_threads, set_intra_op_threads, TowerPool};

use crate::preprocess::text::{TextError, TextTokenizer};

/// How the engine builds its plans.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// Shapes that get a specialized plan in the image tower (batch sizes only).
    pub image_buckets: Buckets,
    /// Shapes that get a specialized plan in the text tower (batch sizes x sequence lengths).
    pub text_buckets: Buckets,
    /// The image tower's products by its weights: f32, or bf16 where the CPU has it.
    pub image_precision: Precision,
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
}

impl Engine {
    /// Loads the model folder at `root`, builds all plans and warms them up.
    pub fn load(root: &Path, settings: &EngineSettings) -> Result<Engine, EngineError> {
        let started = Instant::now();
        alloc::before_load();
        let folder = ModelFolder::open(root)?;
        // The text tower first: reading its 1.1 GB file is the largest transient of the load,
        // and it should not stack on top of the image tower's finished plans. The tokenizer
        // last, for the same reason.
        let mut text = TextEncoder::load(
            &folder.textual_onnx(),
            &settings.text_buckets,
            folder.context_length,
        )?;
        let (height, width) = folder.preprocess.size();
        let image = ImageEncoder::load(
            &folder.visual_onnx(),
            &settings.image_buckets,
            height as usize,
            width as usize,
            settings.image_precision,
        )?;
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
        };
        tracing::info!(
            model = %engine.folder.name,
            image_plans = ?engine.image.graph().plan_shapes(),
            text_plans = ?engine.text.graph().plan_shapes(),
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
