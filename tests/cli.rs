//! `clipserve embed`, run as the real binary on a temporary copy of fixture photos (with a
//! truncated JPEG and a text file named like a JPEG among them): in-process with the tiny
//! model and through a real server, into JSON Lines and `.npy`, resumed, with progress shown.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{cosine, fixture, TestServer};
use serde_json::Value;

const GOOD: &[&str] = &[
    "pillow_flower.jpg",
    "pillow_hopper.bmp",
    "pillow_hopper.gif",
    "pillow_transparent.png",
    "skimage_coins.png",
    "skimage_rocket.jpg",
];
const TRUNCATED: &str = "pillow_truncated_jpeg.jpg";
const NOT_AN_IMAGE: &str = "notes.jpg";

/// A temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("clipserve-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Good photos (one in a sub-folder), the truncated JPEG, a text file named `.jpg`, and the
/// manifest (not an image extension, so not even tried).
fn photo_folder(tmp: &TempDir) -> PathBuf {
    let root = tmp.path("photos");
    std::fs::create_dir_all(root.join("nested")).unwrap();
    for (i, name) in GOOD.iter().chain([&TRUNCATED]).enumerate() {
        let to = if i == 0 {
            root.join("nested").join(name)
        } else {
            root.join(name)
        };
        std::fs::copy(fixture("photos").join(name), to).unwrap();
    }
    std::fs::copy(fixture("photos/manifest.json"), root.join("manifest.json")).unwrap();
    std::fs::write(root.join(NOT_AN_IMAGE), "these are not pixels\n").unwrap();
    root
}

fn good_names() -> Vec<String> {
    let mut names: Vec<String> = GOOD
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i == 0 {
                format!("nested/{n}")
            } else {
                n.to_string()
            }
        })
        .collect();
    names.sort();
    names
}

fn clipserve(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_clipserve"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
        .expect("the clipserve binary runs");
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "clipserve failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn tiny() -> String {
    fixture("models/tiny").display().to_string()
}

fn embed_in_process(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "embed",
        "--model",
        &tiny_leak(),
        "--images",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    clipserve(&args)
}

fn tiny_leak() -> &'static str {
    Box::leak(tiny().into_boxed_str())
}

/// The records of a JSON Lines output as (name, embedding), in file order.
fn read_jsonl(path: &Path, key: &str) -> Vec<(String, Vec<f32>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let name = v[key].as_str().unwrap().to_string();
            let embedding = v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (name, embedding)
        })
        .collect()
}

fn assert_unit_512(records: &[(String, Vec<f32>)]) {
    for (name, e) in records {
        assert_eq!(e.len(), 512, "{name}");
        let norm: f64 = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{name}: norm {norm}");
    }
}

#[test]
fn a_folder_embeds_in_process_to_unit_vectors_and_bad_files_are_reported() {
    let tmp = TempDir::new("inproc");
    let photos = photo_folder(&tmp);
    let out_path = tmp.path("out/photos.jsonl");
    std::fs::create_dir_all(tmp.path("out")).unwrap();
    let out = embed_in_process(&photos, &out_path, &[]);
    assert_ok(&out);

    let records = read_jsonl(&out_path, "path");
    let names: Vec<String> = records.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names, good_names(), "sorted relative paths, recursively");
    assert_unit_512(&records);

    let stdout = text(&out.stdout);
    assert!(stdout.contains("embedded 6 new images"), "{stdout}");
    assert!(stdout.contains("2 skipped"), "{stdout}");
    assert!(
        stdout.contains(&format!("skipped {TRUNCATED}: image file is truncated")),
        "{stdout}"
    );
    let report = std::fs::read_to_string(tmp.path("out/photos.skipped.txt")).unwrap();
    let reported: Vec<&str> = report
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(reported, [NOT_AN_IMAGE, TRUNCATED]);
    assert!(report.contains("unrecognised image format"), "{report}");
}

#[test]
fn rerunning_resumes_and_trims_what_an_interrupted_run_left() {
    let tmp = TempDir::new("resume");
    let photos = photo_folder(&tmp);
    let out_path = tmp.path("photos.jsonl");

    // The first four items in order, one of them the text file named .jpg.
    let first = embed_in_process(&photos, &out_path, &["--limit", "4", "--batch-size", "2"]);
    assert_ok(&first);
    assert_eq!(read_jsonl(&out_path, "path").len(), 3);
    assert!(text(&first.stdout).contains("left for a later run"));

    // A crash in the middle of a write leaves half a line; the next run drops it.
    let mut bytes = std::fs::read(&out_path).unwrap();
    bytes.extend_from_slice(br#"{"path": "skimage_rocket.jpg", "embedding": [0.1, 0."#);
    std::fs::write(&out_path, bytes).unwrap();

    let second = embed_in_process(&photos, &out_path, &[]);
    assert_ok(&second);
    let stdout = text(&second.stdout);
    assert!(stdout.contains("embedded 3 new images"), "{stdout}");
    assert!(stdout.contains("3 were already in"), "{stdout}");
    let records = read_jsonl(&out_path, "path");
    let mut names: Vec<String> = records.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, good_names());
    assert_unit_512(&records);

    let third = embed_in_process(&photos, &out_path, &[]);
    assert_ok(&third);
    assert!(text(&third.stdout).contains("embedded 0 new images"));
    assert_eq!(read_jsonl(&out_path, "path").len(), GOOD.len());
}

/// Reads a `.npy` of float32 `[N, D]` as rows.
fn read_npy(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!(header_len % 64, 0, "the data is aligned");
    let header = std::str::from_utf8(&bytes[10..header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape.split(", ").map(|s| s.parse().unwrap()).collect();
    let data = &bytes[header_len..];
    assert_eq!(
        data.len(),
        dims[0] * dims[1] * 4,
        "no bytes beyond the rows"
    );
    data.chunks_exact(dims[1] * 4)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect()
}

#[test]
fn npy_output_holds_float32_rows_named_by_a_listing_and_resumes() {
    let tmp = TempDir::new("npy");
    let photos = photo_folder(&tmp);
    let npy = tmp.path("photos.npy");
    assert_ok(&embed_in_process(&photos, &npy, &["--limit", "3"]));
    assert_eq!(
        read_npy(&npy).len(),
        2,
        "nested/pillow_flower.jpg, notes.jpg, pillow_hopper.bmp"
    );
    assert_ok(&embed_in_process(&photos, &npy, &[]));

    let rows = read_npy(&npy);
    let names: Vec<String> = std::fs::read_to_string(tmp.path("photos.names.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(rows.len(), GOOD.len());
    assert_eq!(names, good_names());
    let records: Vec<(String, Vec<f32>)> = names.into_iter().zip(rows).collect();
    assert_unit_512(&records);

    // The same images into JSON Lines give the same vectors.
    let jsonl = tmp.path("photos.jsonl");
    assert_ok(&embed_in_process(&photos, &jsonl, &[]));
    for ((a, x), (b, y)) in records.iter().zip(read_jsonl(&jsonl, "path")) {
        assert_eq!(*a, b);
        assert!(cosine(x, &y) > 0.99999, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_mode_agrees_with_the_in_process_mode_and_needs_the_key() {
    let server = TestServer::start(|s| s.server.api_key = Some("bulk-key".into())).await;
    let tmp = TempDir::new("server");
    let photos = photo_folder(&tmp);
    let local = tmp.path("local.jsonl");
    let remote = tmp.path("remote.jsonl");
    let base = server.base.clone();
    let (photos2, local2, remote2) = (photos.clone(), local.clone(), remote.clone());
    let (in_process, refused, through_server) = tokio::task::spawn_blocking(move || {
        let in_process = embed_in_process(&photos2, &local2, &[]);
        let args = |key: Option<&'static str>| {
            let mut a = vec![
                "embed".to_string(),
                "--server".into(),
                base.clone(),
                "--images".into(),
                photos2.display().to_string(),
                "-o".into(),
                remote2.display().to_string(),
                "--batch-size".into(),
                "4".into(),
            ];
            if let Some(k) = key {
                a.extend(["--api-key".into(), k.into()]);
            }
            a
        };
        let run = |a: Vec<String>| {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            clipserve(&refs)
        };
        (in_process, run(args(None)), run(args(Some("bulk-key"))))
    })
    .await
    .unwrap();
    assert_ok(&in_process);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("--api-key"),
        "{}",
        text(&refused.stderr)
    );

    assert_ok(&through_server);
    let stdout = text(&through_server.stdout);
    assert!(stdout.contains("embedded 6 new images"), "{stdout}");
    let report = std::fs::read_to_string(tmp.path("remote.skipped.txt")).unwrap();
    assert!(
        report.contains(&format!("{TRUNCATED}\timage file is truncated")),
        "{report}"
    );
    assert!(
        report.contains(&format!("{NOT_AN_IMAGE}\tunrecognised image format")),
        "{report}"
    );

    let a = read_jsonl(&local, "path");
    let b = read_jsonl(&remote, "path");
    assert_eq!(a.len(), GOOD.len());
    assert_eq!(
        a.iter().map(|r| &r.0).collect::<Vec<_>>(),
        b.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let c = cosine(x, y);
        assert!(c >= 0.9999, "{name}: cosine {c}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_file_embeds_line_by_line_like_the_api() {
    let server = TestServer::start(|_| {}).await;
    let tmp = TempDir::new("texts");
    let texts = [
        "a photo of a cat",
        "",
        "una foto de un gato",
        "猫の写真",
        "a photo of a cat",
    ];
    let input = tmp.path("texts.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let out_path = tmp.path("texts.jsonl");
    let (i2, o2) = (input.clone(), out_path.clone());
    let out = tokio::task::spawn_blocking(move || {
        clipserve(&[
            "embed",
            "--model",
            tiny_leak(),
            "--texts",
            i2.to_str().unwrap(),
            "-o",
            o2.to_str().unwrap(),
        ])
    })
    .await
    .unwrap();
    assert_ok(&out);
    let records = read_jsonl(&out_path, "text");
    let names: Vec<&str> = records.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "a photo of a cat",
            "una foto de un gato",
            "猫の写真",
            "a photo of a cat"
        ]
    );
    assert_unit_512(&records);

    let api: Value = reqwest::Client::new()
        .post(server.url("/v1/embed/text"))
        .json(&serde_json::json!({ "texts": names }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for ((name, e), want) in records.iter().zip(api["embeddings"].as_array().unwrap()) {
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert!(cosine(e, &want) > 0.99999, "{name}");
    }
}

#[test]
fn progress_is_logged_off_a_terminal_and_the_bar_draws_when_forced() {
    let tmp = TempDir::new("progress");
    let photos = photo_folder(&tmp);
    let logged = embed_in_process(&photos, &tmp.path("a.jsonl"), &[]);
    assert_ok(&logged);
    let stderr = text(&logged.stderr);
    assert!(stderr.contains("embedding 8 images with model"), "{stderr}");
    assert!(
        stderr.contains("progress: 8/8 images (100%), 2 skipped"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no escape codes in a log: {stderr}"
    );

    let bar = embed_in_process(&photos, &tmp.path("b.jsonl"), &["--progress", "bar"]);
    assert_ok(&bar);
    let stderr = text(&bar.stderr);
    assert!(stderr.contains("8/8 images (2 skipped)"), "{stderr}");
    assert!(stderr.contains('█'), "the bar is drawn: {stderr}");
    assert!(stderr.contains("\u{1b}["), "with cursor movement: {stderr}");

    // The rate has at most one decimal (indicatif's default is four).
    let rate = stderr
        .split_whitespace()
        .filter_map(|w| w.strip_suffix("/s"))
        .next_back()
        .unwrap_or_else(|| panic!("no rate: {stderr}"));
    assert!(
        rate.split_once('.').is_none_or(|(_, f)| f.len() == 1),
        "{rate}/s"
    );

    let quiet = embed_in_process(&photos, &tmp.path("c.jsonl"), &["--progress", "off"]);
    assert_ok(&quiet);
    assert!(!text(&quiet.stderr).contains("progress:"));
}

/// `embed` does not listen: its help has no --addr, and an --addr given before it is refused
/// with a message that says what to use instead (it would otherwise be ignored silently).
#[test]
fn embed_offers_no_addr_and_refuses_one_given_before_it() {
    let bin = env!("CARGO_BIN_EXE_clipserve");
    let help = Command::new(bin)
        .args(["embed", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(
        help.contains("--server") && !help.contains("--addr"),
        "{help}"
    );

    let after = Command::new(bin)
        .args([
            "embed",
            "--addr",
            "127.0.0.1:1",
            "--output",
            "x.jsonl",
            "--texts",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!after.status.success());
    assert!(
        String::from_utf8_lossy(&after.stderr).contains("--addr"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );

    let before = Command::new(bin)
        .args([
            "--addr",
            "127.0.0.1:1",
            "embed",
            "--output",
            "x.jsonl",
            "--texts",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!before.status.success());
    let stderr = String::from_utf8_lossy(&before.stderr).to_string();
    assert!(
        stderr.contains("--addr 127.0.0.1:1: `clipserve embed` does not listen"),
        "{stderr}"
    );

    // The server keeps both spellings.
    let help = Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--addr"));
}

/// Ctrl-C stops `embed` after the batches in flight, and its bar stays where the work stopped
/// (indicatif's `finish` would draw it complete).
#[test]
fn an_interrupted_bar_stays_where_the_work_stopped() {
    use std::io::Read;
    let tmp = TempDir::new("interrupt");
    let root = tmp.path("many");
    std::fs::create_dir_all(&root).unwrap();
    // Enough images, one per batch and one batch at a time, that the run is still going when
    // the signal comes (about 10 ms an image here, far longer in a debug build under load).
    let total = 400;
    let jpeg = std::fs::read(fixture("photos/pillow_hopper.jpg")).unwrap();
    for i in 0..total {
        std::fs::write(root.join(format!("{i:04}.jpg")), &jpeg).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_clipserve"))
        .args(["embed", "--model", tiny_leak(), "--images"])
        .arg(&root)
        .arg("-o")
        .arg(tmp.path("out.jsonl"))
        .args(["--progress", "bar", "--batch-size", "1", "--in-flight", "1"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Wait until the bar has counted some work, then press Ctrl-C.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let counted = |s: &str| {
        s.split_whitespace()
            .filter_map(|w| w.strip_suffix(&format!("/{total}")))
            .any(|n| n.parse::<usize>().is_ok_and(|n| n > 0))
    };
    while !counted(&text(&seen)) {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "embed ended before the signal: {}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    stderr.read_to_end(&mut seen).unwrap();
    child.wait().unwrap();
    let all = text(&seen);
    assert!(all.contains("interrupted"), "{all}");
    let last = all
        .rsplit(['\r', '\n'])
        .find(|l| l.contains(&format!("/{total} images")))
        .unwrap_or_else(|| panic!("no bar: {all}"));
    assert!(
        !last.contains(&format!("{total}/{total}")),
        "the bar was drawn complete: {last}"
    );
    let written = std::fs::read_to_string(tmp.path("out.jsonl")).unwrap();
    assert!(written.lines().count() < total, "all {total} embedded");
}
