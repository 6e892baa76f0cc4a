//! Multipart bodies through the server's own image extractor (`ImageInputs`, the code behind
//! `POST /v1/embed/image`: axum's `Multipart`, the part-name checks, the count limit, and the
//! body limit as the server's `RequestBodyLimitLayer` applies it), with the body delivered in
//! several chunks as it arrives off a socket.
//!
//! Input: the first line is the boundary (or, when it starts with `multipart/`, the whole
//! content type); the rest is the body. Two checks per input:
//! - raw: the body as given. Never a panic or a stall; an error is a 4xx that renders; every
//!   image returned is a contiguous piece of the body, one to the limit of them.
//! - round trip: the body's bytes split at 0xFF into up to 8 parts, each framed as a well-formed
//!   part whose name depends on its first byte. The extractor must return exactly those parts
//!   in order, or the error (and index) the rules give: a part not named like an image, more
//!   parts than the limit, no part at all, a body over the limit.
#![no_main]

#[path = "common/forms.rs"]
mod forms;

use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::http::{HeaderValue, StatusCode};
use clipserve::http::error::ApiError;
use clipserve::http::extract::ImageInputs;
use libfuzzer_sys::fuzz_target;

/// Small limits, so that inputs of a few KiB (libFuzzer's default -max_len is 4096) reach them.
const MAX_IMAGES: usize = 4;
const MAX_BODY: usize = 2 * 1024;
const BOUNDARY: &str = "clipserve-fuzz-boundary";

fn extract(content_type: HeaderValue, body: &[u8]) -> Result<Vec<Bytes>, ApiError> {
    let f = forms::fixture(MAX_BODY, Some(MAX_IMAGES));
    let req = forms::request(content_type, body, MAX_BODY);
    f.runtime
        .block_on(ImageInputs::from_request(req, &f.state))
        .map(|ImageInputs(images)| images)
}

fn check_error(e: &ApiError) {
    forms::check_error(
        e,
        &[
            StatusCode::BAD_REQUEST,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNPROCESSABLE_ENTITY,
        ],
    );
}

fn raw(content_type: HeaderValue, body: &[u8]) {
    match extract(content_type, body) {
        Ok(images) => {
            assert!(!images.is_empty() && images.len() <= MAX_IMAGES);
            assert!(images.iter().map(Bytes::len).sum::<usize>() <= body.len());
            for image in &images {
                assert!(
                    forms::contains(body, image),
                    "an image that is not in the body"
                );
            }
        }
        Err(e) => {
            check_error(&e);
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                assert!(body.len() > MAX_BODY, "413 for {} bytes", body.len());
            }
        }
    }
}

/// The part names the round trip uses, by the part's first byte, and whether the server
/// takes each as an image (a file name, or a name starting with `image` or `file`).
fn disposition(first: Option<u8>) -> (&'static str, bool) {
    match first.map_or(0, |b| b % 5) {
        0 => ("name=\"image\"", true),
        1 => ("name=\"file3\"", true),
        2 => ("name=\"photo\"; filename=\"p.jpg\"", true),
        3 => ("filename=\"x\"", true),
        _ => ("name=\"caption\"", false),
    }
}

fn round_trip(data: &[u8]) {
    if forms::contains(data, BOUNDARY.as_bytes()) {
        return;
    }
    let parts: Vec<&[u8]> = data.splitn(8, |&b| b == 0xFF).collect();
    let mut body = Vec::new();
    let mut expected: Result<Vec<&[u8]>, ApiError> = Ok(Vec::new());
    for part in &parts {
        let (disposition, is_image) = disposition(part.first().copied());
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(part);
        body.extend_from_slice(b"\r\n");
        if let Ok(images) = &mut expected {
            if !is_image {
                expected = Err(ApiError::BadRequest {
                    message: String::new(),
                    index: Some(images.len()),
                });
            } else if images.len() == MAX_IMAGES {
                expected = Err(ApiError::over_limit("too_many_items", "", Some(MAX_IMAGES)));
            } else {
                images.push(*part);
            }
        }
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    let content_type = HeaderValue::from_str(&format!("multipart/form-data; boundary={BOUNDARY}"))
        .expect("a valid header value");
    let got = extract(content_type, &body);
    // The parser may stop at the closing delimiter without reading the CRLF after it.
    let needed = body.len() - 2;
    match (&expected, &got) {
        (_, Err(e)) if body.len() > MAX_BODY && e.status() == StatusCode::PAYLOAD_TOO_LARGE => {}
        (_, Ok(_)) if needed > MAX_BODY => panic!("{} bytes accepted", body.len()),
        (Ok(images), Ok(got)) => {
            assert!(!images.is_empty(), "no part, yet {} images", got.len());
            assert_eq!(images.len(), got.len());
            for (i, (want, got)) in images.iter().zip(got).enumerate() {
                assert_eq!(*want, &got[..], "part {i}");
            }
        }
        (Ok(images), Err(e)) => {
            assert!(images.is_empty(), "{e:?} for {} good parts", images.len());
            assert_eq!(e.kind(), "empty_input");
        }
        (Err(want), Err(e)) => {
            assert_eq!((want.kind(), want.index()), (e.kind(), e.index()), "{e:?}");
        }
        (Err(want), Ok(got)) => panic!("{} images, expected {want:?}", got.len()),
    }
    if let Err(e) = &got {
        check_error(e);
    }
}

fuzz_target!(|data: &[u8]| {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"fuzz"[..], data),
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let content_type = if line.to_ascii_lowercase().starts_with(b"multipart/") {
        HeaderValue::from_bytes(line)
    } else {
        HeaderValue::from_bytes(&[&b"multipart/form-data; boundary="[..], line].concat())
    };
    // A value hyper would refuse never reaches a handler.
    if let Ok(content_type) = content_type {
        raw(content_type, body);
    }
    round_trip(body);
});
