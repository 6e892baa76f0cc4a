//! Configuration fails closed, on the real binary: `CLIPSERVE_API_KEY` protects the server
//! (and is what `clipserve embed --server` sends); a misspelled variable, a log level that is
//! no level and a value of the wrong type each stop start-up at once, before the model loads,
//! with a message naming what the user wrote; and the key is never printed, neither by
//! `clipserve config` nor in the server's log.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture, TestServer};
use serde_json::{json, Value};

/// A key distinctive enough that finding it in any output means it leaked.
const KEY: &str = "test-key-7f3a9c";

/// The binary with a clean environment (no `CLIPSERVE_*` or `RUST_LOG` of the caller), run
/// from the repository root, with `env` set.
fn clipserve(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clipserve"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CLIPSERVE_") || name == "RUST_LOG" {
            cmd.env_remove(&*name);
        }
    }
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(env.iter().copied());
    cmd
}

fn tiny() -> String {
    fixture("models/tiny").display().to_string()
}

/// Runs `clipserve serve` with the tiny model and `env`, expecting it to stop by itself:
/// returns its output and how long it ran. Killed (and the test failed) after 20 s.
fn failed_start(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let tiny = tiny();
    let mut all = vec!["serve", "--model", &tiny, "--addr", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let mut child = clipserve(&all, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the clipserve binary starts");
    loop {
        if child.try_wait().expect("waitpid").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("clipserve {all:?} with {env:?} kept running: a bad setting was accepted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    (
        child.wait_with_output().expect("the output is read"),
        elapsed,
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The run failed quickly, before anything was loaded or bound, and its error is `expected`.
fn assert_refused(out: &Output, elapsed: Duration, expected: &str) {
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "exit 0:\n{stderr}");
    assert!(
        elapsed < Duration::from_secs(5),
        "took {elapsed:?} to refuse"
    );
    assert!(
        !stdout.contains("listening") && !stdout.contains("model") && !stderr.contains("loading"),
        "something loaded before the refusal:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected `{expected}` in:\n{stderr}"
    );
}

#[test]
fn a_misspelled_variable_stops_start_up_with_the_close_match() {
    let (out, elapsed) = failed_start(&[], &[("CLIPSERVE_BATCHNG_LINGER_MS", "5")]);
    assert_refused(
        &out,
        elapsed,
        "CLIPSERVE_BATCHNG_LINGER_MS is not a setting; did you mean CLIPSERVE_BATCHING_LINGER_MS?",
    );
}

#[test]
fn a_log_level_that_is_no_level_stops_start_up_and_every_subcommand() {
    let (out, elapsed) = failed_start(&["--set", "log.level=loud"], &[]);
    assert_refused(
        &out,
        elapsed,
        "--set log.level=loud: `loud` is not a level or directive; expected a level (trace, \
         debug, info, warn, error or off) or comma-separated target=level directives",
    );
    let config = clipserve(&["config"], &[("CLIPSERVE_LOG_LEVEL", "loud")])
        .output()
        .unwrap();
    assert!(!config.status.success());
    assert!(
        text(&config.stderr).contains("CLIPSERVE_LOG_LEVEL=loud: `loud` is not a level"),
        "{}",
        text(&config.stderr)
    );
    let (out, elapsed) = failed_start(&[], &[("RUST_LOG", "clipserve=chatty")]);
    assert_refused(
        &out,
        elapsed,
        "RUST_LOG=clipserve=chatty: `clipserve=chatty` is not a level or directive",
    );
}

#[test]
fn a_value_of_the_wrong_type_stops_start_up_naming_the_variable_and_what_is_accepted() {
    let (out, elapsed) = failed_start(&[], &[("CLIPSERVE_BATCHING_MAX_IMAGE_BATCH", "abc")]);
    assert_refused(
        &out,
        elapsed,
        "CLIPSERVE_BATCHING_MAX_IMAGE_BATCH=abc: expected a whole number, 0 or more (default 8)",
    );
    assert!(
        !text(&out.stderr).contains("column"),
        "{}",
        text(&out.stderr)
    );
    let (out, elapsed) = failed_start(&["--set", "model.exif=sideways"], &[]);
    assert_refused(
        &out,
        elapsed,
        "--set model.exif=sideways: expected `apply` or `ignore`",
    );
}

#[test]
fn two_api_key_variables_that_disagree_stop_start_up_naming_both_and_neither_value() {
    let (out, elapsed) = failed_start(
        &[],
        &[
            ("CLIPSERVE_API_KEY", KEY),
            ("CLIPSERVE_SERVER_API_KEY", "another-key"),
        ],
    );
    assert_refused(
        &out,
        elapsed,
        "CLIPSERVE_API_KEY and CLIPSERVE_SERVER_API_KEY both set server.api_key, to different values",
    );
    assert!(!text(&out.stderr).contains(KEY));
    assert!(!text(&out.stderr).contains("another-key"));
}

#[test]
fn clipserve_config_shows_the_api_key_redacted() {
    for name in ["CLIPSERVE_API_KEY", "CLIPSERVE_SERVER_API_KEY"] {
        let out = clipserve(&["config"], &[(name, KEY)]).output().unwrap();
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(stdout.contains("api_key = \"***\""), "{stdout}");
        assert!(!stdout.contains(KEY), "{stdout}");
    }
    let out = clipserve(&["config", "--set", &format!("server.api_key={KEY}")], &[])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("api_key = \"***\""));
    assert!(!text(&out.stdout).contains(KEY));
}

/// `clipserve serve` on an ephemeral port, its address read from the JSON `listening` line;
/// everything it prints is kept.
struct Server {
    child: Child,
    base: String,
    output: Arc<Mutex<String>>,
}

impl Server {
    fn spawn(env: &[(&str, &str)]) -> Server {
        let mut base_env = vec![
            ("CLIPSERVE_MODEL", tiny()),
            ("CLIPSERVE_ADDR", "127.0.0.1:0".into()),
            ("CLIPSERVE_LOG_FORMAT", "json".into()),
            // The most verbose log: the key must not be in any line of it.
            ("RUST_LOG", "debug".into()),
            // One plan per tower with symbolic shapes: the quickest to load.
            ("CLIPSERVE_MODEL_IMAGE_BATCH_BUCKETS", "[]".into()),
            ("CLIPSERVE_MODEL_TEXT_SEQ_BUCKETS", "[]".into()),
        ];
        base_env.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let pairs: Vec<(&str, &str)> = base_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut child = clipserve(&["serve"], &pairs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the clipserve binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let kept = output.clone();
        std::thread::spawn(move || {
            let mut all = String::new();
            let _ = stderr.read_to_string(&mut all);
            kept.lock().expect("output lock").push_str(&all);
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let (addr_tx, addr_rx) = mpsc::channel();
        let kept = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let addr = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
                    (v["message"] == "listening")
                        .then(|| v["addr"].as_str()?.parse::<SocketAddr>().ok())
                        .flatten()
                });
                if let Some(addr) = addr {
                    let _ = addr_tx.send(addr);
                }
                let mut all = kept.lock().expect("output lock");
                all.push_str(&line);
                all.push('\n');
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs the address it listens on");
        Server {
            child,
            base: format!("http://{addr}"),
            output,
        }
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(120), "never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipserve_api_key_protects_the_server_and_never_reaches_its_log() {
    let server = Server::spawn(&[("CLIPSERVE_API_KEY", KEY)]);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/embed/text", server.base);
    let body = json!({ "texts": ["a photo of a cat"] });
    let without = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let wrong = client
        .post(&url)
        .bearer_auth("not-the-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let with = client
        .post(&url)
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    let embedded: Value = with.json().await.unwrap();
    assert_eq!(embedded["embeddings"].as_array().map(Vec::len), Some(1));
    // Let the request's log lines be written, then look for the key in all of them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = server.output();
    assert!(output.contains("listening"), "{output}");
    assert!(!output.contains(KEY), "the key is in the log:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_through_a_server_sends_the_key_from_the_same_variable() {
    let server = TestServer::start(|s| s.server.api_key = Some(KEY.into())).await;
    let dir = std::env::temp_dir().join(format!("clipserve-config-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let texts = dir.join("texts.txt");
    std::fs::write(&texts, "a cat\na dog\n").unwrap();
    let run = |env: Vec<(&'static str, &'static str)>, out: &str| {
        let output = dir.join(out);
        let args = [
            "embed".to_string(),
            "--server".into(),
            server.base.clone(),
            "--texts".into(),
            texts.display().to_string(),
            "-o".into(),
            output.display().to_string(),
        ];
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = clipserve(&refs, &env).output().unwrap();
            (out, std::fs::read_to_string(output).unwrap_or_default())
        })
    };
    let (refused, _) = run(vec![], "none.jsonl").await.unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("CLIPSERVE_API_KEY"),
        "{}",
        text(&refused.stderr)
    );
    for (name, out) in [
        ("CLIPSERVE_API_KEY", "short.jsonl"),
        ("CLIPSERVE_SERVER_API_KEY", "long.jsonl"),
    ] {
        let (done, written) = run(vec![(name, KEY)], out).await.unwrap();
        assert!(done.status.success(), "{name}: {}", text(&done.stderr));
        assert_eq!(written.lines().count(), 2, "{written}");
        assert!(!text(&done.stdout).contains(KEY) && !text(&done.stderr).contains(KEY));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_precision_setting_out_of_range_or_unknown_stops_start_up() {
    let (out, elapsed) = failed_start(&[], &[("CLIPSERVE_MODEL_PRECISION_MIN_COSINE", "1.5")]);
    assert_refused(
        &out,
        elapsed,
        "CLIPSERVE_MODEL_PRECISION_MIN_COSINE=1.5: expected a cosine between 0 and 1",
    );
    let (out, elapsed) = failed_start(&[], &[("CLIPSERVE_MODEL_IMAGE_PRECISION", "fast")]);
    assert_refused(&out, elapsed, "CLIPSERVE_MODEL_IMAGE_PRECISION=fast");
}
