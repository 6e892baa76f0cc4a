//! immich's machine-learning protocol over real HTTP: `/ping`, and `/predict` as immich's server
//! sends it (multipart `entries` with an `image` or a `text`), against a stand-in upstream for
//! the tasks clipserve forwards.

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::{Multipart, State};
use axum::routing::post;
use axum::Router;
use common::{cosine, first_embedding, photo, TestServer};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

const IMMICH_NAME: &str = "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k";

fn visual(model: &str) -> String {
    json!({ "clip": { "visual": { "modelName": model } } }).to_string()
}

fn textual(model: &str) -> String {
    json!({ "clip": { "textual": { "modelName": model, "options": { "language": "de" } } } })
        .to_string()
}

fn faces() -> Value {
    json!({ "facial-recognition": {
        "detection": { "modelName": "buffalo_l", "options": { "minScore": 0.7 } },
        "recognition": { "modelName": "buffalo_l" },
    }})
}

/// The form immich's server builds: `entries`, then the image as a Blob (Node names it `blob`).
fn image_form(entries: &str, image: Vec<u8>) -> Form {
    Form::new()
        .text("entries", entries.to_string())
        .part("image", Part::bytes(image).file_name("blob"))
}

fn text_form(entries: &str, text: &str) -> Form {
    Form::new()
        .text("entries", entries.to_string())
        .text("text", text.to_string())
}

async fn predict(server: &TestServer, form: Form) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(server.url("/predict"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// `clip` as immich stores it: a string holding a JSON array.
fn clip(body: &str) -> Vec<f32> {
    let v: Value = serde_json::from_str(body).unwrap();
    let s = v["clip"].as_str().expect("`clip` is a string");
    serde_json::from_str(s).expect("`clip` holds a JSON array of numbers")
}

async fn native_image(server: &TestServer, bytes: Vec<u8>) -> Vec<f32> {
    let r = reqwest::Client::new()
        .post(server.url("/v1/embed/image"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    first_embedding(&r.json().await.unwrap())
}

async fn native_text(server: &TestServer, text: &str) -> Vec<f32> {
    let r = reqwest::Client::new()
        .post(server.url("/v1/embed/text"))
        .json(&json!({ "texts": [text] }))
        .send()
        .await
        .unwrap();
    first_embedding(&r.json().await.unwrap())
}

#[tokio::test]
async fn ping_answers_pong_as_plain_text() {
    let server = TestServer::start(|_| {}).await;
    let r = reqwest::get(server.url("/ping")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(r.text().await.unwrap(), "pong");
}

#[tokio::test]
async fn predict_embeds_images_and_texts_exactly_as_the_native_routes_do() {
    let server = TestServer::start(|_| {}).await;
    let served = server.state.service().unwrap().model().name.clone();
    let names = [
        IMMICH_NAME.to_string(),
        format!("immich-app/{IMMICH_NAME}"),
        served,
    ];
    for (file, name) in [
        "skimage_chelsea.png",
        "pillow_hopper.webp",
        "pillow_hopper_orientation_6.jpg",
    ]
    .into_iter()
    .zip(&names)
    {
        let (status, body) = predict(&server, image_form(&visual(name), photo(file))).await;
        assert_eq!(status, 200, "{file} as {name}: {body}");
        let ours = clip(&body);
        assert_eq!(ours, native_image(&server, photo(file)).await, "{file}");
    }
    for text in ["eine Katze auf dem Sofa", "猫", ""] {
        let (status, body) = predict(&server, text_form(&textual(IMMICH_NAME), text)).await;
        assert_eq!(status, 200, "{text}: {body}");
        assert_eq!(clip(&body), native_text(&server, text).await, "{text}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("imageHeight").is_none(), "{body}");
    }
}

#[tokio::test]
async fn predict_reports_the_stored_image_size_as_pil_does_before_exif_rotation() {
    // Both photos carry an EXIF rotation of 90 degrees; PIL's size (and immich's) ignores it.
    let server = TestServer::start(|_| {}).await;
    for (file, width, height) in [
        ("skimage_chelsea.png", 451, 300),
        ("pillow_orientation_rectangle.jpg", 2, 1),
        ("pillow_hopper_orientation_6.jpg", 128, 128),
    ] {
        let (status, body) = predict(&server, image_form(&visual(IMMICH_NAME), photo(file))).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["imageWidth"].as_u64(), v["imageHeight"].as_u64()),
            (Some(width), Some(height)),
            "{file}"
        );
    }
}

#[tokio::test]
async fn an_unserved_model_is_refused_with_a_message_naming_the_served_one() {
    let server = TestServer::start(|_| {}).await;
    let (status, body) = predict(
        &server,
        image_form(&visual("ViT-B-32__openai"), photo("pillow_hopper.jpg")),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains(IMMICH_NAME) && body.contains("ViT-B-32__openai"),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_forms_are_refused_with_a_reason() {
    let server = TestServer::start(|_| {}).await;
    let jpeg = photo("pillow_hopper.jpg");
    let cases: Vec<(Form, &str)> = vec![
        (Form::new().text("text", "a cat"), "no `entries`"),
        (
            Form::new().text("entries", visual(IMMICH_NAME)),
            "`image` file part or a `text`",
        ),
        (image_form("{not json", jpeg.clone()), "JSON object"),
        (image_form("{}", jpeg.clone()), "no task"),
        // Arrays where the document says objects (serde would read them as the fields).
        (
            text_form(
                r#"{"clip": {"textual": {"modelName": "tiny", "options": []}}}"#,
                "a cat",
            ),
            "expected an object or null, got an array",
        ),
        (
            text_form(r#"{"clip": [null, {"modelName": "tiny"}]}"#, "a cat"),
            "expected an object, got an array",
        ),
        (text_form(&visual(IMMICH_NAME), "a cat"), "send an `image`"),
        (
            image_form(&textual(IMMICH_NAME), jpeg.clone()),
            "send a `text`",
        ),
        (
            image_form(&visual(IMMICH_NAME), jpeg.clone()).text("text", "a cat"),
            "not both",
        ),
        (
            image_form(&visual(IMMICH_NAME), jpeg.clone()).text("assetId", "x"),
            "`assetId` is not read",
        ),
    ];
    for (form, expected) in cases {
        let (status, body) = predict(&server, form).await;
        assert_eq!(status, 400, "{expected}: {body}");
        assert!(body.contains(expected), "{expected}: {body}");
    }
    let r = reqwest::Client::new()
        .post(server.url("/predict"))
        .json(&json!({ "entries": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn a_forwarded_task_without_an_upstream_says_to_set_one_or_turn_it_off() {
    let server = TestServer::start(|_| {}).await;
    for entries in [
        faces().to_string(),
        json!({ "ocr": { "detection": {} } }).to_string(),
    ] {
        let (status, body) =
            predict(&server, image_form(&entries, photo("pillow_hopper.jpg"))).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("immich.upstream_url") && body.contains("turn"),
            "{body}"
        );
    }
}

/// What the stand-in upstream saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    path: String,
    entries: Option<String>,
    image: Option<Vec<u8>>,
    image_name: Option<String>,
    text: Option<String>,
}

/// A stand-in immich-machine-learning on port 0: records what it gets, answers `answer`.
async fn upstream(answer: &'static str, status: u16) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let app = Router::new()
        .route(
            "/predict",
            post(
                move |State(seen): State<Arc<Mutex<Vec<Seen>>>>, mut form: Multipart| async move {
                    let mut got = Seen {
                        path: "/predict".into(),
                        ..Seen::default()
                    };
                    while let Some(field) = form.next_field().await.unwrap() {
                        let name = field.name().unwrap().to_string();
                        let file_name = field.file_name().map(str::to_string);
                        let bytes = field.bytes().await.unwrap().to_vec();
                        match name.as_str() {
                            "entries" => got.entries = Some(String::from_utf8(bytes).unwrap()),
                            "text" => got.text = Some(String::from_utf8(bytes).unwrap()),
                            "image" => {
                                got.image = Some(bytes);
                                got.image_name = file_name;
                            }
                            other => panic!("unexpected part {other}"),
                        }
                    }
                    seen.lock().unwrap().push(got);
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        answer,
                    )
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

const FACES: &str = r#"{"facial-recognition": [{"score": 0.8125, "boundingBox": {"x1": 1, "y1": 2, "x2": 30, "y2": 40}, "embedding": "[0.5,-0.25]"}], "imageWidth": 451, "imageHeight": 300}"#;

#[tokio::test]
async fn a_forwarded_task_reaches_the_upstream_unchanged_and_its_answer_comes_back_unchanged() {
    let (url, seen) = upstream(FACES, 200).await;
    let server = TestServer::start(|s| s.immich.upstream_url = url.clone()).await;
    let image = photo("skimage_chelsea.png");
    // Key order and spacing as a client might send them: forwarded as they are.
    let entries = r#"{"facial-recognition": {"recognition": {"modelName": "buffalo_l"}, "detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}}}}"#;
    let (status, body) = predict(&server, image_form(entries, image.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, FACES);
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/predict");
    assert_eq!(got[0].entries.as_deref(), Some(entries));
    assert_eq!(got[0].image.as_deref(), Some(&image[..]));
    assert_eq!(got[0].image_name.as_deref(), Some("blob"));

    // A text goes on as a text.
    let (status, _) = predict(&server, text_form(entries, "ein Hund")).await;
    assert_eq!(status, 200);
    assert_eq!(seen.lock().unwrap()[1].text.as_deref(), Some("ein Hund"));
}

#[tokio::test]
async fn a_mixed_request_is_split_and_the_answers_merged() {
    let (url, seen) = upstream(FACES, 200).await;
    let server = TestServer::start(|s| s.immich.upstream_url = url.clone()).await;
    let image = photo("skimage_chelsea.png");
    let mut entries = faces();
    entries["clip"] = json!({ "visual": { "modelName": IMMICH_NAME } });
    let (status, body) = predict(&server, image_form(&entries.to_string(), image.clone())).await;
    assert_eq!(status, 200, "{body}");
    let got = seen.lock().unwrap().clone();
    let forwarded: Value = serde_json::from_str(got[0].entries.as_deref().unwrap()).unwrap();
    assert_eq!(forwarded, faces(), "only the forwarded task goes upstream");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["facial-recognition"][0]["score"], 0.8125);
    assert_eq!(
        (v["imageWidth"].as_u64(), v["imageHeight"].as_u64()),
        (Some(451), Some(300))
    );
    let ours = clip(&body);
    assert!(cosine(&ours, &native_image(&server, image).await) >= 0.99999);
}

#[tokio::test]
async fn an_upstream_failure_is_passed_on_and_an_unreachable_one_is_a_bad_gateway() {
    let (url, _) = upstream(r#"{"detail":"Invalid request format."}"#, 422).await;
    let server = TestServer::start(|s| s.immich.upstream_url = url.clone()).await;
    let (status, body) = predict(
        &server,
        image_form(&faces().to_string(), photo("pillow_hopper.jpg")),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (422, r#"{"detail":"Invalid request format."}"#)
    );

    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = TestServer::start(|s| s.immich.upstream_url = dead.clone()).await;
    let (status, body) = predict(
        &server,
        image_form(&faces().to_string(), photo("pillow_hopper.jpg")),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_unavailable"), "{body}");
}

#[tokio::test]
async fn the_api_key_and_the_drain_apply_to_predict_and_ping() {
    let server = TestServer::start(|s| s.server.api_key = Some("k".into())).await;
    let (status, _) = predict(&server, text_form(&textual(IMMICH_NAME), "a cat")).await;
    assert_eq!(status, 401);
    assert_eq!(
        reqwest::get(server.url("/ping")).await.unwrap().status(),
        401
    );
    let r = reqwest::Client::new()
        .post(server.url("/predict"))
        .bearer_auth("k")
        .multipart(text_form(&textual(IMMICH_NAME), "a cat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let server = TestServer::start(|_| {}).await;
    server.state.start_draining();
    let (status, _) = predict(&server, text_form(&textual(IMMICH_NAME), "a cat")).await;
    assert_eq!(status, 503);
    assert_eq!(
        reqwest::get(server.url("/ping")).await.unwrap().status(),
        503
    );
}

#[tokio::test]
async fn predict_requests_are_counted_in_the_metrics() {
    let server = TestServer::start(|_| {}).await;
    predict(&server, text_form(&textual(IMMICH_NAME), "a cat")).await;
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("route=\"/predict\"") && l.contains("status=\"200\"")),
        "{metrics}"
    );
}

/// A preview above axum's 2 MiB multipart default is embedded (immich sends whole files).
#[tokio::test]
async fn predict_takes_an_image_above_two_mib() {
    let server = TestServer::start(|_| {}).await;
    let png = common::noise_png(1024);
    assert!(png.len() > 3_000_000, "{} bytes", png.len());
    let (status, body) = predict(&server, image_form(&visual(IMMICH_NAME), png.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(clip(&body), native_image(&server, png).await);
}
