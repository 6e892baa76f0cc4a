//! What loading the text tokenizer costs: resident memory, peak and time.
//!
//! ```text
//! cargo run --release --example tokenizer_memory -- [--stock] [TOKENIZER_JSON]
//! ```
//!
//! Loads `TEXT_TOKENIZER_JSON` (default: the tiny fixture model's, which is XLM-R's real
//! 250,002-piece file) once, as `TextTokenizer::from_file` does, or with `--stock` as it did
//! before `LeanUnigram` (`tokenizers::Tokenizer::from_file`, truncation and padding off, one
//! empty text encoded), and prints the change in VmRSS (after the JSON text is dropped), the
//! change in VmHWM (the peak during the load), the same RSS after glibc's free memory is handed
//! back (as the server does once loaded), and the load time. One load per process, so that
//! neither run sees the other's heap. Then times `encode_raw` (the stock: `encode_fast` with
//! special tokens, the same pipeline) on the 32 calibration texts, first pass and 50 more
//! (the crate's `Unigram` caches words it has seen), and on 2,000 texts of random words it has
//! not.

use std::path::PathBuf;
use std::time::Instant;

use clipserve::preprocess::text::TextTokenizer;

/// `VmRSS` and `VmHWM` of this process, in kB.
fn memory_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stock = args.iter().any(|a| a == "--stock");
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/models/tiny/textual/tokenizer.json")
        });
    let text = "a photo of a cat sleeping on a sofa";
    let (rss0, hwm0) = memory_kb();
    let start = Instant::now();
    type Encode = Box<dyn Fn(&str) -> Vec<u32>>;
    let (ids, encode): (Vec<u32>, Encode) = if stock {
        let mut tok = tokenizers::Tokenizer::from_file(&path).expect("load tokenizer");
        tok.with_truncation(None).expect("no truncation");
        tok.with_padding(None);
        tok.encode_fast("", true).expect("encode empty text");
        let load = start.elapsed();
        let ids = tok
            .encode_fast(text, true)
            .expect("encode")
            .get_ids()
            .to_vec();
        println!("load_ms {:.1}", load.as_secs_f64() * 1e3);
        (
            ids,
            Box::new(move |t| tok.encode_fast(t, true).expect("encode").get_ids().to_vec()),
        )
    } else {
        let tok = TextTokenizer::from_file(&path, 77).expect("load tokenizer");
        let load = start.elapsed();
        let ids = tok.encode_raw(text).expect("encode");
        println!("load_ms {:.1}", load.as_secs_f64() * 1e3);
        (ids, Box::new(move |t| tok.encode_raw(t).expect("encode")))
    };
    let (rss1, hwm1) = memory_kb();
    clipserve::engine::release_free_memory();
    let (rss2, _) = memory_kb();
    println!(
        "{} {}: rss_delta_mb {:.1} peak_delta_mb {:.1} (hwm {:.1} -> {:.1}) rss_delta_after_trim_mb {:.1}",
        if stock { "stock" } else { "lean" },
        path.display(),
        mb(rss1.saturating_sub(rss0)),
        mb(hwm1.saturating_sub(rss0)),
        mb(hwm0),
        mb(hwm1),
        mb(rss2.saturating_sub(rss0)),
    );
    println!("ids {ids:?}");
    let calibration = include_str!("../src/engine/calibration/texts.txt");
    let calibration: Vec<&str> = calibration.lines().collect();
    let time_pass = |texts: &[&str]| {
        let start = Instant::now();
        let n: usize = texts.iter().map(|t| encode(t).len()).sum();
        (start.elapsed().as_secs_f64() * 1e6 / texts.len() as f64, n)
    };
    let (first, n) = time_pass(&calibration);
    let start = Instant::now();
    for _ in 0..50 {
        time_pass(&calibration);
    }
    let warm = start.elapsed().as_secs_f64() * 1e6 / (50 * calibration.len()) as f64;
    let random = random_texts(2000);
    let random: Vec<&str> = random.iter().map(String::as_str).collect();
    let (unseen, m) = time_pass(&random);
    println!(
        "encode_us_per_text calibration_first {first:.1} calibration_warm {warm:.1} ({n} ids) random_unseen {unseen:.1} ({m} ids)"
    );
}

/// Texts of 3-12 words of random letters (Latin, Cyrillic, CJK), none seen before.
fn random_texts(count: usize) -> Vec<String> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let ranges = [(0x61, 26), (0x61, 26), (0x430, 32), (0x4e00, 2000)];
    (0..count)
        .map(|_| {
            let words: Vec<String> = (0..3 + next(10))
                .map(|_| {
                    let (base, span) = ranges[next(ranges.len() as u64) as usize];
                    (0..2 + next(8))
                        .filter_map(|_| char::from_u32(base + next(span) as u32))
                        .collect()
                })
                .collect();
            words.join(" ")
        })
        .collect()
}
