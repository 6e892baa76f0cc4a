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
        for status in ["200", "400", "401", "413", "415", "422", "500", "503"] {
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

    // Every schema a response refers to has met a real response, and every route its 200.
    let uncovered: BTreeMap<_, _> = check.uncovered().into_iter().collect();
    assert!(
        uncovered.is_empty(),
        "never checked against a real response: {uncovered:?}"
    );
}
