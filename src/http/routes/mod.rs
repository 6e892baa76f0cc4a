//! Route handlers, one file per family of routes.

pub mod embed;
pub mod openai;
pub mod ops;
pub mod page;
pub mod scores;
