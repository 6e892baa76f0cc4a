//! For tests/openapi.rs: the routes in the router's source and in the document, a server with
//! no model (to meet real 503s), and a checker that validates real responses against the
//! document's schemas and remembers which schemas it has met.

use std::collections::BTreeSet;

use serde_json::{json, Value};

/// A (lowercase method, path) pair.
pub type Route = (String, String);

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every `.route("<path>", get(..).post(..))` in the router's source.
pub fn served_routes(source: &str) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let chunk = chunk.trim_start();
        let Some(rest) = chunk.strip_prefix('"') else {
            panic!("a route whose path is not a string literal: {chunk:.60}");
        };
        let (path, rest) = rest.split_once('"').expect("a closed path literal");
        // The method router runs to the `)` that closes `.route(`.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, ch)| {
                depth += match ch {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        let methods = &rest[..end];
        for method in METHODS {
            let call = format!("{method}(");
            let found = methods.match_indices(&call).any(|(i, _)| {
                i == 0 || !methods[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if found {
                routes.insert((method.to_string(), path.to_string()));
            }
        }
    }
    routes
}

/// Every (method, path) operation in the document.
pub fn documented_routes(doc: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

/// A server whose model never loads: the API answers 503 `not_ready`. Returns its base URL.
pub async fn server_without_model() -> String {
    let settings = super::common::test_settings();
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
    base
}

/// Adds `additionalProperties: false` to every object schema that lists its properties and
/// says nothing else, so a response field the document does not name fails validation.
fn forbid_undocumented_fields(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(forbid_undocumented_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_undocumented_fields),
        _ => {}
    }
}

/// Sends requests, checks each answer against the document, and records what was checked.
pub struct Checker {
    doc: Value,
    components: Value,
    client: reqwest::Client,
    met_schemas: BTreeSet<String>,
    met_ok: BTreeSet<Route>,
}

impl Checker {
    /// Reads the document from a running server.
    pub async fn new(base: &str) -> Checker {
        let client = reqwest::Client::new();
        let doc: Value = client
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut components = doc["components"].clone();
        forbid_undocumented_fields(&mut components);
        Checker {
            doc,
            components,
            client,
            met_schemas: BTreeSet::new(),
            met_ok: BTreeSet::new(),
        }
    }

    /// POSTs JSON and checks the answer.
    pub async fn json(&mut self, base: &str, path: &str, body: Value, status: u16) {
        self.send(base, "post", path, |r| r.json(&body), status)
            .await;
    }

    /// Sends a request, expects `status`, and checks the answer's content type, documented
    /// headers and body against the document's response for that status.
    pub async fn send(
        &mut self,
        base: &str,
        method: &str,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        status: u16,
    ) {
        let request = self.client.request(
            method.to_uppercase().parse().unwrap(),
            format!("{base}{path}"),
        );
        let r = build(request).send().await.unwrap();
        let headers = r.headers().clone();
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        let op = &self.doc["paths"][path][method];
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {path}: {status} is not documented"
        );
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ct.split(';').next().unwrap().trim();
        let content = documented["content"][essence].clone();
        assert!(
            content.is_object(),
            "{method} {path} {status}: `{ct}` is not documented"
        );
        for (name, _) in documented["headers"].as_object().into_iter().flatten() {
            assert!(
                headers.contains_key(name.as_str()),
                "{method} {path} {status}: no {name}"
            );
        }
        if status == 200 {
            self.met_ok.insert((method.into(), path.into()));
        }
        if essence != "application/json" {
            return;
        }
        let schema = content["schema"].clone();
        if let Some(name) = schema["$ref"].as_str() {
            self.met_schemas.insert(name.to_string());
        }
        let body: Value = serde_json::from_str(&text).unwrap();
        let root = json!({ "$ref": schema["$ref"], "components": self.components });
        let root = if schema.get("$ref").is_some() {
            root
        } else {
            schema
        };
        if let Err(e) = jsonschema::validate(&root, &body) {
            panic!(
                "{method} {path} {status}: {e} at {}\nin {body}",
                e.instance_path()
            );
        }
    }

    /// What no real response has been checked against: response schemas, and operations
    /// whose 200 was never seen.
    pub fn uncovered(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (method, path) in documented_routes(&self.doc) {
            let op = &self.doc["paths"][&path][&method];
            for (status, response) in op["responses"].as_object().unwrap() {
                for content in response["content"].as_object().into_iter().flatten() {
                    if let Some(name) = content.1["schema"]["$ref"].as_str() {
                        if !self.met_schemas.contains(name) {
                            out.push((name.to_string(), format!("{method} {path} {status}")));
                        }
                    }
                }
            }
            if !self.met_ok.contains(&(method.clone(), path.clone())) {
                out.push((format!("{method} {path}"), "200".into()));
            }
        }
        out
    }
}
