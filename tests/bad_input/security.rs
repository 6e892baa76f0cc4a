//! What the server gives away, and what it will not do for a caller: no CORS headers unless
//! origins are configured (and then only for those), no fetching of URLs, and error messages
//! that name no server-side path.

use serde_json::json;

use crate::harness::{bad, send, Expect, Harness};

async fn preflight(h: &Harness, origin: &str) -> reqwest::Response {
    h.client
        .request(reqwest::Method::OPTIONS, h.server.url("/v1/embed/text"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap()
}

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn no_cors_headers_are_sent_unless_origins_are_configured() {
    let h = Harness::start(|_| {}).await;
    let r = h
        .post("/v1/embed/text")
        .header("origin", "https://evil.example")
        .json(&json!({ "texts": ["a"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
    let r = preflight(&h, "https://evil.example").await;
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
    assert_ne!(r.status(), 200, "a preflight must not succeed without CORS");
}

#[tokio::test]
async fn configured_origins_and_only_those_get_cors_headers() {
    let h = Harness::start(|s| s.server.cors_origins = vec!["https://app.example".into()]).await;
    let r = preflight(&h, "https://app.example").await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");
    let r = h
        .post("/v1/embed/text")
        .header("origin", "https://app.example")
        .json(&json!({ "texts": ["a"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // Another origin gets no allow-origin header, so browsers refuse it.
    let r = preflight(&h, "https://evil.example").await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn image_urls_are_refused_and_never_fetched() {
    // A listener standing in for the URL's host: the server must never connect to it.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cat.jpg", bait.local_addr().unwrap());
    let h = Harness::start(|_| {}).await;
    for image in [
        url.clone(),
        format!("https://{}/cat.jpg", bait.local_addr().unwrap()),
    ] {
        let a = h
            .check(
                &image,
                h.post("/v1/embed/image")
                    .json(&json!({ "images": [image] })),
                Expect::Error(400, "invalid_request"),
            )
            .await;
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("not fetched"), "{message}");
    }
    // The same as a raw body and as a multipart part: not an image, and not fetched either.
    let a = send(
        h.post("/v1/embed/image")
            .header("content-type", "image/jpeg")
            .body(url.clone()),
    )
    .await;
    assert_eq!((a.status, a.kind.as_deref()), (422, Some("invalid_image")));
    let connected =
        tokio::time::timeout(std::time::Duration::from_millis(300), bait.accept()).await;
    assert!(connected.is_err(), "the server connected to the URL's host");
}

#[tokio::test]
async fn error_messages_name_no_server_side_path() {
    let h = Harness::start(|_| {}).await;
    let model_dir = crate::common::fixture("models").display().to_string();
    let cases = [
        h.post("/v1/embed/image")
            .header("content-type", "image/png")
            .body(bad("truncated.png")),
        h.post("/v1/embed/image")
            .header("content-type", "image/png")
            .body(bad("bomb.tiff")),
        h.post("/v1/embed/image")
            .json(&json!({ "images": ["file:///etc/passwd"] })),
        h.post("/v1/embed/text")
            .header("content-type", "application/json")
            .body("{\"texts\": [\"a\"], \"../../etc/passwd\": 1}"),
        h.client.get(h.server.url("/../../etc/passwd")),
        h.client.get(h.server.url("/v1/%2e%2e/%2e%2e/etc/passwd")),
    ];
    for req in cases {
        let a = send(req).await;
        assert!(a.status >= 400);
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        for leak in [
            model_dir.as_str(),
            "/root",
            "/home",
            "/work",
            ".rs:",
            "src/",
            "panicked",
        ] {
            assert!(
                !message.contains(leak),
                "the message leaks `{leak}`: {message}"
            );
        }
    }
}
