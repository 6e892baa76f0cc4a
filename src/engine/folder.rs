//! The model folder contract, shared with the folders immich publishes for this model:
//!
//! ```text
//! <model>/config.json                 OpenCLIP config: embed_dim, vision_cfg, text_cfg, optional logit_scale
//! <model>/visual/model.onnx           input 0: float32 [N,3,H,W]  -> output 0: float32 [N,D]
//! <model>/visual/preprocess_cfg.json  size, mode, mean, std, interpolation, resize_mode, fill_color
//! <model>/textual/model.onnx          input 0: int32|int64 ids [N,S] -> output 0: float32 [N,D]
//! <model>/textual/tokenizer.json      (+ tokenizer_config.json, special_tokens_map.json)
//! ```
//!
//! [`ModelFolder::open`] reads and checks everything but the graphs, so that a folder that breaks
//! the contract stops start-up with an error naming the file and the field.

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::preprocess::pixels::PreprocessConfig;

/// The context length OpenCLIP uses when `text_cfg.context_length` is absent.
pub const DEFAULT_CONTEXT_LENGTH: usize = 77;
/// The logit scale assumed when config.json has none (CLIP's trained scale saturates at 100).
pub const DEFAULT_LOGIT_SCALE: f32 = 100.0;

/// A model folder whose metadata has been read and checked.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder itself.
    pub root: PathBuf,
    /// A display name: the folder's name, or the hub repository id it came from.
    pub name: String,
    /// Dimensions of the shared embedding space (`embed_dim`).
    pub embed_dim: usize,
    /// Maximum tokens per text, special tokens included (`text_cfg.context_length`).
    pub context_length: usize,
    /// The exp'd CLIP logit scale used for softmax probabilities (`logit_scale`).
    pub logit_scale: f32,
    /// How images are resized, cropped and normalized (`visual/preprocess_cfg.json`).
    pub preprocess: PreprocessConfig,
}

/// A model folder that does not fit the contract.
#[derive(Debug, Error)]
pub enum FolderError {
    /// A required file is not there.
    #[error("{path}: file not found (the model folder needs config.json, visual/model.onnx, visual/preprocess_cfg.json, textual/model.onnx and textual/tokenizer.json)")]
    Missing {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file did not parse or a field was wrong.
    #[error("{path}: field `{field}`: {reason}")]
    Field {
        /// The file.
        path: PathBuf,
        /// The JSON field, dotted (`text_cfg.context_length`), or `-` for the whole file.
        field: String,
        /// What was wrong.
        reason: String,
    },
}

impl ModelFolder {
    /// Path of the image tower graph.
    pub fn visual_onnx(&self) -> PathBuf {
        self.root.join("visual/model.onnx")
    }

    /// Path of the text tower graph.
    pub fn textual_onnx(&self) -> PathBuf {
        self.root.join("textual/model.onnx")
    }

    /// Path of the tokenizer.
    pub fn tokenizer_json(&self) -> PathBuf {
        self.root.join("textual/tokenizer.json")
    }

    /// Reads and checks the folder's metadata; the graphs are only checked to exist.
    pub fn open(root: &Path) -> Result<Self, FolderError> {
        if !root.is_dir() {
            return Err(FolderError::Missing {
                path: root.to_path_buf(),
            });
        }
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| root.display().to_string());
        let config_path = root.join("config.json");
        let config = read_json(&config_path)?;
        let field = |field: &str, reason: String| FolderError::Field {
            path: config_path.clone(),
            field: field.to_string(),
            reason,
        };

        let embed_dim = match config.get("embed_dim") {
            Some(v) => v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
                field("embed_dim", format!("expected a positive integer, got {v}"))
            })? as usize,
            None => return Err(field("embed_dim", "missing".into())),
        };
        if !config.get("vision_cfg").is_some_and(Value::is_object) {
            return Err(field("vision_cfg", "missing or not an object".into()));
        }
        let text_cfg = config
            .get("text_cfg")
            .filter(|v| v.is_object())
            .ok_or_else(|| field("text_cfg", "missing or not an object".into()))?;
        let context_length = match text_cfg.get("context_length") {
            None => DEFAULT_CONTEXT_LENGTH,
            Some(v) => v
                .as_u64()
                .filter(|&n| (2..=4096).contains(&n))
                .ok_or_else(|| {
                    field(
                        "text_cfg.context_length",
                        format!("expected an integer from 2 to 4096, got {v}"),
                    )
                })? as usize,
        };
        let logit_scale = match config.get("logit_scale") {
            None | Some(Value::Null) => DEFAULT_LOGIT_SCALE,
            Some(v) => v
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    field(
                        "logit_scale",
                        format!("expected a positive number, got {v}"),
                    )
                })? as f32,
        };

        let preprocess_path = root.join("visual/preprocess_cfg.json");
        let preprocess_json = read_json(&preprocess_path)?;
        let preprocess =
            PreprocessConfig::from_json(preprocess_json).map_err(|e| FolderError::Field {
                path: preprocess_path.clone(),
                field: e.field().to_string(),
                reason: e.to_string(),
            })?;

        let folder = ModelFolder {
            root: root.to_path_buf(),
            name,
            embed_dim,
            context_length,
            logit_scale,
            preprocess,
        };
        for path in [
            folder.visual_onnx(),
            folder.textual_onnx(),
            folder.tokenizer_json(),
        ] {
            if !path.is_file() {
                return Err(FolderError::Missing { path });
            }
        }
        Ok(folder)
    }
}

fn read_json(path: &Path) -> Result<Value, FolderError> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            FolderError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            FolderError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| FolderError::Field {
        path: path.to_path_buf(),
        field: "-".into(),
        reason: format!("not valid JSON: {e}"),
    })
}
