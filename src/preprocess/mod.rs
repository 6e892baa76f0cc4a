//! Turning request bytes into model inputs: images into normalized pixel tensors, texts into
//! token ids, both exactly as OpenCLIP's Python preprocessing does it.
pub mod clean;
pub mod image;
pub mod pixels;
pub mod resize;
pub mod text;
pub mod unigram;
