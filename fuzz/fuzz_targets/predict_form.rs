//! immich's `/predict` form through the server's own reader (`routes::immich::read_form`:
//! axum's `Multipart`, the part names `entries`/`image`/`text`, repeated parts, UTF-8, the body
//! limit), then `entries` as the handler reads it (a JSON object of tasks, `clip` strictly as
//! `ClipTask`). The body arrives in chunks, behind the server's body limit.
//!
//! Input: the first line is the boundary (or, when it starts with `multipart/`, the whole
//! content type); the rest is the body. Checks: never a panic or a stall; an error is a 4xx
//! that renders; a form that is read holds `entries`, and its image and text are pieces of the
//! body.
#![no_main]

#[path = "common/forms.rs"]
mod forms;

use axum::http::{HeaderValue, StatusCode};
use clipserve::http::error::ApiError;
use clipserve::http::routes::immich::read_form;
use clipserve::http::types::ClipTask;
use libfuzzer_sys::fuzz_target;

/// A small limit, so that inputs of a few KiB reach it.
const MAX_BODY: usize = 2 * 1024;

fn check_error(e: &ApiError) {
    forms::check_error(
        e,
        &[
            StatusCode::BAD_REQUEST,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ],
    );
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let content_type = if head.starts_with("multipart/") {
        head.to_string()
    } else {
        format!("multipart/form-data; boundary={head}")
    };
    let Ok(content_type) = HeaderValue::from_str(&content_type) else {
        return;
    };
    let f = forms::fixture(MAX_BODY, None);
    match f.runtime.block_on(read_form(
        forms::request(content_type, body, MAX_BODY),
        &f.state,
    )) {
        Ok(form) => {
            assert!(forms::contains(body, form.entries.as_bytes()));
            if let Some(image) = &form.image {
                assert!(forms::contains(body, &image.bytes));
            }
            if let Some(text) = &form.text {
                assert!(forms::contains(body, text.as_bytes()));
            }
            // `entries` as the handler reads it: never a panic, whatever the JSON.
            if let Ok(serde_json::Value::Object(mut tasks)) =
                serde_json::from_str::<serde_json::Value>(&form.entries)
            {
                if let Some(clip) = tasks.remove("clip") {
                    let _ = serde_json::from_value::<ClipTask>(clip);
                }
            }
        }
        Err(e) => {
            check_error(&e);
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                assert!(body.len() > MAX_BODY, "413 for {} bytes", body.len());
            }
        }
    }
});
