//! Model download from a hub, over real HTTP on both sides: a stand-in Hugging Face hub
//! (tests/hub/standin.rs) serves the committed tiny model as `owner/name`, and the real server,
//! started with `model.source = "owner/name"`, fetches it into a temporary cache and serves it.
//! Covered: first start, a later start without the hub, interrupted downloads (resumed, never
//! trusted truncated), a missing file, a corrupt cache, a private repository's token.

#[path = "common/mod.rs"]
mod common;
#[path = "hub/standin.rs"]
mod standin;

use std::path::PathBuf;
use std::time::Duration;

use clipserve::config::Settings;
use clipserve::hub::{HubError, HubOptions, RepoId};
use common::{cosine, fixture, test_settings, TestServer};
use serde_json::{json, Value};
use standin::{StandIn, COMMIT};

/// A cache folder of its own per test, removed at the end.
struct TempCache(PathBuf);

impl TempCache {
    fn new(test: &str) -> TempCache {
        let dir = std::env::temp_dir().join(format!("clipserve-hub-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempCache(dir)
    }

    fn repo(&self) -> PathBuf {
        self.0.join("models--owner--name")
    }

    fn snapshot_file(&self, file: &str) -> PathBuf {
        self.repo().join("snapshots").join(COMMIT).join(file)
    }
}

impl Drop for TempCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Points the settings at the stand-in (by URL: a stopped one refuses connections).
fn from_hub(s: &mut Settings, endpoint: &str, cache: &TempCache) {
    s.model.source = "owner/name".into();
    s.model.hub_endpoint = endpoint.into();
    s.model.cache_dir = cache.0.display().to_string();
    s.model.download_retries = 2;
}

/// Runs the real server expecting start-up to fail, and returns the error with its causes.
async fn start_fails(tweak: impl FnOnce(&mut Settings)) -> String {
    let mut settings = test_settings();
    tweak(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = clipserve::app::run(settings, listener, std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("start-up ends");
    format!("{:#}", result.expect_err("start-up fails"))
}

async fn embed(server: &TestServer, text: &str) -> (String, Vec<f32>) {
    let body: Value = reqwest::Client::new()
        .post(server.url("/v1/embed/text"))
        .json(&json!({ "texts": [text] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vector = body["embeddings"][0]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (body["model"].as_str().unwrap().to_string(), vector)
}

fn cached_bytes(cache: &TempCache, file: &str) -> Vec<u8> {
    std::fs::read(cache.snapshot_file(file)).unwrap()
}

fn storage_gets(hub: &StandIn) -> Vec<standin::Logged> {
    hub.log().into_iter().filter(|l| l.storage).collect()
}

fn tiny() -> PathBuf {
    fixture("models/tiny")
}

#[tokio::test]
async fn a_repository_id_is_downloaded_on_first_start_and_serves_the_same_model_as_the_folder() {
    let hub = StandIn::start(&tiny()).await;
    let cache = TempCache::new("first");
    let server = TestServer::start(|s| from_hub(s, &hub.base, &cache)).await;
    let (model, vector) = embed(&server, "a photo of a cat").await;
    assert_eq!(model, "owner/name");

    let folder_server = TestServer::start(|_| {}).await;
    let (_, expected) = embed(&folder_server, "a photo of a cat").await;
    assert!(cosine(&vector, &expected) > 0.999_999);

    // The Hugging Face layout: refs/main names the commit, snapshot files link to blobs.
    let main_ref = std::fs::read_to_string(cache.repo().join("refs/main")).unwrap();
    assert_eq!(main_ref, COMMIT);
    let link = cache.snapshot_file("textual/model.onnx");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::canonicalize(&link)
        .unwrap()
        .starts_with(cache.repo().join("blobs")));
    for file in clipserve::hub::REQUIRED_FILES {
        assert_eq!(cached_bytes(&cache, file), hub.bytes(file), "{file}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(cache.repo().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Metadata by HEAD; after the first answer every file is asked for at its commit.
    let heads: Vec<String> = hub
        .log()
        .into_iter()
        .filter(|l| l.method == "HEAD")
        .map(|l| l.path)
        .collect();
    assert_eq!(heads[0], "owner/name/main/config.json");
    assert!(heads[1..].iter().all(|p| p.contains(COMMIT)), "{heads:?}");
    // Absent external-data files are remembered as absent, like huggingface_hub does.
    assert!(cache
        .repo()
        .join(".no_exist")
        .join(COMMIT)
        .join("textual/model.onnx_data")
        .exists());
}

#[tokio::test]
async fn a_second_start_serves_from_the_cache_with_the_hub_gone() {
    let hub = StandIn::start(&tiny()).await;
    let endpoint = hub.base.clone();
    let cache = TempCache::new("second");
    let first = TestServer::start(|s| from_hub(s, &endpoint, &cache)).await;
    let (_, before) = embed(&first, "una foto de un gato").await;
    first.stop().await.unwrap();
    hub.stop();

    let second = TestServer::start(|s| from_hub(s, &endpoint, &cache)).await;
    let (model, after) = embed(&second, "una foto de un gato").await;
    assert_eq!(model, "owner/name");
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_second_start_sends_no_request_to_the_hub() {
    let hub = StandIn::start(&tiny()).await;
    let cache = TempCache::new("quiet");
    TestServer::start(|s| from_hub(s, &hub.base, &cache))
        .await
        .stop()
        .await
        .unwrap();
    let requests = hub.log().len();
    let second = TestServer::start(|s| from_hub(s, &hub.base, &cache)).await;
    embed(&second, "猫の写真").await;
    assert_eq!(hub.log().len(), requests, "{:?}", &hub.log()[requests..]);
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped_and_ends_in_the_exact_file() {
    let hub = StandIn::start(&tiny()).await;
    hub.faults(|f| {
        f.drops.insert("textual/model.onnx".into(), 1);
    });
    let cache = TempCache::new("resume");
    let server = TestServer::start(|s| from_hub(s, &hub.base, &cache)).await;
    embed(&server, "a photo of a cat").await;

    let expected = hub.bytes("textual/model.onnx");
    assert_eq!(cached_bytes(&cache, "textual/model.onnx"), expected);
    let ranges: Vec<_> = storage_gets(&hub)
        .into_iter()
        .filter_map(|l| l.range)
        .collect();
    assert_eq!(ranges.len(), 1, "one resumed request: {ranges:?}");
    let from: usize = ranges[0]["bytes=".len()..ranges[0].len() - 1]
        .parse()
        .unwrap();
    assert!(from > 0 && from < expected.len(), "resumed from {from}");
}

#[tokio::test]
async fn a_download_that_keeps_failing_is_never_trusted_and_is_resumed_by_a_later_start() {
    let hub = StandIn::start(&tiny()).await;
    hub.faults(|f| {
        f.drops.insert("textual/model.onnx".into(), 3);
    });
    let cache = TempCache::new("gaveup");
    let error = start_fails(|s| from_hub(s, &hub.base, &cache)).await;
    assert!(
        error.contains("textual/model.onnx: gave up after 3 attempts"),
        "{error}"
    );
    assert!(!cache.snapshot_file("textual/model.onnx").exists());
    assert!(!cache.repo().join("refs/main").exists());

    // Offline, the partial download is not mistaken for a model.
    let error = start_fails(|s| {
        from_hub(s, &hub.base, &cache);
        s.model.offline = true;
    })
    .await;
    assert!(
        error.contains("`owner/name` at revision `main` is not complete in the cache"),
        "{error}"
    );
    assert!(
        error.contains("no cached ref for revision `main`"),
        "{error}"
    );

    // The hub recovers: the next start continues the partial file and serves.
    hub.faults(|f| f.drops.clear());
    let server = TestServer::start(|s| from_hub(s, &hub.base, &cache)).await;
    embed(&server, "a photo of a cat").await;
    assert_eq!(
        cached_bytes(&cache, "textual/model.onnx"),
        hub.bytes("textual/model.onnx")
    );
    let textual = format!("cdn/{}", hub.etag("textual/model.onnx"));
    let last = storage_gets(&hub)
        .into_iter()
        .rfind(|l| l.path == textual)
        .unwrap();
    assert!(
        last.range.as_deref().is_some_and(|r| r != "bytes=0-"),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_file_missing_from_the_repository_is_named_with_the_repository_and_revision() {
    let hub = StandIn::start(&tiny()).await;
    hub.faults(|f| {
        f.missing.insert("textual/special_tokens_map.json".into());
    });
    let cache = TempCache::new("missing");
    let error = start_fails(|s| from_hub(s, &hub.base, &cache)).await;
    assert!(
        error.contains("`textual/special_tokens_map.json` is not in repository `owner/name` at revision `main`"),
        "{error}"
    );
    let error = start_fails(|s| {
        from_hub(s, &hub.base, &cache);
        s.model.revision = "v9".into();
    })
    .await;
    assert!(error.contains("has no revision `v9`"), "{error}");
}

#[tokio::test]
async fn a_corrupt_cached_file_is_detected_and_downloaded_again() {
    let hub = StandIn::start(&tiny()).await;
    let cache = TempCache::new("corrupt");
    TestServer::start(|s| from_hub(s, &hub.base, &cache))
        .await
        .stop()
        .await
        .unwrap();
    let blob = std::fs::canonicalize(cache.snapshot_file("textual/model.onnx")).unwrap();
    let size = std::fs::metadata(&blob).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(size - 1000)
        .unwrap();

    let error = start_fails(|s| {
        from_hub(s, &hub.base, &cache);
        s.model.offline = true;
    })
    .await;
    assert!(
        error.contains(&format!(
            "cached `textual/model.onnx` has {} bytes",
            size - 1000
        )),
        "{error}"
    );

    let before = storage_gets(&hub).len();
    let server = TestServer::start(|s| from_hub(s, &hub.base, &cache)).await;
    embed(&server, "a photo of a cat").await;
    assert_eq!(
        cached_bytes(&cache, "textual/model.onnx"),
        hub.bytes("textual/model.onnx")
    );
    // Only the damaged file came again.
    let again: Vec<String> = storage_gets(&hub)[before..]
        .iter()
        .map(|l| l.path.clone())
        .collect();
    assert_eq!(again, [format!("cdn/{}", hub.etag("textual/model.onnx"))]);
}

#[tokio::test]
async fn a_private_repository_needs_a_token_which_never_leaves_the_hub_origin() {
    let hub = StandIn::start(&tiny()).await;
    hub.faults(|f| f.token = Some("hf_secret".into()));
    let cache = TempCache::new("token");
    let mut options = HubOptions {
        repo: RepoId::parse("owner/name").unwrap(),
        revision: "main".into(),
        cache_dir: cache.0.clone(),
        endpoint: hub.base.clone(),
        token: None,
        offline: false,
        retries: 0,
    };
    let error = clipserve::hub::fetch_model(&options).await.unwrap_err();
    assert!(
        matches!(error, HubError::RepoRefused { status: 401, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("set HF_TOKEN"), "{error}");

    options.token = Some("hf_secret".into());
    let folder = clipserve::hub::fetch_model(&options).await.unwrap();
    assert_eq!(folder, cache.repo().join("snapshots").join(COMMIT));
    let log = hub.log();
    assert!(log.iter().any(|l| !l.storage && l.authorized));
    assert!(
        log.iter().filter(|l| l.storage).all(|l| !l.authorized),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_source_that_is_neither_a_folder_nor_a_repository_id_is_refused_by_name() {
    let error = start_fails(|s| s.model.source = "/no/such/model-folder".into()).await;
    assert!(
        error.contains(
            "`/no/such/model-folder` is neither a folder nor a Hugging Face repository id"
        ),
        "{error}"
    );
}

/// `clipserve embed` on a first start: the download is shown on stderr (its log lines), not a
/// silent wait, and the run then embeds with the downloaded model.
#[tokio::test]
async fn embed_shows_a_first_start_download() {
    let hub = StandIn::start(&tiny()).await;
    let cache = TempCache::new("embed");
    let texts = cache.0.join("texts.txt");
    std::fs::write(&texts, "a photo of a cat\nun chat\n").unwrap();
    let out = cache.0.join("out.jsonl");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_clipserve"))
        .args([
            "embed",
            "--model",
            "owner/name",
            "--progress",
            "log",
            "--texts",
        ])
        .arg(&texts)
        .arg("-o")
        .arg(&out)
        .arg("--set")
        .arg(format!("model.hub_endpoint={}", hub.base))
        .arg("--set")
        .arg(format!("model.cache_dir={}", cache.0.display()))
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    for line in ["fetching the model from the hub", "model downloaded"] {
        assert!(stderr.contains(line), "no `{line}` in: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
}
