//! Every error of `/v1/embeddings` in OpenAI's shape, those answered by outer layers (API key,
//! body limit, method, readiness) included, with the right status and a message that says
//! what to do.

use super::common::TestServer;
use super::{embeddings, openai_error};
use serde_json::{json, Value};

#[tokio::test]
async fn malformed_inputs_are_400_and_token_ids_are_refused_with_the_way_out() {
    let server = TestServer::start(|_| {}).await;
    for tokens in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
        let (status, body) = embeddings(&server, json!({ "input": tokens })).await;
        assert_eq!(status, 400, "{body}");
        let (_, param, code) = openai_error(status, &body);
        assert_eq!((param, code.as_str()), (json!("input"), "invalid_request"));
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("token ids") && message.contains("check_embedding_ctx_length=False"),
            "{message}"
        );
    }
    let cases: [(Value, &str); 5] = [
        (json!({ "input": ["a", {"text": "b"}] }), "input"),
        (json!({ "input": 3.5 }), "input"),
        (json!({ "model": "m" }), ""),
        (json!({ "input": "a", "colour": "red" }), ""),
        (json!({ "input": "a", "encoding_format": "int8" }), ""),
    ];
    for (request, expected_param) in cases {
        let (status, body) = embeddings(&server, request.clone()).await;
        assert_eq!(status, 400, "{request}: {body}");
        let (_, param, code) = openai_error(status, &body);
        assert_eq!(code, "invalid_request");
        assert_eq!(param.as_str().unwrap_or(""), expected_param, "{request}");
    }
}

#[tokio::test]
async fn limits_are_422_naming_the_input() {
    let server = TestServer::start(|s| {
        s.limits.max_texts_per_request = 2;
        s.limits.max_text_chars = 10;
    })
    .await;
    let cases = [
        (json!({ "input": [] }), "empty_input"),
        (json!({ "input": ["a", "b", "c"] }), "too_many_items"),
        (
            json!({ "input": ["short", "far too long a text"] }),
            "text_too_long",
        ),
    ];
    for (request, expected) in cases {
        let (status, body) = embeddings(&server, request).await;
        assert_eq!(status, 422, "{body}");
        let (_, param, code) = openai_error(status, &body);
        assert_eq!((param, code.as_str()), (json!("input"), expected));
    }
}

#[tokio::test]
async fn content_type_body_size_method_and_api_key_errors_take_openai_shape_too() {
    let server = TestServer::start(|s| {
        s.server.api_key = Some("k".into());
        s.limits.max_body_bytes = 1024;
    })
    .await;
    let c = reqwest::Client::new();
    let url = server.url("/v1/embeddings");
    let cases = [
        (
            c.post(&url).json(&json!({ "input": "a" })),
            401,
            "unauthorized",
        ),
        (
            c.post(&url)
                .bearer_auth("wrong")
                .json(&json!({ "input": "a" })),
            401,
            "unauthorized",
        ),
        (
            c.post(&url).bearer_auth("k").body("input=a"),
            415,
            "unsupported_media_type",
        ),
        (
            c.post(&url)
                .bearer_auth("k")
                .json(&json!({ "input": "x".repeat(4096) })),
            413,
            "payload_too_large",
        ),
        (c.get(&url).bearer_auth("k"), 405, "method_not_allowed"),
    ];
    for (request, expected, expected_code) in cases {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, expected, "{body}");
        let (_, param, code) = openai_error(status, &body);
        assert_eq!((param, code.as_str()), (Value::Null, expected_code));
    }
    // The native routes keep their own shape.
    let r = c
        .post(server.url("/v1/embed/text"))
        .json(&json!({ "texts": ["a"] }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "unauthorized");
    assert!(body["error"].get("code").is_none());
}

#[tokio::test]
async fn inference_failures_are_500_and_an_unready_server_503_with_retry_after() {
    let server = TestServer::start(|_| {}).await;
    server.state.service().unwrap().texts().inject_panics(1);
    let (status, body) = embeddings(&server, json!({ "input": "boom" })).await;
    assert_eq!(status, 500, "{body}");
    let (_, _, code) = openai_error(status, &body);
    assert_eq!(code, "internal_error");
    server.state.start_draining();
    let r = reqwest::Client::new()
        .post(server.url("/v1/embeddings"))
        .json(&json!({ "input": "a" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    let (_, _, code) = openai_error(503, &body);
    assert_eq!(code, "not_ready");
}
