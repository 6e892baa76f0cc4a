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

use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header::CONTENT_TYPE, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use clipserve::config::Settings;
use clipserve::http::error::ApiError;
use clipserve::http::routes::immich::read_form;
use clipserve::http::types::ClipTask;
use clipserve::http::AppState;
use clipserve::telemetry::Metrics;
use http_body_util::{Limited, StreamBody};
use libfuzzer_sys::fuzz_target;

/// A small limit, so that inputs of a few KiB reach it.
const MAX_BODY: usize = 2 * 1024;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    state: AppState,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut settings = Settings::default();
        settings.limits.max_body_bytes = MAX_BODY;
        // Bodies here are in memory: a 408 would mean the parser stalled.
        settings.server.body_timeout_ms = 10_000;
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime builds"),
            state: AppState::new(settings, Metrics::new()),
        }
    })
}

/// The request behind the server's body limit: chunked, cut at `MAX_BODY`, in chunks of a
/// size taken from the body.
fn request(content_type: HeaderValue, body: &[u8]) -> Request {
    let chunk = match body.len() % 4 {
        0 => body.len().max(1),
        _ => 1 + (body.len() / 4) % 61,
    };
    let frames: Vec<Result<_, std::convert::Infallible>> = body
        .chunks(chunk)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = StreamBody::new(futures_util::stream::iter(frames));
    let mut req = Request::new(Body::new(Limited::new(stream, MAX_BODY)));
    req.headers_mut().insert(CONTENT_TYPE, content_type);
    req
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn check_error(e: &ApiError) {
    let status = e.status();
    assert!(
        [
            StatusCode::BAD_REQUEST,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ]
        .contains(&status),
        "{e:?}"
    );
    assert!(!e.message().is_empty());
    assert_eq!(e.clone().into_response().status(), status);
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
    let f = fixture();
    match f.runtime.block_on(read_form(request(content_type, body), &f.state)) {
        Ok(form) => {
            assert!(contains(body, form.entries.as_bytes()));
            if let Some(image) = &form.image {
                assert!(contains(body, &image.bytes));
            }
            if let Some(text) = &form.text {
                assert!(contains(body, text.as_bytes()));
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
