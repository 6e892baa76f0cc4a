//! Bad (and odd but valid) texts and JSON bodies, on every JSON route.

use serde_json::{json, Value};

use crate::harness::{bad, Expect, Harness};

fn body(h: &Harness, path: &str, bytes: Vec<u8>) -> reqwest::RequestBuilder {
    h.post(path)
        .header("content-type", "application/json")
        .body(bytes)
}

fn texts(h: &Harness, value: Value) -> reqwest::RequestBuilder {
    h.post("/v1/embed/text").json(&value)
}

#[tokio::test]
async fn a_one_megabyte_text_is_refused_as_too_long() {
    let h = Harness::start(|_| {}).await;
    let huge = "word ".repeat(200_000);
    for path in ["/v1/embed/text", "/v1/tokenize"] {
        let a = h
            .check(
                path,
                h.post(path).json(&json!({ "texts": ["short", huge] })),
                Expect::Error(422, "text_too_long"),
            )
            .await;
        assert_eq!(a.body["error"]["index"], 1);
    }
    h.check(
        "a 1 MB label",
        h.post("/v1/similarity")
            .json(&json!({ "texts": ["a"], "texts_b": [huge] })),
        Expect::Error(422, "text_too_long"),
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_is_a_malformed_request() {
    let h = Harness::start(|_| {}).await;
    for (case, bytes) in [
        (
            "a stray continuation byte",
            b"{\"texts\": [\"a\x80b\"]}".to_vec(),
        ),
        (
            "an overlong encoding",
            b"{\"texts\": [\"\xc0\xaf\"]}".to_vec(),
        ),
        (
            "an encoded surrogate",
            b"{\"texts\": [\"\xed\xa0\x80\"]}".to_vec(),
        ),
        (
            "a lone surrogate escape",
            br#"{"texts": ["\ud800"]}"#.to_vec(),
        ),
        (
            "a truncated sequence",
            b"{\"texts\": [\"\xe6\x97\"]}".to_vec(),
        ),
        (
            "invalid utf-8 in a key",
            b"{\"te\xffxts\": [\"a\"]}".to_vec(),
        ),
    ] {
        h.check(
            case,
            body(&h, "/v1/embed/text", bytes),
            Expect::Error(400, "invalid_request"),
        )
        .await;
    }
}

#[tokio::test]
async fn control_characters_are_valid_text() {
    let h = Harness::start(|_| {}).await;
    let odd = [
        "\u{0}",
        "nul\u{0}inside",
        "bell\u{7} escape\u{1b}[31m delete\u{7f}",
        "\u{200b}\u{200d}\u{feff}",
        "\u{202e}right to left override",
        "tabs\tand\nnew\r\nlines",
        "\u{fffd}\u{fffd}",
        "",
        "   \t\n ",
    ];
    h.check(
        "control and invisible characters",
        texts(&h, json!({ "texts": odd })),
        Expect::Embeddings(odd.len()),
    )
    .await;
    let a = crate::harness::send(h.post("/v1/tokenize").json(&json!({ "texts": odd }))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Every text, even an empty one, becomes at least `<s></s>`.
    for ids in a.body["ids"].as_array().expect("ids") {
        assert!(ids.as_array().expect("a list").len() >= 2, "{ids}");
    }
}

#[tokio::test]
async fn a_list_of_a_hundred_thousand_texts_is_refused_by_count() {
    let h = Harness::start(|_| {}).await;
    let many: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    for path in ["/v1/embed/text", "/v1/tokenize"] {
        h.check(
            path,
            h.post(path).json(&json!({ "texts": many })),
            Expect::Error(422, "too_many_items"),
        )
        .await;
    }
    h.check(
        "a hundred thousand labels",
        h.post("/v1/classify")
            .json(&json!({ "images": [crate::common::b64(&bad("small.jpg"))], "labels": many })),
        Expect::Error(422, "too_many_items"),
    )
    .await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_exhausting_the_stack() {
    let h = Harness::start(|_| {}).await;
    for depth in [200, 100_000, 1_000_000] {
        let nested = format!(
            "{{\"texts\": {}\"a\"{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        h.check(
            &format!("arrays {depth} deep"),
            body(&h, "/v1/embed/text", nested.into_bytes()),
            Expect::Error(400, "invalid_request"),
        )
        .await;
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        h.check(
            &format!("objects {depth} deep"),
            body(&h, "/v1/similarity", objects.into_bytes()),
            Expect::Error(400, "invalid_request"),
        )
        .await;
    }
}

#[tokio::test]
async fn wrong_field_types_are_malformed_requests_on_every_route() {
    let h = Harness::start(|_| {}).await;
    let img = crate::common::b64(&bad("small.jpg"));
    let cases = [
        ("/v1/embed/text", json!({ "texts": null })),
        ("/v1/embed/text", json!({ "texts": [null] })),
        ("/v1/embed/text", json!({ "texts": [["nested"]] })),
        ("/v1/embed/text", json!({ "texts": { "0": "a" } })),
        ("/v1/embed/text", json!(["a", "b"])),
        ("/v1/embed/text", json!("a")),
        ("/v1/tokenize", json!({ "texts": [1.5] })),
        ("/v1/embed/image", json!({ "images": [42] })),
        ("/v1/embed/image", json!({ "images": img })),
        // One string is a list of one (`"texts": "a"`); a number is neither.
        ("/v1/similarity", json!({ "texts": 7, "texts_b": ["b"] })),
        (
            "/v1/similarity",
            json!({ "images": [true], "texts": ["b"] }),
        ),
        ("/v1/classify", json!({ "images": [img], "labels": 7 })),
        (
            "/v1/classify",
            json!({ "images": [img], "labels": ["cat"], "template": 7 }),
        ),
    ];
    for (path, value) in cases {
        h.check(
            &format!("{path} {value}"),
            h.post(path).json(&value),
            Expect::Error(400, "invalid_request"),
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_fields_are_refused_on_every_route() {
    let h = Harness::start(|_| {}).await;
    let img = crate::common::b64(&bad("small.jpg"));
    let cases = [
        (
            "/v1/embed/text",
            json!({ "texts": ["a"], "normalize": false }),
        ),
        ("/v1/tokenize", json!({ "texts": ["a"], "max_length": 9 })),
        (
            "/v1/embed/image",
            json!({ "images": [img], "url": "http://x" }),
        ),
        (
            "/v1/similarity",
            json!({ "texts": ["a"], "texts_b": ["b"], "k": 1 }),
        ),
        (
            "/v1/classify",
            json!({ "images": [img], "labels": ["a"], "Template": "{}" }),
        ),
    ];
    for (path, value) in cases {
        let a = h
            .check(
                &format!("{path} {value}"),
                h.post(path).json(&value),
                Expect::Error(400, "invalid_request"),
            )
            .await;
        let message = a.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains("unknown field"), "{path}: {message}");
    }
}
