//! A stand-in Hugging Face hub on 127.0.0.1:0 serving one model folder as repository
//! `owner/name`, with the hub's URL scheme and the headers clients rely on:
//!
//! - `HEAD|GET /{owner}/{name}/resolve/{revision}/{file}` with `X-Repo-Commit` and `ETag`;
//!   small files answer 200 (ETag: git blob sha1), `.onnx` files (LFS on the real hub) answer
//!   302 to a storage origin on a second port, with `X-Linked-Etag` (sha256) and
//!   `X-Linked-Size`; unknown repositories 401 `RepoNotFound`, revisions 404
//!   `RevisionNotFound`, files 404 `EntryNotFound`.
//! - `GET /cdn/{sha256}` on the storage origin, with `Range: bytes=N-` answered 206.
//!
//! Faults: a file can be made to drop the connection halfway through its body a number of
//! times, or be missing; a token can be required. Every request is logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// The commit every revision of the stand-in resolves to.
pub const COMMIT: &str = "c0ffee0000000000000000000000000000000001";

/// One file the stand-in serves.
pub struct Served {
    pub bytes: Bytes,
    /// sha256 for LFS files, git blob sha1 for the others (as the real hub).
    pub etag: String,
    pub lfs: bool,
}

/// A request the stand-in saw.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorized: bool,
    pub storage: bool,
}

#[derive(Default)]
pub struct Faults {
    /// File -> how many more times its body is cut off halfway.
    pub drops: HashMap<String, usize>,
    /// Files answered 404 although they are in the folder.
    pub missing: HashSet<String>,
    /// A token the repository requires (a private repository).
    pub token: Option<String>,
}

struct Hub {
    files: BTreeMap<String, Served>,
    by_sha: HashMap<String, String>,
    storage_base: String,
    log: Mutex<Vec<Logged>>,
    faults: Mutex<Faults>,
}

/// A running stand-in hub.
pub struct StandIn {
    /// `http://127.0.0.1:<port>`: the endpoint.
    pub base: String,
    hub: Arc<Hub>,
    stop: Vec<oneshot::Sender<()>>,
}

impl StandIn {
    /// Serves every file under `folder` (symlinks are read through).
    pub async fn start(folder: &Path) -> StandIn {
        let mut files = BTreeMap::new();
        collect(folder, folder, &mut files);
        let by_sha = files
            .iter()
            .filter(|(_, f)| f.lfs)
            .map(|(name, f)| (f.etag.clone(), name.clone()))
            .collect();
        let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let storage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = Arc::new(Hub {
            files,
            by_sha,
            storage_base: format!("http://{}", storage.local_addr().unwrap()),
            log: Mutex::default(),
            faults: Mutex::default(),
        });
        let app = Router::new()
            .route("/{owner}/{name}/resolve/{revision}/{*file}", any(resolve))
            .route("/cdn/{sha}", get(storage_file))
            .with_state(hub.clone());
        let base = format!("http://{}", main.local_addr().unwrap());
        let mut stop = Vec::new();
        for listener in [main, storage] {
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            let app = app.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        }
        StandIn { base, hub, stop }
    }

    /// Changes the faults.
    pub fn faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.hub.faults.lock().unwrap());
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.hub.log.lock().unwrap().clone()
    }

    /// The bytes served for `file`.
    pub fn bytes(&self, file: &str) -> Bytes {
        self.hub.files[file].bytes.clone()
    }

    /// The ETag the hub announces for `file` (its sha256 for `.onnx` files).
    pub fn etag(&self, file: &str) -> String {
        self.hub.files[file].etag.clone()
    }

    /// Stops both listeners; later connections are refused.
    pub fn stop(self) {
        for tx in self.stop {
            let _ = tx.send(());
        }
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, Served>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
            continue;
        }
        let name = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let bytes = Bytes::from(std::fs::read(&path).unwrap());
        let lfs = name.ends_with(".onnx");
        let etag = if lfs {
            hex(&Sha256::digest(&bytes))
        } else {
            let mut h = Sha1::new();
            h.update(format!("blob {}\0", bytes.len()));
            h.update(&bytes);
            hex(&h.finalize())
        };
        out.insert(name, Served { bytes, etag, lfs });
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn record(hub: &Hub, method: &Method, path: String, headers: &HeaderMap, storage: bool) {
    let text = |h| {
        headers
            .get(h)
            .map(|v: &header::HeaderValue| v.to_str().unwrap().to_string())
    };
    hub.log.lock().unwrap().push(Logged {
        method: method.to_string(),
        path,
        range: text(header::RANGE),
        authorized: headers.contains_key(header::AUTHORIZATION),
        storage,
    });
}

fn error(status: StatusCode, code: &str) -> Response {
    Response::builder()
        .status(status)
        .header("x-error-code", code)
        .body(Body::from(code.to_string()))
        .unwrap()
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    UrlPath((owner, name, revision, file)): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    record(
        &hub,
        &method,
        format!("{owner}/{name}/{revision}/{file}"),
        &headers,
        false,
    );
    let (required_token, missing) = {
        let faults = hub.faults.lock().unwrap();
        (faults.token.clone(), faults.missing.contains(&file))
    };
    let authorized = required_token.is_none_or(|t| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {t}"))
    });
    if (owner, name) != ("owner".into(), "name".into()) || !authorized {
        return error(StatusCode::UNAUTHORIZED, "RepoNotFound");
    }
    if revision != "main" && revision != COMMIT {
        return error(StatusCode::NOT_FOUND, "RevisionNotFound");
    }
    let Some(served) = hub.files.get(&file).filter(|_| !missing) else {
        return error(StatusCode::NOT_FOUND, "EntryNotFound");
    };
    let answer = Response::builder()
        .header("x-repo-commit", COMMIT)
        .header(header::ETAG, format!("\"{}\"", served.etag));
    if served.lfs {
        return answer
            .status(StatusCode::FOUND)
            .header(
                header::LOCATION,
                format!("{}/cdn/{}", hub.storage_base, served.etag),
            )
            .header("x-linked-etag", format!("\"{}\"", served.etag))
            .header("x-linked-size", served.bytes.len())
            .body(Body::empty())
            .unwrap();
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(served.bytes.clone())
    };
    answer
        .header(header::CONTENT_LENGTH, served.bytes.len())
        .body(body)
        .unwrap()
}

async fn storage_file(
    State(hub): State<Arc<Hub>>,
    UrlPath(sha): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    record(&hub, &method, format!("cdn/{sha}"), &headers, true);
    let Some(file) = hub.by_sha.get(&sha) else {
        return error(StatusCode::NOT_FOUND, "NoSuchKey");
    };
    let bytes = hub.files[file].bytes.clone();
    let total = bytes.len();
    let from = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        });
    let (status, body_bytes) = match from {
        Some(from) if from < total => (StatusCode::PARTIAL_CONTENT, bytes.slice(from..)),
        Some(_) => return error(StatusCode::RANGE_NOT_SATISFIABLE, "InvalidRange"),
        None => (StatusCode::OK, bytes),
    };
    let mut answer = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, body_bytes.len())
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(from) = from {
        answer = answer.header(
            header::CONTENT_RANGE,
            format!("bytes {from}-{}/{total}", total - 1),
        );
    }
    let drop_now = {
        let mut faults = hub.faults.lock().unwrap();
        match faults.drops.get_mut(file) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    let body = if drop_now {
        // Half the body, then an error: hyper cuts the connection short of Content-Length.
        // (The pause lets the first half reach the client before the connection goes.)
        use futures::StreamExt;
        let half = body_bytes.slice(..body_bytes.len() / 2);
        let cut = async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            Err(std::io::Error::other("connection dropped by the stand-in"))
        };
        let chunks = futures::stream::once(async { Ok::<_, std::io::Error>(half) })
            .chain(futures::stream::once(cut));
        Body::from_stream(chunks)
    } else {
        Body::from(body_bytes)
    };
    answer.body(body).unwrap()
}
