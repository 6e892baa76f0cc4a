//! Request bodies: JSON into every request type, and the base64 / data-URI decoding of image
//! strings. Never a panic; every error renders; and any bytes sent as a data URI come back
//! exactly.
#![no_main]

use base64::Engine as _;
use clipserve::http::extract::parse_json;
use clipserve::http::types::{
    ClassifyRequest, ImagesRequest, OpenAiEmbeddingsRequest, SimilarityRequest, TextsRequest,
};
use clipserve::service::validate::{image_data, image_data_list};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_json::<TextsRequest>(data) {
        assert!(!e.to_string().is_empty());
    }
    let _ = parse_json::<SimilarityRequest>(data);
    let _ = parse_json::<ClassifyRequest>(data);
    let _ = parse_json::<OpenAiEmbeddingsRequest>(data);
    if let Ok(req) = parse_json::<ImagesRequest>(data) {
        if let Err(e) = image_data_list(&req.images) {
            assert!(e.index().is_some_and(|i| i < req.images.len()));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = image_data(text);
    }
    if !data.is_empty() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(data);
        let uri = format!("data:image/png;base64,{encoded}");
        assert_eq!(image_data(&uri).as_deref(), Ok(data));
    }
});
