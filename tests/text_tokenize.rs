//! The text side of preprocessing against the Python reference: token ids from the bare
//! Hugging Face tokenizer (golden files) and OpenCLIP's cleaning + tokenization
//! (`tests/fixtures/text/clean_reference.json`, made by `make_clean_reference.py`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use clipserve::preprocess::clean::clean;
use clipserve::preprocess::text::{TextError, TextTokenizer};
use serde::Deserialize;

const CONTEXT_LENGTH: usize = 77;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn tokenizer() -> &'static TextTokenizer {
    static TOKENIZER: OnceLock<TextTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = fixture("models/tiny/textual/tokenizer.json");
        TextTokenizer::from_file(&path, CONTEXT_LENGTH)
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(rel: &str) -> T {
    let path = fixture(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

#[derive(Deserialize)]
struct Golden {
    cases: Vec<GoldenCase>,
}

#[derive(Deserialize)]
struct GoldenCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct TransformersGolden {
    single: Vec<(String, Vec<u32>)>,
}

#[derive(Deserialize)]
struct Reference {
    context_length: usize,
    pad_id: u32,
    cases: Vec<RefCase>,
}

#[derive(Deserialize)]
struct RefCase {
    name: String,
    text: String,
    clean: String,
    ids: Vec<u32>,
    padded: Vec<u32>,
    clean_without_fix_encoding: String,
    known_difference: Option<KnownDifference>,
}

#[derive(Deserialize)]
struct KnownDifference {
    kind: String,
    reason: String,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| read_json("text/clean_reference.json"))
}

fn golden_pairs() -> Vec<(String, Vec<u32>)> {
    let golden: Golden = read_json("text/golden_ids.json");
    let transformers: TransformersGolden = read_json("text/golden_ids_transformers_tests.json");
    let mut pairs: Vec<_> = golden.cases.into_iter().map(|c| (c.text, c.ids)).collect();
    pairs.extend(transformers.single);
    pairs
}

#[test]
fn raw_ids_equal_the_python_tokenizer_for_every_golden_text() {
    let pairs = golden_pairs();
    assert!(pairs.len() >= 35, "golden files look truncated");
    for (text, expected) in pairs {
        let ids = tokenizer().encode_raw(&text).expect("encode_raw");
        assert_eq!(ids, expected, "text {text:?}");
    }
}

#[test]
fn encode_equals_the_golden_ids_where_cleaning_and_truncation_change_nothing() {
    let mut checked = 0;
    for (text, expected) in golden_pairs() {
        if clean(&text) != text || expected.len() > CONTEXT_LENGTH {
            continue;
        }
        let ids = tokenizer().encode(&text).expect("encode");
        assert_eq!(ids.as_slice(), expected.as_slice(), "text {text:?}");
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} golden texts were comparable");
}

#[test]
fn cleaning_equals_open_clip_for_every_reference_case() {
    let reference = reference();
    assert_eq!(reference.context_length, CONTEXT_LENGTH);
    for case in reference
        .cases
        .iter()
        .filter(|c| c.known_difference.is_none())
    {
        assert_eq!(clean(&case.text), case.clean, "case {:?}", case.name);
    }
}

#[test]
fn ids_equal_open_clip_for_every_reference_case() {
    let tok = tokenizer();
    let reference = reference();
    assert_eq!(tok.pad_id(), reference.pad_id);
    for case in reference
        .cases
        .iter()
        .filter(|c| c.known_difference.is_none())
    {
        let ids = tok.encode(&case.text).expect("encode");
        assert_eq!(ids.as_slice(), case.ids.as_slice(), "case {:?}", case.name);
        let mut padded = ids.as_slice().to_vec();
        padded.resize(tok.context_length(), tok.pad_id());
        assert_eq!(padded, case.padded, "padded row of case {:?}", case.name);
    }
}

#[test]
fn known_differences_really_differ_and_only_as_documented() {
    let known: Vec<_> = reference()
        .cases
        .iter()
        .filter_map(|c| c.known_difference.as_ref().map(|k| (c, k)))
        .collect();
    assert!(!known.is_empty());
    for (case, why) in known {
        let ours = clean(&case.text);
        assert_ne!(
            ours, case.clean,
            "case {:?} no longer differs ({})",
            case.name, why.reason
        );
        match why.kind.as_str() {
            // Everything but ftfy's mojibake repair must still match.
            "fix_encoding" => {
                assert_eq!(
                    ours, case.clean_without_fix_encoding,
                    "case {:?}",
                    case.name
                )
            }
            "unicode_version" => {}
            other => panic!("case {:?}: unknown difference kind {other:?}", case.name),
        }
    }
}

#[test]
fn empty_and_blank_texts_encode_to_bos_eos() {
    let tok = tokenizer();
    for text in ["", " ", "\t\r\n\u{3000}\u{a0}", "&nbsp;", "\u{1c}\u{feff}"] {
        let ids = tok.encode(text).expect("blank text is not an error");
        assert_eq!(
            ids.as_slice(),
            [tok.bos_id(), tok.eos_id()],
            "text {text:?}"
        );
    }
}

#[test]
fn special_token_ids_come_from_the_file() {
    let tok = tokenizer();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (0, 2, 1));
    assert_eq!(tok.context_length(), CONTEXT_LENGTH);
}

#[test]
fn long_texts_truncate_to_the_context_length_with_eos_last() {
    let tok = tokenizer();
    let ids = tok
        .encode(&"a photo of a cat ".repeat(100))
        .expect("encode");
    assert_eq!(ids.len(), CONTEXT_LENGTH);
    assert_eq!(ids.as_slice()[0], tok.bos_id());
    assert_eq!(ids.as_slice()[CONTEXT_LENGTH - 1], tok.eos_id());
    let raw = tok
        .encode_raw(&"a photo of a cat ".repeat(100))
        .expect("raw");
    assert_eq!(
        ids.as_slice()[..CONTEXT_LENGTH - 1],
        raw[..CONTEXT_LENGTH - 1]
    );
}

#[test]
fn batch_encoding_equals_one_at_a_time() {
    let tok = tokenizer();
    let texts: Vec<&str> = reference().cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tok.encode_batch(&texts);
    assert_eq!(batch.len(), texts.len());
    for (text, result) in texts.iter().zip(batch) {
        assert_eq!(
            result.expect("batch encode"),
            tok.encode(text).expect("encode")
        );
    }
}

#[test]
fn a_missing_tokenizer_file_is_an_error_naming_the_file() {
    let err = TextTokenizer::from_file("/nonexistent/tokenizer.json", CONTEXT_LENGTH)
        .expect_err("must fail");
    assert!(matches!(err, TextError::Load { .. }));
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
}

#[test]
fn a_context_too_short_for_the_special_tokens_is_rejected() {
    let path = fixture("models/tiny/textual/tokenizer.json");
    let err = TextTokenizer::from_file(&path, 1).expect_err("must fail");
    assert!(matches!(err, TextError::ContextTooShort { .. }), "{err}");
}

/// Loads `json` from a temporary file whose name starts with `name`, and removes the file.
fn load_temp(name: &str, json: &str) -> Result<TextTokenizer, TextError> {
    let path = std::env::temp_dir().join(format!("{name}-{}.json", std::process::id()));
    std::fs::write(&path, json).expect("write temp tokenizer");
    let result = TextTokenizer::from_file(&path, CONTEXT_LENGTH);
    std::fs::remove_file(&path).ok();
    result
}

#[test]
fn a_tokenizer_without_pad_is_an_error_naming_the_token_and_file() {
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
        "decoder":null,"model":{"type":"Unigram","unk_id":2,
        "vocab":[["<s>",0.0],["</s>",0.0],["<unk>",0.0]]}}"#;
    let err = load_temp("clipserve-nopad", json).expect_err("must fail");
    match &err {
        TextError::MissingSpecialToken { token, .. } => assert_eq!(*token, "<pad>"),
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("clipserve-nopad"), "{err}");
}

#[test]
fn a_tokenizer_whose_model_is_not_unigram_is_refused_naming_the_file_and_type() {
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
        "decoder":null,"model":{"type":"WordLevel","vocab":{"<s>":0,"</s>":1,"<pad>":2},
        "unk_token":"<pad>"}}"#;
    let err = load_temp("clipserve-wordlevel", json).expect_err("must fail");
    assert!(matches!(err, TextError::Load { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("clipserve-wordlevel"), "{message}");
    assert!(
        message.contains("\"WordLevel\" is not supported"),
        "{message}"
    );
}

/// Timing only (run with `--ignored --nocapture`, ideally in release): tokenizing ~1 MB
/// must scale linearly, not quadratically. Prints ms per size; asserts nothing about time.
#[test]
#[ignore = "timing report, run by hand"]
fn megabyte_texts_tokenize_in_roughly_linear_time() {
    let tok = tokenizer();
    let shapes: [(&str, &str); 5] = [
        ("words", "a photo of a cat on the sofa "),
        ("no spaces", "abcdefghij"),
        ("cjk", "猫の写真を撮る"),
        ("entities", "&amp;amp; &eacute;&#x41; "),
        ("newlines", "line\r\n"),
    ];
    for (name, unit) in shapes {
        for mb in [0.25, 0.5, 1.0] {
            let text = unit.repeat((mb * 1_000_000.0) as usize / unit.len());
            let start = Instant::now();
            let cleaned = clean(&text);
            let clean_ms = start.elapsed().as_secs_f64() * 1e3;
            let start = Instant::now();
            let ids = tok.encode(&text).expect("encode");
            let encode_ms = start.elapsed().as_secs_f64() * 1e3;
            println!(
                "{name:>9} {:>7} bytes: clean {clean_ms:7.1} ms, encode (clean+tokenize) {encode_ms:7.1} ms, {} bytes cleaned, {} ids",
                text.len(),
                cleaned.len(),
                ids.len()
            );
        }
    }
}
