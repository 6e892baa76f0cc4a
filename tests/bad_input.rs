//! Bad input, one test per class, over real HTTP: images (empty, random, truncated, bombs,
//! odd but valid ones, wrong content types, bad base64, too many), texts (huge, invalid UTF-8,
//! control characters, too many, deep nesting, wrong types, unknown fields) and HTTP-level
//! abuse (oversized streaming bodies, slow headers, slow bodies, cancelled requests).
//!
//! Each case checks the status and error type, a log line under the request id, that good
//! requests sent at the same time and right after still get their own correct answers, that
//! the server stays healthy, and that memory stays bounded (see `harness`). The files come from
//! tests/fixtures/bad/make_corpus.py. Basic error shapes are covered in tests/errors.rs.

mod common;
#[path = "bad_input/harness.rs"]
mod harness;
#[path = "bad_input/http.rs"]
mod http;
#[path = "bad_input/images.rs"]
mod images;
#[path = "bad_input/security.rs"]
mod security;
#[path = "bad_input/texts.rs"]
mod texts;
