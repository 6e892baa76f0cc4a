//! Bad (and odd but valid) images, in every input form `/v1/embed/image` takes.

use reqwest::multipart::{Form, Part};
use serde_json::json;

use crate::common::{b64, cosine};
use crate::harness::{bad, embeddings, Expect, Harness};

fn raw(h: &Harness, content_type: &str, bytes: Vec<u8>) -> reqwest::RequestBuilder {
    h.post("/v1/embed/image")
        .header("content-type", content_type)
        .body(bytes)
}

fn multipart(h: &Harness, files: Vec<(&str, Vec<u8>)>) -> reqwest::RequestBuilder {
    let form = files.into_iter().fold(Form::new(), |form, (name, bytes)| {
        form.part("image", Part::bytes(bytes).file_name(name.to_string()))
    });
    h.post("/v1/embed/image").multipart(form)
}

fn base64_json(h: &Harness, images: Vec<String>) -> reqwest::RequestBuilder {
    h.post("/v1/embed/image").json(&json!({ "images": images }))
}

#[tokio::test]
async fn empty_images_are_refused_in_every_form() {
    let h = Harness::start(|_| {}).await;
    let invalid = Expect::Error(422, "invalid_image");
    h.check("empty raw body", raw(&h, "image/jpeg", Vec::new()), invalid)
        .await;
    let invalid = Expect::Error(422, "invalid_image");
    h.check(
        "empty multipart file",
        multipart(&h, vec![("a.png", Vec::new())]),
        invalid,
    )
    .await;
    let a = h
        .check(
            "empty base64 string",
            base64_json(&h, vec![b64(&bad("small.jpg")), String::new()]),
            Expect::Error(400, "invalid_request"),
        )
        .await;
    assert_eq!(a.body["error"]["index"], 1);
}

#[tokio::test]
async fn random_bytes_are_an_invalid_image() {
    let h = Harness::start(|_| {}).await;
    for (case, req) in [
        ("raw", raw(&h, "image/png", bad("random.bin"))),
        (
            "multipart",
            multipart(&h, vec![("r.bin", bad("random.bin"))]),
        ),
        ("base64", base64_json(&h, vec![b64(&bad("random.bin"))])),
    ] {
        let a = h
            .check(case, req, Expect::Error(422, "invalid_image"))
            .await;
        assert_eq!(a.body["error"]["index"], 0, "{case}");
    }
}

#[tokio::test]
async fn a_valid_header_with_a_truncated_body_is_an_invalid_image() {
    let h = Harness::start(|_| {}).await;
    for name in ["truncated.png", "truncated.gif"] {
        let a = h
            .check(
                name,
                base64_json(&h, vec![b64(&bad("small.jpg")), b64(&bad(name))]),
                Expect::Error(422, "invalid_image"),
            )
            .await;
        assert_eq!(a.body["error"]["index"], 1, "{name}");
    }
}

#[tokio::test]
async fn decompression_bombs_are_refused_from_their_header() {
    let h = Harness::start(|_| {}).await;
    // Each declares 50,000 x 50,000 (JPEG 60,000 x 60,000, WebP 16,383 x 16,383) in a few
    // hundred bytes: decoding any would need gigabytes. The harness checks memory stayed flat.
    for name in [
        "bomb.png",
        "bomb.gif",
        "bomb.bmp",
        "bomb.tiff",
        "bomb.jpg",
        "bomb.webp",
    ] {
        let a = h
            .check(
                name,
                raw(&h, "image/png", bad(name)),
                Expect::Error(422, "image_too_large"),
            )
            .await;
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("more than the limit"), "{name}: {message}");
    }
}

#[tokio::test]
async fn odd_but_valid_images_are_embedded() {
    let h = Harness::start(|_| {}).await;
    for name in ["one_pixel.png", "rgb16.png", "grey16.png"] {
        h.check(name, raw(&h, "image/png", bad(name)), Expect::Embeddings(1))
            .await;
    }
}

#[tokio::test]
async fn a_huge_animated_gif_embeds_its_first_frame_only() {
    let h = Harness::start(|_| {}).await;
    // 8,000 frames on a 1024 x 1024 screen: compositing them all would take seconds and
    // gigabytes of memory traffic; only the first is decoded.
    let a = h
        .check(
            "animated gif",
            raw(&h, "image/gif", bad("animated.gif")),
            Expect::Embeddings(1),
        )
        .await;
    // The same again: every frame after the first is ignored, so the answer is stable.
    let again = crate::harness::send(raw(&h, "image/gif", bad("animated.gif"))).await;
    let (a, again) = (embeddings(&a.body), embeddings(&again.body));
    assert!(cosine(&a[0], &again[0]) > 0.99999);
}

#[tokio::test]
async fn the_format_is_sniffed_from_the_bytes_not_the_content_type() {
    let h = Harness::start(|_| {}).await;
    let jpeg = bad("small.jpg");
    let as_png = h
        .check(
            "jpeg sent as image/png",
            raw(&h, "image/png", jpeg.clone()),
            Expect::Embeddings(1),
        )
        .await;
    let as_jpeg = crate::harness::send(raw(&h, "image/jpeg", jpeg.clone())).await;
    let (a, b) = (embeddings(&as_png.body), embeddings(&as_jpeg.body));
    assert!(cosine(&a[0], &b[0]) > 0.99999);
    h.check(
        "jpeg sent as application/octet-stream",
        raw(&h, "application/octet-stream", jpeg.clone()),
        Expect::Embeddings(1),
    )
    .await;
    for ct in ["text/plain", "application/xml", ""] {
        h.check(
            &format!("jpeg sent as `{ct}`"),
            raw(&h, ct, jpeg.clone()),
            Expect::Error(415, "unsupported_media_type"),
        )
        .await;
    }
}

#[tokio::test]
async fn bad_base64_and_urls_are_refused_naming_the_item() {
    let h = Harness::start(|_| {}).await;
    let good = b64(&bad("small.jpg"));
    for (case, image) in [
        ("bad characters", "data:image/png;base64,@@@@".to_string()),
        ("no comma", "data:image/png;base64".to_string()),
        ("not base64 encoded", "data:image/png,rawbytes".to_string()),
        ("empty data", "data:image/png;base64,".to_string()),
        (
            "url-safe alphabet",
            "data:image/png;base64,_-_-".to_string(),
        ),
        ("bare garbage", "!!!!".to_string()),
        ("an http url", "http://127.0.0.1:1/cat.jpg".to_string()),
        ("an https url", "https://example.com/cat.jpg".to_string()),
        ("a file url", "file:///etc/passwd".to_string()),
        (
            "a data uri holding a url",
            "data:text/uri-list,https://example.com/a.jpg".to_string(),
        ),
    ] {
        let a = h
            .check(
                case,
                base64_json(&h, vec![good.clone(), image]),
                Expect::Error(400, "invalid_request"),
            )
            .await;
        assert_eq!(a.body["error"]["index"], 1, "{case}");
    }
    // Base64 that decodes, but to something that is not an image: an image error.
    h.check(
        "base64 of text",
        base64_json(&h, vec![b64(b"<html>not an image</html>")]),
        Expect::Error(422, "invalid_image"),
    )
    .await;
}

#[tokio::test]
async fn more_images_than_the_limit_are_refused_in_every_form() {
    let h = Harness::start(|s| s.limits.max_images_per_request = 4).await;
    let jpeg = bad("small.jpg");
    h.check(
        "five base64 images",
        base64_json(&h, vec![b64(&jpeg); 5]),
        Expect::Error(422, "too_many_items"),
    )
    .await;
    h.check(
        "five multipart files",
        multipart(&h, vec![("a.jpg", jpeg.clone()); 5]),
        Expect::Error(422, "too_many_items"),
    )
    .await;
    // 10,000 tiny images in one JSON body: refused by count before any is decoded.
    h.check(
        "ten thousand base64 images",
        base64_json(&h, vec![b64(&bad("one_pixel.png")); 10_000]),
        Expect::Error(422, "too_many_items"),
    )
    .await;
    h.check(
        "four multipart files",
        multipart(&h, vec![("a.jpg", jpeg); 4]),
        Expect::Embeddings(4),
    )
    .await;
}
