//! Every endpoint over real HTTP, on a real server (port 0) running the tiny fixture model.

mod common;

use common::{b64, cosine, embeddings, photo, TestServer};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

const TEXTS: [&str; 6] = [
    "a photo of a cat",
    "una foto de un gato",
    "猫の写真",
    "фотография кошки",
    "صورة قطة",
    "बिल्ली की तस्वीर",
];

async fn post_json(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn text_embeddings_come_back_unit_length_in_input_order() {
    let server = TestServer::start(|_| {}).await;
    let (status, body) = post_json(&server, "/v1/embed/text", json!({ "texts": TEXTS })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dimensions"], 512);
    assert_eq!(body["model"], "tiny");
    let batch = embeddings(&body);
    assert_eq!(batch.len(), TEXTS.len());
    for e in &batch {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    // Each text alone gives the embedding at its position in the batch.
    for (i, text) in TEXTS.iter().enumerate() {
        let (_, alone) = post_json(&server, "/v1/embed/text", json!({ "texts": [text] })).await;
        let alone = &embeddings(&alone)[0];
        assert!(cosine(alone, &batch[i]) > 0.99999, "text {i}");
        for (j, other) in batch.iter().enumerate() {
            if j != i {
                assert!(cosine(alone, other) < 0.9999, "text {i} matches text {j}");
            }
        }
    }
}

#[tokio::test]
async fn every_image_input_form_gives_the_same_embedding() {
    let server = TestServer::start(|_| {}).await;
    let jpeg = photo("pillow_hopper.jpg");
    let client = reqwest::Client::new();

    let (status, json_body) = post_json(
        &server,
        "/v1/embed/image",
        json!({ "images": [b64(&jpeg)] }),
    )
    .await;
    assert_eq!(status, 200, "{json_body}");
    let reference = embeddings(&json_body)[0].clone();
    assert_eq!(reference.len(), 512);

    let data_uri = format!("data:image/jpeg;base64,{}", b64(&jpeg));
    let (_, uri_body) =
        post_json(&server, "/v1/embed/image", json!({ "images": [data_uri] })).await;

    let raw: Value = client
        .post(server.url("/v1/embed/image"))
        .header("content-type", "image/jpeg")
        .body(jpeg.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let form = Form::new()
        .part("image", Part::bytes(jpeg.clone()).file_name("hopper.jpg"))
        .part(
            "image",
            Part::bytes(photo("skimage_coffee.png")).file_name("coffee.png"),
        );
    let multi: Value = client
        .post(server.url("/v1/embed/image"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let multi = embeddings(&multi);
    assert_eq!(multi.len(), 2);

    for (form, e) in [
        ("data uri", &embeddings(&uri_body)[0]),
        ("raw", &embeddings(&raw)[0]),
        ("multipart", &multi[0]),
    ] {
        assert!(cosine(&reference, e) > 0.99999, "{form}");
    }
    assert!(
        cosine(&multi[0], &multi[1]) < 0.9999,
        "two photos, one embedding"
    );
}

#[tokio::test]
async fn tokenize_returns_the_ids_the_encoder_sees() {
    let server = TestServer::start(|_| {}).await;
    let long = "word ".repeat(200);
    let (status, body) = post_json(
        &server,
        "/v1/tokenize",
        json!({ "texts": ["Hello world", "", "  Tom &amp; Jerry  ", long] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ids = body["ids"].as_array().unwrap();
    assert_eq!(ids[0], json!([0, 35378, 8999, 2]));
    assert_eq!(ids[1], json!([0, 2]));
    // Cleaning unescapes HTML and strips whitespace before tokenizing.
    let (_, plain) = post_json(&server, "/v1/tokenize", json!({ "texts": ["Tom & Jerry"] })).await;
    assert_eq!(ids[2], plain["ids"][0]);
    // Truncated to the context length, </s> kept last.
    let truncated = ids[3].as_array().unwrap();
    assert_eq!(truncated.len(), 77);
    assert_eq!(truncated[76], 2);
}

#[tokio::test]
async fn similarity_scores_pairs_of_every_kind() {
    let server = TestServer::start(|_| {}).await;
    let cat = b64(&photo("skimage_chelsea.png"));
    let rocket = b64(&photo("skimage_rocket.jpg"));

    let (status, body) = post_json(
        &server,
        "/v1/similarity",
        json!({ "images": [cat, rocket], "texts": ["a cat", "a rocket", "un gato"] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let scores = body["scores"].as_array().unwrap();
    let probs = body["probabilities"].as_array().unwrap();
    assert_eq!(scores.len(), 2);
    for (row, prow) in scores.iter().zip(probs) {
        assert_eq!(row.as_array().unwrap().len(), 3);
        let sum: f64 = prow
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-5);
        for s in row.as_array().unwrap() {
            assert!(s.as_f64().unwrap().abs() <= 1.0 + 1e-6);
        }
    }

    let (_, texts) = post_json(
        &server,
        "/v1/similarity",
        json!({ "texts": ["a cat"], "texts_b": ["a cat", "a rocket"] }),
    )
    .await;
    assert!((texts["scores"][0][0].as_f64().unwrap() - 1.0).abs() < 1e-5);

    let (_, images) = post_json(
        &server,
        "/v1/similarity",
        json!({ "images": [cat], "images_b": [cat, rocket] }),
    )
    .await;
    assert!((images["scores"][0][0].as_f64().unwrap() - 1.0).abs() < 1e-5);
    assert!(images["scores"][0][1].as_f64().unwrap() < 0.9999);
}

#[tokio::test]
async fn classify_ranks_labels_per_image() {
    let server = TestServer::start(|_| {}).await;
    let images = [
        b64(&photo("skimage_chelsea.png")),
        b64(&photo("skimage_coffee.png")),
    ];
    let labels = ["cat", "cup of coffee", "rocket"];
    let (status, body) = post_json(
        &server,
        "/v1/classify",
        json!({ "images": images, "labels": labels, "template": "una foto de {}." }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        let ranked = r["labels"].as_array().unwrap();
        assert_eq!(ranked.len(), 3);
        let p: Vec<f64> = ranked
            .iter()
            .map(|l| l["probability"].as_f64().unwrap())
            .collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]), "not sorted: {p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let mut names: Vec<&str> = ranked
            .iter()
            .map(|l| l["label"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["cat", "cup of coffee", "rocket"]);
    }
    // The default template applies when none is given.
    let (status, _) = post_json(
        &server,
        "/v1/classify",
        json!({ "images": [images[0]], "labels": labels }),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_ready_and_info_describe_the_server() {
    let server = TestServer::start(|_| {}).await;
    let client = reqwest::Client::new();
    let health: Value = client
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = client.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let info: Value = client
        .get(server.url("/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["dimensions"], 512);
    assert_eq!(info["context_length"], 77);
    assert_eq!(info["image_size"], json!([224, 224]));
    assert_eq!(info["limits"]["max_images_per_request"], 32);
    assert!(info["logit_scale"].as_f64().unwrap() > 0.0);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn responses_carry_a_request_id_and_keep_the_callers() {
    let server = TestServer::start(|_| {}).await;
    let client = reqwest::Client::new();
    let r = client.get(server.url("/health")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let r = client
        .get(server.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

/// axum's multipart extractor caps a body at 2 MiB unless told otherwise; the server's own
/// limit (`limits.max_body_bytes`, 32 MiB by default) is the one that must apply.
#[tokio::test]
async fn a_multipart_upload_above_two_mib_is_embedded_like_the_same_bytes_sent_raw() {
    let server = TestServer::start(|_| {}).await;
    let png = common::noise_png(1024);
    assert!(png.len() > 3_000_000, "{} bytes", png.len());
    let client = reqwest::Client::new();
    let form = Form::new().part("image", Part::bytes(png.clone()).file_name("noise.png"));
    let r = client
        .post(server.url("/v1/embed/image"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let multi: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{multi}");
    let raw: Value = client
        .post(server.url("/v1/embed/image"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embeddings(&multi), embeddings(&raw));
}
