//! The OpenAPI document kept in step with the server: every route the router serves is in
//! `/openapi.json` with its method and nothing else is, the docs need no API key and load no
//! asset from elsewhere, and real responses from the running server validate against the
//! document's schemas (with undocumented fields refused).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{b64, photo, TestServer};
use serde_json::{json, Value};

#[path = "openapi/support.rs"]
mod support;
use support::{documented_routes, served_routes, Checker};

#[tokio::test]
async fn every_route_the_router_serves_is_documented_with_its_method_and_nothing_else() {
    let server = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let doc: Value = c
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented = documented_routes(&doc);
    let served = served_routes(include_str!("../src/http/mod.rs"));
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "{undocumented:?} served (src/http/mod.rs) but not in the OpenAPI document: annotate \
         the handler with #[utoipa::path] and list it in src/http/openapi.rs"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "{unserved:?} in the OpenAPI document but the router does not serve it"
    );

    // And over HTTP: each documented method reaches a handler, every other method is 405.
    let paths: BTreeSet<&str> = documented.iter().map(|(_, p)| p.as_str()).collect();
    for path in paths {
        for method in ["get", "post", "put", "delete", "patch"] {
            let status = c
                .request(method.to_uppercase().parse().unwrap(), server.url(path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if documented.contains(&(method.to_string(), path.to_string())) {
                assert!(status != 404 && status != 405, "{method} {path}: {status}");
            } else {
                assert_eq!(status, 405, "{method} {path} is not documented");
            }
        }
    }
}

#[tokio::test]
async fn the_document_and_the_docs_page_are_open_and_self_contained() {
    let server = TestServer::start(|s| s.server.api_key = Some("k".into())).await;
    let c = reqwest::Client::new();
    let doc = c.get(server.url("/openapi.json")).send().await.unwrap();
    assert_eq!(doc.status(), 200);
    let doc: Value = doc.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["info"]["title"], "clipserve");
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );

    let page = c.get(server.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    // Every script and stylesheet the page loads is served by clipserve itself.
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        assert!(
            html.contains(&format!("./{asset}")),
            "{asset} not in {html}"
        );
        let r = c
            .get(server.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.bytes().await.unwrap().len() > 100, "{asset} is empty");
    }
    assert!(
        !html.contains("src=\"http"),
        "the page loads a remote script"
    );
    let init = c
        .get(server.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    // `/docs` without the slash leads to the page.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.url("/docs"))
        .send()
        .await
        .unwrap();
    assert!(redirect.status().is_redirection());
}

#[tokio::test]
async fn routes_that_read_a_body_document_its_error_responses() {
    let server = TestServer::start(|_| {}).await;
    let doc: Value = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(op) = item.get("post") else { continue };
        assert!(op["requestBody"]["content"].is_object(), "{path}: no body");
        let responses = op["responses"].as_object().unwrap();
        // TEI answers a failure inside as 424 `Backend`, never 500.
        let failure = if path == "/embed" { "424" } else { "500" };
        for status in ["200", "400", "401", "413", "415", "422", failure, "503"] {
            assert!(responses.contains_key(status), "{path}: no {status}");
        }
        assert!(
            responses["503"]["headers"]["Retry-After"].is_object(),
            "{path}: 503 without Retry-After"
        );
    }
    let image = &doc["paths"]["/v1/embed/image"]["post"]["requestBody"]["content"];
    for ct in [
        "application/json",
        "multipart/form-data",
        "image/*",
        "application/octet-stream",
    ] {
        assert!(
            image[ct].is_object(),
            "/v1/embed/image does not document {ct}"
        );
    }
}

#[tokio::test]
async fn real_responses_validate_against_the_documented_schemas() {
    let server = TestServer::start(|_| {}).await;
    let mut check = Checker::new(&server.base).await;
    let jpeg = photo("pillow_hopper.jpg");
    let data_uri = format!("data:image/jpeg;base64,{}", b64(&jpeg));

    // Every success response, each content type of the image route included.
    check
        .json(
            &server.base,
            "/v1/embed/image",
            json!({ "images": [b64(&jpeg)] }),
            200,
        )
        .await;
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(jpeg.clone()).file_name("hopper.jpg"),
    );
    check
        .send(
            &server.base,
            "post",
            "/v1/embed/image",
            |r| r.multipart(form),
            200,
        )
        .await;
    let raw = jpeg.clone();
    check
        .send(
            &server.base,
            "post",
            "/v1/embed/image",
            |r| r.header("content-type", "image/jpeg").body(raw),
            200,
        )
        .await;
    check
        .json(
            &server.base,
            "/v1/embed/text",
            json!({ "texts": ["ein Hund", "猫"] }),
            200,
        )
        .await;
    check
        .json(
            &server.base,
            "/v1/tokenize",
            json!({ "texts": ["a cat"] }),
            200,
        )
        .await;
    check
        .json(
            &server.base,
            "/v1/similarity",
            json!({ "texts": ["a"], "texts_b": ["b", "c"] }),
            200,
        )
        .await;
    check
        .json(
            &server.base,
            "/v1/classify",
            json!({ "images": [data_uri.clone()], "labels": ["cat", "dog"] }),
            200,
        )
        .await;
    check
        .json(
            &server.base,
            "/v1/embeddings",
            json!({ "input": "a cat" }),
            200,
        )
        .await;
    check
        .json(
            &server.base,
            "/v1/embeddings",
            json!({ "input": [data_uri], "modality": "image", "encoding_format": "base64" }),
            200,
        )
        .await;
    for path in ["/info", "/health", "/ready", "/metrics"] {
        check.send(&server.base, "get", path, |r| r, 200).await;
    }

    // Errors, in both shapes.
    let bad_json =
        |r: reqwest::RequestBuilder| r.header("content-type", "application/json").body("{");
    check
        .send(&server.base, "post", "/v1/embed/text", bad_json, 400)
        .await;
    check
        .send(&server.base, "post", "/v1/embeddings", bad_json, 400)
        .await;
    let plain = |r: reqwest::RequestBuilder| r.header("content-type", "text/plain").body("a cat");
    check
        .send(&server.base, "post", "/v1/tokenize", plain, 415)
        .await;
    check
        .send(&server.base, "post", "/v1/embeddings", plain, 415)
        .await;
    check
        .json(
            &server.base,
            "/v1/embed/image",
            json!({ "images": [b64(b"not an image")] }),
            422,
        )
        .await;
    check
        .json(&server.base, "/v1/embeddings", json!({ "input": [] }), 422)
        .await;
    let serving = server.state.service().unwrap();
    serving.texts().inject_panics(1);
    check
        .json(
            &server.base,
            "/v1/embed/text",
            json!({ "texts": ["boom"] }),
            500,
        )
        .await;
    serving.texts().inject_panics(1);
    check
        .json(
            &server.base,
            "/v1/embeddings",
            json!({ "input": "boom" }),
            500,
        )
        .await;

    let keyed = TestServer::start(|s| s.server.api_key = Some("k".into())).await;
    check
        .json(&keyed.base, "/v1/similarity", json!({}), 401)
        .await;
    check
        .json(&keyed.base, "/v1/embeddings", json!({ "input": "a" }), 401)
        .await;
    check.send(&keyed.base, "get", "/info", |r| r, 401).await;

    let small = TestServer::start(|s| s.limits.max_body_bytes = 1024).await;
    let big = json!({ "texts": ["x".repeat(4096)] });
    check
        .json(&small.base, "/v1/classify", big.clone(), 413)
        .await;
    check
        .json(
            &small.base,
            "/v1/embeddings",
            json!({ "input": "x".repeat(4096) }),
            413,
        )
        .await;

    let loading = support::server_without_model().await;
    check.send(&loading, "get", "/ready", |r| r, 503).await;
    check.send(&loading, "get", "/info", |r| r, 503).await;
    check
        .json(&loading, "/v1/embed/text", json!({ "texts": ["a"] }), 503)
        .await;
    check
        .json(&loading, "/v1/embeddings", json!({ "input": "a" }), 503)
        .await;

    // The TEI, OpenAI model list and immich routes.
    check
        .json(&server.base, "/embed", json!({ "inputs": ["a", "b"] }), 200)
        .await;
    check
        .json(&server.base, "/embed", json!({ "inputs": [] }), 400)
        .await;
    check
        .json(&keyed.base, "/embed", json!({ "inputs": "a" }), 401)
        .await;
    check
        .send(&server.base, "get", "/v1/models", |r| r, 200)
        .await;
    check
        .send(&keyed.base, "get", "/v1/models", |r| r, 401)
        .await;
    check.send(&server.base, "get", "/ping", |r| r, 200).await;
    check.send(&loading, "get", "/ping", |r| r, 503).await;
    let immich = |entries: Value, part: reqwest::multipart::Part, name: &'static str| {
        move |r: reqwest::RequestBuilder| {
            r.multipart(
                reqwest::multipart::Form::new()
                    .text("entries", entries.to_string())
                    .part(name, part),
            )
        }
    };
    let model = "XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k";
    let visual = json!({ "clip": { "visual": { "modelName": model } } });
    let textual = json!({ "clip": { "textual": { "modelName": model } } });
    let image_part = || reqwest::multipart::Part::bytes(jpeg.clone()).file_name("blob");
    let text_part = || reqwest::multipart::Part::text("ein Hund");
    check
        .send(
            &server.base,
            "post",
            "/predict",
            immich(visual.clone(), image_part(), "image"),
            200,
        )
        .await;
    check
        .send(
            &server.base,
            "post",
            "/predict",
            immich(textual, text_part(), "text"),
            200,
        )
        .await;
    let faces = json!({ "facial-recognition": { "detection": { "modelName": "buffalo_l" } } });
    check
        .send(
            &server.base,
            "post",
            "/predict",
            immich(faces, image_part(), "image"),
            400,
        )
        .await;
    let undecodable = reqwest::multipart::Part::bytes(b"not an image".to_vec()).file_name("blob");
    check
        .send(
            &server.base,
            "post",
            "/predict",
            immich(visual, undecodable, "image"),
            422,
        )
        .await;

    // Every schema a response refers to has met a real response, and every route its 200.
    let uncovered: BTreeMap<_, _> = check.uncovered().into_iter().collect();
    assert!(
        uncovered.is_empty(),
        "never checked against a real response: {uncovered:?}"
    );
}

/// The request schema of an operation's body, resolvable on its own (components alongside).
fn request_schema(doc: &Value, path: &str, content_type: &str) -> Value {
    let schema =
        doc["paths"][path]["post"]["requestBody"]["content"][content_type]["schema"].clone();
    assert!(
        schema.is_object(),
        "{path} documents no {content_type} body"
    );
    let mut root = schema;
    root["components"] = doc["components"].clone();
    root
}

#[tokio::test]
async fn a_request_body_is_served_exactly_when_the_document_allows_it() {
    // Small limits, so the document's bounds are met at both edges.
    let server = TestServer::start(|s| {
        s.limits.max_texts_per_request = 3;
        s.limits.max_images_per_request = 2;
        s.limits.max_text_chars = 40;
    })
    .await;
    let doc: Value = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let img = b64(&photo("pillow_hopper.jpg"));
    let dims = server.state.service().unwrap().model().embed_dim;
    let cases: Vec<(&str, Value)> = vec![
        // The refusals schemathesis found in schema-valid requests, and their neighbours.
        ("/v1/embed/text", json!({ "texts": [] })),
        ("/v1/embed/text", json!({ "texts": "a cat" })),
        ("/v1/embed/text", json!({ "texts": ["a", "b", "c"] })),
        ("/v1/embed/text", json!({ "texts": ["a", "b", "c", "d"] })),
        ("/v1/embed/text", json!({ "texts": ["x".repeat(40)] })),
        ("/v1/embed/text", json!({ "texts": ["x".repeat(41)] })),
        ("/v1/embed/text", json!({ "texts": [""], "extra": 1 })),
        ("/v1/tokenize", json!({ "texts": [] })),
        ("/v1/tokenize", json!({ "texts": "ein Hund" })),
        ("/v1/embed/image", json!({ "images": [] })),
        (
            "/v1/embed/image",
            json!({ "images": [img.clone(), img.clone()] }),
        ),
        (
            "/v1/embed/image",
            json!({ "images": [img.clone(), img.clone(), img.clone()] }),
        ),
        (
            "/v1/similarity",
            json!({ "images": [], "images_b": [], "texts": [], "texts_b": null }),
        ),
        (
            "/v1/similarity",
            json!({ "images": [img.clone()], "texts": "a cat" }),
        ),
        (
            "/v1/similarity",
            json!({ "texts": ["a"], "texts_b": ["b", "c"] }),
        ),
        (
            "/v1/similarity",
            json!({ "images": [img.clone()], "images_b": [img.clone()] }),
        ),
        (
            "/v1/similarity",
            json!({ "images": [img.clone()], "texts": ["a"], "texts_b": null }),
        ),
        ("/v1/similarity", json!({ "texts": ["a"] })),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": [] }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": "cat" }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": ["cat"], "template": null }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": ["cat"], "template": "no slot" }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": ["x".repeat(26)], "template": "a {}" }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": ["x".repeat(27)], "template": "a {}" }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": ["cat"], "template": "{}0123456789abcd" }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img.clone()], "labels": ["cat"], "template": "{}0123456789abcde" }),
        ),
        ("/v1/embeddings", json!({ "input": [] })),
        ("/v1/embeddings", json!({ "input": "a", "dimensions": 0 })),
        ("/v1/embeddings", json!({ "input": "a", "dimensions": 1 })),
        (
            "/v1/embeddings",
            json!({ "input": "a", "dimensions": dims }),
        ),
        (
            "/v1/embeddings",
            json!({ "input": "a", "dimensions": dims + 1 }),
        ),
        (
            "/v1/embeddings",
            json!({ "input": "a", "dimensions": null, "model": null, "user": null }),
        ),
        (
            "/v1/embeddings",
            json!({ "input": [img.clone(), img.clone()], "modality": "image" }),
        ),
        (
            "/v1/embeddings",
            json!({ "input": [img.clone(), img.clone(), img.clone()], "modality": "image" }),
        ),
        ("/v1/embeddings", json!({ "input": ["a", "b", "c", "d"] })),
        ("/v1/embeddings", json!({ "input": [[1, 2]] })),
        (
            "/v1/embeddings",
            json!({ "input": "a", "encoding_format": null }),
        ),
        ("/embed", json!({ "inputs": [] })),
        (
            "/embed",
            json!({ "inputs": "a", "normalize": true, "truncate": null, "dimensions": 8 }),
        ),
        ("/embed", json!({ "inputs": "a", "normalize": false })),
        ("/embed", json!({ "inputs": ["a", "b", "c", "d"] })),
    ];
    let client = reqwest::Client::new();
    for (path, body) in cases {
        let schema = request_schema(&doc, path, "application/json");
        let allowed = jsonschema::is_valid(&schema, &body);
        let status = client
            .post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(
            allowed,
            status.is_success(),
            "{path} {body}: the document {} it, the server answered {status}",
            if allowed { "allows" } else { "refuses" }
        );
    }

    // Multipart: an empty form is refused by both.
    let form = reqwest::multipart::Form::new();
    let status = client
        .post(server.url("/v1/embed/image"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_client_error(), "{status}");
    let schema = request_schema(&doc, "/v1/embed/image", "multipart/form-data");
    assert!(!jsonschema::is_valid(&schema, &json!({})));
    assert!(jsonschema::is_valid(&schema, &json!({ "image": ["x"] })));
    assert!(!jsonschema::is_valid(
        &schema,
        &json!({ "image": ["x", "x", "x"] })
    ));
}

#[tokio::test]
async fn the_document_states_the_running_limits_and_the_immich_form() {
    let server = TestServer::start(|s| {
        s.limits.max_texts_per_request = 7;
        s.limits.max_images_per_request = 5;
        s.limits.max_text_chars = 99;
    })
    .await;
    let doc: Value = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts = request_schema(&doc, "/v1/embed/text", "application/json");
    let texts = serde_json::to_string(&texts).unwrap();
    assert!(
        texts.contains(r#""maxItems":7"#) && texts.contains(r#""maxLength":99"#),
        "{texts}"
    );
    let form = request_schema(&doc, "/predict", "multipart/form-data");
    let visual = |model: &str| {
        json!({
            "entries": { "clip": { "visual": { "modelName": model } } },
            "image": "bytes",
        })
    };
    assert!(jsonschema::is_valid(
        &form,
        &visual("XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k")
    ));
    assert!(jsonschema::is_valid(
        &form,
        &visual("immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k")
    ));
    assert!(jsonschema::is_valid(&form, &visual("tiny")));
    assert!(!jsonschema::is_valid(&form, &visual("ViT-B-32__openai")));
    let text = json!({
        "entries": { "clip": { "textual": { "modelName": "tiny", "options": { "language": "de" } } } },
        "text": "ein Hund",
    });
    assert!(jsonschema::is_valid(&form, &text));
    // Without an upstream, other tasks are refused; with one, they are allowed.
    let faces = json!({ "entries": { "facial-recognition": {} }, "image": "bytes" });
    assert!(!jsonschema::is_valid(&form, &faces));
    let forwarding =
        TestServer::start(|s| s.immich.upstream_url = "http://127.0.0.1:9".into()).await;
    let doc: Value = reqwest::get(forwarding.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let form = request_schema(&doc, "/predict", "multipart/form-data");
    assert!(jsonschema::is_valid(&form, &faces));
}
