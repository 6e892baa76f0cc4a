//! What the two multipart targets (`multipart`, `predict_form`) share: the server state they
//! read forms with, and a request whose body arrives as it would off a socket, behind the
//! server's body limit. Included by each with `#[path]`: fuzz targets are separate binaries.

use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header::CONTENT_TYPE, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use clipserve::config::Settings;
use clipserve::http::error::ApiError;
use clipserve::http::AppState;
use clipserve::telemetry::Metrics;
use http_body_util::{Limited, StreamBody};

/// A current-thread runtime to drive the extractors, and the server state they read.
pub struct Fixture {
    pub runtime: tokio::runtime::Runtime,
    pub state: AppState,
}

/// The one fixture of this process, made on first use from the default settings with at most
/// `max_body` bytes a body and `max_images` images a request.
pub fn fixture(max_body: usize, max_images: Option<usize>) -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut settings = Settings::default();
        settings.limits.max_body_bytes = max_body;
        if let Some(max) = max_images {
            settings.limits.max_images_per_request = max;
        }
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

/// The request as the handler sees it behind the server's body limit layer: a body of unknown
/// length (chunked), cut at `max_body` by `Limited`, in chunks of a size taken from the body.
pub fn request(content_type: HeaderValue, body: &[u8], max_body: usize) -> Request {
    let chunk = match body.len() % 4 {
        0 => body.len().max(1),
        _ => 1 + (body.len() / 4) % 61,
    };
    let frames: Vec<Result<_, std::convert::Infallible>> = body
        .chunks(chunk)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let stream = StreamBody::new(futures_util::stream::iter(frames));
    let mut req = Request::new(Body::new(Limited::new(stream, max_body)));
    req.headers_mut().insert(CONTENT_TYPE, content_type);
    req
}

/// Whether `needle` occurs in `haystack` (an empty one always does).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// An error the reader may give: one of the `allowed` statuses, a message, and a response that
/// renders with that status.
pub fn check_error(e: &ApiError, allowed: &[StatusCode]) {
    let status = e.status();
    assert!(allowed.contains(&status), "{e:?}");
    assert!(!e.message().is_empty());
    assert_eq!(e.clone().into_response().status(), status);
}
