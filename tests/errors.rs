//! Every error path of the API, over HTTP: status, JSON shape, error type, and the offending
//! item's index where there is one.

mod common;

use common::{b64, photo, TestServer};
use serde_json::{json, Value};

/// Sends a request and returns (status, Retry-After, JSON body), checking the error shape.
async fn send(req: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert!(
            ct.as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "status {status} without a JSON body: {ct:?}"
        );
        assert!(body["error"]["type"].is_string(), "no error.type: {body}");
        assert!(
            body["error"]["message"].is_string(),
            "no error.message: {body}"
        );
    }
    (status, retry, body)
}

fn kind(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap()
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let server = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let url = server.url("/v1/embed/text");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("syntax", b"{\"texts\": [".to_vec()),
        ("wrong type", br#"{"texts": 42}"#.to_vec()),
        ("wrong item type", br#"{"texts": [1, 2]}"#.to_vec()),
        (
            "unknown field",
            br#"{"texts": ["a"], "colour": "red"}"#.to_vec(),
        ),
        ("missing field", br#"{}"#.to_vec()),
        // serde's derived structs would take an array of their fields as the struct.
        ("an array, not an object", br#"[""]"#.to_vec()),
        ("a bare string", br#""a cat""#.to_vec()),
        ("invalid utf-8", b"{\"texts\": [\"\xff\xfe\"]}".to_vec()),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
    ];
    for (case, body) in cases {
        let (status, _, body) = send(
            c.post(&url)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(kind(&body), "invalid_request", "{case}");
    }
    // Bad base64 names the item.
    let (status, _, body) = send(c.post(server.url("/v1/embed/image")).json(
        &json!({ "images": [b64(&photo("pillow_hopper.jpg")), "data:image/png;base64,@@@"] }),
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["index"], 1);
    // Similarity needs exactly one pair.
    let (status, _, _) = send(
        c.post(server.url("/v1/similarity"))
            .json(&json!({ "texts": ["a"] })),
    )
    .await;
    assert_eq!(status, 400);
    // A template without a slot for the label.
    let (status, _, _) = send(c.post(server.url("/v1/classify")).json(
        &json!({ "images": [b64(&photo("pillow_hopper.jpg"))], "labels": ["a"], "template": "no slot" }),
    ))
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let server = TestServer::start(|s| s.limits.max_body_bytes = 64 * 1024).await;
    let c = reqwest::Client::new();
    let big = photo("skimage_coffee.png"); // 466 KB
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/image"))
            .header("content-type", "image/png")
            .body(big.clone()),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(kind(&body), "payload_too_large");
    // Also when the length is not announced and the body streams in chunks.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(chunks);
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/image"))
            .header("content-type", "image/png")
            .body(reqwest::Body::wrap_stream(stream)),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let (status, _, _) = send(
        c.post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": ["x".repeat(100 * 1024)] })),
    )
    .await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn unsupported_content_types_are_415() {
    let server = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    for (path, ct) in [
        ("/v1/embed/image", "text/plain"),
        ("/v1/embed/text", "text/plain"),
        ("/v1/embed/text", "application/x-www-form-urlencoded"),
    ] {
        let (status, _, body) = send(
            c.post(server.url(path))
                .header("content-type", ct)
                .body("hello"),
        )
        .await;
        assert_eq!(status, 415, "{path} {ct}: {body}");
        assert_eq!(kind(&body), "unsupported_media_type");
    }
}

#[tokio::test]
async fn undecodable_images_are_422_with_their_index() {
    let server = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let good = b64(&photo("pillow_hopper.jpg"));
    for (case, bad) in [
        (
            "random bytes",
            b64(b"definitely not an image, just some bytes"),
        ),
        ("truncated jpeg", b64(&photo("pillow_truncated_jpeg.jpg"))),
        ("png header only", b64(&photo("skimage_coffee.png")[..200])),
    ] {
        let (status, _, body) = send(
            c.post(server.url("/v1/embed/image"))
                .json(&json!({ "images": [good, good, bad] })),
        )
        .await;
        assert_eq!(status, 422, "{case}: {body}");
        assert_eq!(kind(&body), "invalid_image", "{case}");
        assert_eq!(body["error"]["index"], 2, "{case}");
    }
    // Zero bytes as a raw body.
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/image"))
            .header("content-type", "image/png")
            .body(Vec::new()),
    )
    .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn limits_are_422_naming_the_item() {
    let server = TestServer::start(|s| {
        s.limits.max_texts_per_request = 3;
        s.limits.max_images_per_request = 2;
        s.limits.max_text_chars = 50;
        s.limits.max_image_pixels = 100_000;
    })
    .await;
    let c = reqwest::Client::new();
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": ["a", "b", "c", "d"] })),
    )
    .await;
    assert_eq!((status, kind(&body)), (422, "too_many_items"), "{body}");
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": ["short", "y".repeat(51)] })),
    )
    .await;
    assert_eq!((status, kind(&body)), (422, "text_too_long"), "{body}");
    assert_eq!(body["error"]["index"], 1);
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/text"))
            .json(&json!({ "texts": [] })),
    )
    .await;
    assert_eq!((status, kind(&body)), (422, "empty_input"), "{body}");
    let img = b64(&photo("pillow_hopper.jpg"));
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/image"))
            .json(&json!({ "images": [img, img, img] })),
    )
    .await;
    assert_eq!((status, kind(&body)), (422, "too_many_items"), "{body}");
    // 600 x 400 = 240,000 pixels, over the 100,000 limit.
    let (status, _, body) = send(
        c.post(server.url("/v1/embed/image"))
            .json(&json!({ "images": [img, b64(&photo("skimage_coffee.png"))] })),
    )
    .await;
    assert_eq!((status, kind(&body)), (422, "image_too_large"), "{body}");
    assert_eq!(body["error"]["index"], 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let server = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let (status, _, body) = send(c.get(server.url("/v1/nope"))).await;
    assert_eq!((status, kind(&body)), (404, "not_found"));
    let (status, _, body) = send(c.get(server.url("/v1/embed/text"))).await;
    assert_eq!((status, kind(&body)), (405, "method_not_allowed"));
}

#[tokio::test]
async fn an_api_key_guards_the_api_but_not_health_readiness_or_metrics() {
    let server = TestServer::start(|s| s.server.api_key = Some("s3cret".into())).await;
    let c = reqwest::Client::new();
    let body = json!({ "texts": ["a"] });
    let (status, _, err) = send(c.post(server.url("/v1/embed/text")).json(&body)).await;
    assert_eq!((status, kind(&err)), (401, "unauthorized"));
    let (status, _, _) = send(
        c.post(server.url("/v1/embed/text"))
            .bearer_auth("wrong")
            .json(&body),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = send(
        c.post(server.url("/v1/embed/text"))
            .bearer_auth("s3cret")
            .json(&body),
    )
    .await;
    assert_eq!(status, 200);
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            c.get(server.url(open)).send().await.unwrap().status(),
            200,
            "{open}"
        );
    }
}

#[tokio::test]
async fn before_the_model_is_ready_the_api_is_503_with_retry_after() {
    // A server whose model never loads: the state has no model, so it stays "loading".
    let settings = common::test_settings();
    let state = clipserve::http::AppState::new(settings, clipserve::telemetry::Metrics::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = clipserve::http::router(state.clone());
    tokio::spawn(clipserve::http::server::serve(
        listener,
        app,
        state,
        std::future::pending(),
    ));
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = c.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["retry-after"], "1");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "loading");
    let (status, retry, body) = send(
        c.post(format!("{base}/v1/embed/text"))
            .json(&json!({ "texts": ["a"] })),
    )
    .await;
    assert_eq!((status, kind(&body)), (503, "not_ready"));
    assert_eq!(retry.as_deref(), Some("1"));
}
