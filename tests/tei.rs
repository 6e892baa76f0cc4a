//! The text-embeddings-inference route (`POST /embed`), OpenAI's model list (`GET /v1/models`),
//! and single strings where lists of texts are taken, over real HTTP.

mod common;

use common::{embeddings, TestServer};
use serde_json::{json, Value};

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .expect("a list of embeddings")
        .iter()
        .map(|e| {
            e.as_array()
                .expect("an embedding")
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn embed_answers_lists_of_floats_equal_to_the_native_route() {
    let server = TestServer::start(|_| {}).await;
    let texts = ["a cat", "ein Hund", "猫"];
    let (status, native) = post(&server, "/v1/embed/text", json!({ "texts": texts })).await;
    assert_eq!(status, 200);
    let (status, tei) = post(&server, "/embed", json!({ "inputs": texts })).await;
    assert_eq!(status, 200, "{tei}");
    assert_eq!(rows(&tei), embeddings(&native));

    // A single string is a list of one; the TEI options at their defaults change nothing.
    let (status, one) = post(
        &server,
        "/embed",
        json!({ "inputs": "ein Hund", "normalize": true, "truncate": true }),
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(rows(&one), vec![embeddings(&native)[1].clone()]);
}

#[tokio::test]
async fn embed_shortens_to_dimensions_and_renormalizes() {
    let server = TestServer::start(|_| {}).await;
    let (_, full) = post(&server, "/embed", json!({ "inputs": "a cat" })).await;
    let (status, short) = post(
        &server,
        "/embed",
        json!({ "inputs": "a cat", "dimensions": 64 }),
    )
    .await;
    assert_eq!(status, 200, "{short}");
    let (full, short) = (&rows(&full)[0], &rows(&short)[0]);
    assert_eq!(short.len(), 64);
    let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    let scale = short[0] / full[0];
    for (s, f) in short.iter().zip(full) {
        assert!((s - f * scale).abs() < 1e-5);
    }
}

#[tokio::test]
async fn embed_errors_have_tei_shapes_and_statuses() {
    let server = TestServer::start(|s| {
        s.limits.max_texts_per_request = 2;
        s.limits.max_text_chars = 50;
    })
    .await;
    let long_in_tokens = "word ".repeat(9);
    let cases = [
        (json!({ "inputs": [] }), 400, "Empty"),
        (json!({ "inputs": ["a", "b", "c"] }), 413, "Validation"),
        (json!({ "inputs": "x".repeat(51) }), 413, "Validation"),
        (
            json!({ "inputs": "a", "normalize": false }),
            422,
            "Validation",
        ),
        (json!({ "inputs": "a", "dimensions": 0 }), 422, "Validation"),
        (json!({ "inputs": [1, 2] }), 400, "Validation"),
        (
            json!({ "inputs": "a", "prompt_name": "query" }),
            400,
            "Validation",
        ),
    ];
    for (body, status, kind) in cases {
        let (got, answer) = post(&server, "/embed", body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error_type"], kind, "{body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    // `truncate: false` refuses a text that fills the model's context; a short one passes, and
    // `truncate` true or absent cuts a long one.
    let context = server.state.service().unwrap().model().context_length;
    let long = "word ".repeat(context);
    let server = TestServer::start(|_| {}).await;
    let (status, answer) = post(
        &server,
        "/embed",
        json!({ "inputs": long, "truncate": false }),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error_type"], "Validation");
    assert!(
        answer["error"].as_str().unwrap().contains("tokens"),
        "{answer}"
    );
    let (status, _) = post(&server, "/embed", json!({ "inputs": long })).await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &server,
        "/embed",
        json!({ "inputs": long_in_tokens, "truncate": false }),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn errors_of_the_outer_layers_take_tei_shape_on_embed() {
    let server = TestServer::start(|s| s.server.api_key = Some("k".into())).await;
    let (status, answer) = post(&server, "/embed", json!({ "inputs": "a" })).await;
    assert_eq!(status, 401);
    assert_eq!(answer["error_type"], "Validation", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("API key"),
        "{answer}"
    );

    let server = TestServer::start(|_| {}).await;
    server.state.start_draining();
    let r = reqwest::Client::new()
        .post(server.url("/embed"))
        .json(&json!({ "inputs": "a" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error_type"], "Unhealthy", "{answer}");
}

#[tokio::test]
async fn v1_models_lists_the_served_model_as_openai_does() {
    let server = TestServer::start(|_| {}).await;
    let r = reqwest::get(server.url("/v1/models")).await.unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let model = &list["data"][0];
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(model["object"], "model");
    assert_eq!(
        model["id"].as_str(),
        Some(server.state.service().unwrap().model().name.as_str())
    );
    assert!(model["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(model["owned_by"], "clipserve");
}

#[tokio::test]
async fn texts_and_labels_take_a_single_string_wherever_they_take_a_list() {
    let server = TestServer::start(|_| {}).await;
    let (status, one) = post(&server, "/v1/embed/text", json!({ "texts": "a cat" })).await;
    assert_eq!(status, 200, "{one}");
    let (_, list) = post(&server, "/v1/embed/text", json!({ "texts": ["a cat"] })).await;
    assert_eq!(embeddings(&one), embeddings(&list));

    let (status, ids) = post(&server, "/v1/tokenize", json!({ "texts": "a cat" })).await;
    assert_eq!(status, 200, "{ids}");
    assert_eq!(ids["ids"].as_array().unwrap().len(), 1);

    let (status, scores) = post(
        &server,
        "/v1/similarity",
        json!({ "texts": "a cat", "texts_b": ["a dog", "a cat"] }),
    )
    .await;
    assert_eq!(status, 200, "{scores}");
    assert_eq!(scores["scores"].as_array().unwrap().len(), 1);

    let image = common::b64(&common::photo("pillow_hopper.jpg"));
    let (status, labels) = post(
        &server,
        "/v1/classify",
        json!({ "images": [image], "labels": "a cat" }),
    )
    .await;
    assert_eq!(status, 200, "{labels}");
    assert_eq!(labels["results"][0]["labels"][0]["label"], "a cat");

    // Neither a number nor null is a text; a similarity field is sent or left out.
    let (status, _) = post(&server, "/v1/embed/text", json!({ "texts": 3 })).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &server,
        "/v1/similarity",
        json!({ "texts": ["a"], "texts_b": ["b"], "images": null }),
    )
    .await;
    assert_eq!(status, 400);
}
