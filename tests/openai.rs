//! `POST /v1/embeddings` on the wire, as OpenAI's clients see it: string and list inputs,
//! base64 that decodes to the float output, `dimensions` truncation, token usage, images by
//! `modality`, and every error in OpenAI's shape.

mod common;

use base64::Engine as _;
use common::{b64, cosine, photo, TestServer};
use serde_json::{json, Value};

/// POSTs a JSON body to `/v1/embeddings` and returns (status, body).
async fn embeddings(server: &TestServer, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/embeddings"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post(server: &TestServer, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("a float embedding")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

/// Checks OpenAI's error shape, exactly its four fields, and returns (type, param, code).
fn openai_error(status: u16, body: &Value) -> (String, Value, String) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{body}"));
    let keys: Vec<&str> = error.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 4, "{body}");
    for key in ["message", "type", "param", "code"] {
        assert!(error.contains_key(key), "no {key}: {body}");
    }
    assert!(!error["message"].as_str().unwrap().is_empty());
    let kind = error["type"].as_str().unwrap().to_string();
    let expected = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    assert_eq!(kind, expected, "{status}: {body}");
    (
        kind,
        error["param"].clone(),
        error["code"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_string_and_a_list_embed_as_the_native_text_route_does_with_token_usage() {
    let server = TestServer::start(|_| {}).await;
    let texts = ["a photo of a cat", "una foto de un gato", "猫の写真"];
    let native = post(&server, "/v1/embed/text", json!({ "texts": texts })).await;
    let ids = post(&server, "/v1/tokenize", json!({ "texts": texts })).await;

    let (status, one) = embeddings(
        &server,
        json!({ "input": texts[0], "model": "text-embedding-3-small" }),
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["object"], "list");
    assert_eq!(
        one["model"], native["model"],
        "the served model is named, not the asked one"
    );
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["object"], "embedding");
    assert_eq!(one["data"][0]["index"], 0);
    let v = floats(&one["data"][0]["embedding"]);
    assert_eq!(v.len(), native["dimensions"].as_u64().unwrap() as usize);
    assert!(cosine(&v, &floats(&native["embeddings"][0])) > 0.99999);
    let tokens0 = ids["ids"][0].as_array().unwrap().len() as u64;
    assert_eq!(
        one["usage"],
        json!({ "prompt_tokens": tokens0, "total_tokens": tokens0 })
    );

    let (status, many) = embeddings(&server, json!({ "input": texts, "user": "someone" })).await;
    assert_eq!(status, 200, "{many}");
    let total: u64 = ids["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(many["usage"]["prompt_tokens"], total);
    assert_eq!(many["usage"]["total_tokens"], total);
    for (i, item) in many["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["index"], i);
        let v = floats(&item["embedding"]);
        assert!((norm(&v) - 1.0).abs() < 1e-5);
        assert!(
            cosine(&v, &floats(&native["embeddings"][i])) > 0.99999,
            "text {i}"
        );
    }
}

#[tokio::test]
async fn base64_decodes_to_exactly_the_float_output() {
    let server = TestServer::start(|_| {}).await;
    let input = json!(["a red bicycle", "ein rotes Fahrrad"]);
    let (_, float) = embeddings(
        &server,
        json!({ "input": input, "encoding_format": "float" }),
    )
    .await;
    let (status, encoded) = embeddings(
        &server,
        json!({ "input": input, "encoding_format": "base64" }),
    )
    .await;
    assert_eq!(status, 200, "{encoded}");
    for i in 0..2 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(decoded, floats(&float["data"][i]["embedding"]), "item {i}");
    }
}

#[tokio::test]
async fn dimensions_keep_the_first_components_renormalized() {
    let server = TestServer::start(|_| {}).await;
    let (_, full) = embeddings(&server, json!({ "input": "a lighthouse at night" })).await;
    let full = floats(&full["data"][0]["embedding"]);
    let (status, short) = embeddings(
        &server,
        json!({ "input": "a lighthouse at night", "dimensions": 8 }),
    )
    .await;
    assert_eq!(status, 200, "{short}");
    let short = floats(&short["data"][0]["embedding"]);
    assert_eq!(short.len(), 8);
    assert!((norm(&short) - 1.0).abs() < 1e-6);
    let head = norm(&full[..8]);
    for (s, f) in short.iter().zip(&full) {
        assert!((f64::from(*s) - f64::from(*f) / head).abs() < 1e-6);
    }
    // The model's own size is the same as not asking.
    let (_, same) = embeddings(
        &server,
        json!({ "input": "a lighthouse at night", "dimensions": full.len() }),
    )
    .await;
    assert_eq!(floats(&same["data"][0]["embedding"]).len(), full.len());

    for bad in [json!(0), json!(full.len() + 1)] {
        let (status, body) = embeddings(&server, json!({ "input": "x", "dimensions": bad })).await;
        assert_eq!(status, 400, "{body}");
        let (_, param, code) = openai_error(status, &body);
        assert_eq!(
            (param, code.as_str()),
            (json!("dimensions"), "invalid_request")
        );
    }
}

#[tokio::test]
async fn images_go_through_the_same_route_with_an_image_modality() {
    let server = TestServer::start(|_| {}).await;
    let jpeg = photo("pillow_hopper.jpg");
    let native = post(
        &server,
        "/v1/embed/image",
        json!({ "images": [b64(&jpeg)] }),
    )
    .await;
    let data_uri = format!("data:image/jpeg;base64,{}", b64(&jpeg));
    let (status, body) = embeddings(
        &server,
        json!({ "input": [data_uri, b64(&jpeg)], "modality": "image" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["usage"],
        json!({ "prompt_tokens": 0, "total_tokens": 0 })
    );
    for i in 0..2 {
        let v = floats(&body["data"][i]["embedding"]);
        assert!(
            cosine(&v, &floats(&native["embeddings"][0])) > 0.99999,
            "image {i}"
        );
    }
    // Without `modality` the same string is read as a text.
    let text = b64(&jpeg[..48]);
    let (_, as_text) = embeddings(&server, json!({ "input": text })).await;
    let native_text = post(&server, "/v1/embed/text", json!({ "texts": [text] })).await;
    assert!(
        cosine(
            &floats(&as_text["data"][0]["embedding"]),
            &floats(&native_text["embeddings"][0])
        ) > 0.99999
    );

    let cases = [
        (
            json!({ "input": "https://example.com/cat.jpg", "modality": "image" }),
            400,
            "invalid_request",
        ),
        (
            json!({ "input": ["@@not base64@@"], "modality": "image" }),
            400,
            "invalid_request",
        ),
        (
            json!({ "input": [b64(b"not an image")], "modality": "image" }),
            422,
            "invalid_image",
        ),
    ];
    for (request, expected, expected_code) in cases {
        let (status, body) = embeddings(&server, request).await;
        assert_eq!(status, expected, "{body}");
        let (_, param, code) = openai_error(status, &body);
        assert_eq!(
            (param, code.as_str()),
            (json!("input"), expected_code),
            "{body}"
        );
    }
    let (status, body) = embeddings(&server, json!({ "input": "x", "modality": "audio" })).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("image"),
        "{body}"
    );
}

#[path = "openai/errors.rs"]
mod errors;
