//! Route handlers, one file per family of routes.

pub mod embed;
pub mod immich;
pub mod openai;
pub mod ops;
pub mod page;
pub mod scores;
pub mod tei;
