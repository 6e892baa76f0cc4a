//! Route handlers, one file per family of routes.

pub mod embed;
pub mod ops;
pub mod scores;
