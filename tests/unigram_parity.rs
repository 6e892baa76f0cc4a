//! `TextTokenizer` (the `tokenizers` pipeline around `LeanUnigram`) against the stock
//! `tokenizers::Tokenizer` loaded from the same file, XLM-R's real 250,002-piece
//! tokenizer.json (the tiny fixture model carries it): the same ids for the golden texts, the
//! calibration texts, hand-picked hard cases of many scripts, thousands of seeded random
//! strings, and, at the model level, every piece of the vocabulary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clipserve::preprocess::clean::clean;
use clipserve::preprocess::text::TextTokenizer;
use clipserve::preprocess::unigram::LeanUnigram;
use serde::Deserialize;
use tokenizers::models::unigram::Unigram;
use tokenizers::utils::truncation::{truncate_encodings, TruncationParams};
use tokenizers::{Model, Tokenizer};

const CONTEXT_LENGTH: usize = 77;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn tokenizer_json() -> PathBuf {
    repo("tests/fixtures/models/tiny/textual/tokenizer.json")
}

fn lean() -> &'static TextTokenizer {
    static LEAN: OnceLock<TextTokenizer> = OnceLock::new();
    LEAN.get_or_init(|| TextTokenizer::from_file(tokenizer_json(), CONTEXT_LENGTH).expect("lean"))
}

fn stock() -> &'static Tokenizer {
    static STOCK: OnceLock<Tokenizer> = OnceLock::new();
    STOCK.get_or_init(|| Tokenizer::from_file(tokenizer_json()).expect("stock tokenizer"))
}

/// What `TextTokenizer::encode` did before `LeanUnigram`, with the stock tokenizer.
fn stock_encode(text: &str) -> Vec<u32> {
    let tok = stock();
    let content = tok
        .encode_fast(clean(text).as_str(), false)
        .expect("encode");
    let params = TruncationParams {
        max_length: CONTEXT_LENGTH - 2,
        ..TruncationParams::default()
    };
    let (content, _) = truncate_encodings(content, None, &params).expect("truncate");
    let framed = tok.post_process(content, None, true).expect("post_process");
    framed.get_ids().to_vec()
}

/// Asserts both entry points agree with the stock tokenizer on `text`.
fn assert_same_ids(text: &str) {
    let expected = stock()
        .encode_fast(text, true)
        .expect("stock")
        .get_ids()
        .to_vec();
    let ids = lean().encode_raw(text).expect("lean encode_raw");
    assert_eq!(ids, expected, "encode_raw of {text:?}");
    let ids = lean().encode(text).expect("lean encode");
    assert_eq!(ids.as_slice(), stock_encode(text), "encode of {text:?}");
}

fn golden_texts() -> Vec<String> {
    #[derive(Deserialize)]
    struct Golden {
        cases: Vec<Case>,
    }
    #[derive(Deserialize)]
    struct Case {
        text: String,
    }
    #[derive(Deserialize)]
    struct Transformers {
        single: Vec<(String, Vec<u32>)>,
    }
    let read = |rel: &str| std::fs::read_to_string(repo(rel)).expect(rel);
    let golden: Golden =
        serde_json::from_str(&read("tests/fixtures/text/golden_ids.json")).unwrap();
    let more: Transformers = serde_json::from_str(&read(
        "tests/fixtures/text/golden_ids_transformers_tests.json",
    ))
    .unwrap();
    let mut texts: Vec<String> = golden.cases.into_iter().map(|c| c.text).collect();
    texts.extend(more.single.into_iter().map(|(t, _)| t));
    texts.extend(
        read("src/engine/calibration/texts.txt")
            .lines()
            .map(str::to_owned),
    );
    texts
}

/// Inputs picked to reach each branch of the model: unknown characters alone and in runs
/// (fused into one `<unk>`), special tokens inside words, whitespace of every kind.
const HARD_CASES: &[&str] = &[
    "",
    " ",
    "   \t\n  ",
    "a",
    "Hello, world!",
    "a photo of a cat",
    "東京タワーの夜景と富士山",
    "北京是中华人民共和国的首都",
    "서울의 밤거리 풍경",
    "مرحبا بالعالم، صورة قطة",
    "नमस्ते दुनिया, बिल्ली की तस्वीर",
    "สวัสดีชาวโลก ภาพแมว",
    "Привет, мир! Фото кошки",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "🐱🐶🦊 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "e\u{301}te\u{301} n\u{303}o\u{308}",
    "a\u{200b}b\u{200c}c\u{200d}d\u{2060}e\u{feff}f",
    "𠀀",
    "𠀀𠀁𠀂",
    "x𠀀𠀁y 𠀂 z",
    "\u{e000}\u{e001}\u{f8ff}",
    "\u{f0000}\u{10fffd}",
    "a\u{e000}\u{e001}b\u{20000}c",
    "<mask>",
    "a <mask> on a sofa",
    "a<mask>b",
    "<s>hello</s>",
    "x<s>y</s>z<pad>w<unk>v",
    "<unk>𠀀<unk>",
    "▁",
    "▁▁▁",
    "ab▁cd",
    "\u{3000}全角　スペース",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "ﬁﬂ ㎏ ① ½ ™",
    "\u{1}\u{2}\u{7f}\u{80}\u{9f}",
    "tab\tseparated\tvalues\nnew line\r\ncrlf",
    "https://example.com/a?b=c&d=e#f",
    "user@example.com 127.0.0.1 $12.50 3.14159",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ababababababababababababababababab",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
];

#[test]
fn golden_and_calibration_texts_have_the_stock_ids() {
    let texts = golden_texts();
    assert!(texts.len() >= 60, "only {} texts", texts.len());
    for text in &texts {
        assert_same_ids(text);
    }
}

#[test]
fn hard_cases_of_many_scripts_have_the_stock_ids() {
    for text in HARD_CASES {
        assert_same_ids(text);
    }
    // Unknown characters really were reached, alone and fused.
    let unk = stock().token_to_id("<unk>").expect("<unk>");
    let ids = lean().encode_raw("x𠀀𠀁y 𠀂 z").expect("encode");
    assert!(ids.contains(&unk), "{ids:?}");
}

#[test]
fn long_texts_have_the_stock_ids_and_truncate_alike() {
    let texts = golden_texts();
    let long = texts.join(" ");
    assert!(stock().encode_fast(long.as_str(), true).unwrap().len() > 300);
    assert_same_ids(&long);
    assert_same_ids(&HARD_CASES.join(" "));
    assert_same_ids(&"猫".repeat(500));
    assert_same_ids(&"𠀀".repeat(300));
    assert_same_ids(&"a photo of a cat ".repeat(60));
}

/// xorshift64*: a fixed sequence, so a failure names a reproducible input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Code point ranges to draw characters from: scripts the vocabulary knows well, marks and
/// invisible characters, and ranges it mostly does not know (CJK extension B, private use).
const RANGES: &[(u32, u32)] = &[
    (0x20, 0x7e),
    (0x20, 0x7e),
    (0x61, 0x7a),
    (0x61, 0x7a),
    (0xa0, 0x24f),
    (0x300, 0x36f),
    (0x370, 0x3ff),
    (0x400, 0x4ff),
    (0x590, 0x5ff),
    (0x600, 0x6ff),
    (0x900, 0x97f),
    (0x980, 0x9ff),
    (0xe00, 0xe7f),
    (0x10a0, 0x10ff),
    (0x1100, 0x11ff),
    (0x2000, 0x206f),
    (0x2100, 0x24ff),
    (0x3000, 0x30ff),
    (0x4e00, 0x9fff),
    (0x4e00, 0x9fff),
    (0xac00, 0xd7a3),
    (0xe000, 0xf8ff),
    (0xf900, 0xfaff),
    (0xfe00, 0xfe0f),
    (0xff00, 0xffef),
    (0x1f300, 0x1faff),
    (0x20000, 0x2a6df),
    (0xf0000, 0xf00ff),
];

const WORDS: &[&str] = &[
    " ",
    " ",
    "  ",
    "\t",
    "\n",
    "a ",
    "the ",
    "photo ",
    "cat",
    "chien ",
    "猫",
    "写真",
    "кошка ",
    "قطة",
    "बिल्ली",
    "แมว",
    "<mask>",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "▁",
    "\u{200d}",
    "\u{fe0f}",
    "&amp;",
    "'s ",
    "n't",
    "...",
    "1990",
    "ing ",
];

fn random_text(rng: &mut Rng) -> String {
    let parts = rng.below(40);
    let mut text = String::new();
    for _ in 0..parts {
        if rng.below(3) == 0 {
            text.push_str(WORDS[rng.below(WORDS.len())]);
        } else {
            let (lo, hi) = RANGES[rng.below(RANGES.len())];
            let runs = 1 + rng.below(4);
            for _ in 0..runs {
                let code = lo + rng.below((hi - lo + 1) as usize) as u32;
                if let Some(c) = char::from_u32(code) {
                    text.push(c);
                }
            }
        }
    }
    text
}

#[test]
fn seeded_random_texts_of_mixed_scripts_have_the_stock_ids() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let unk = stock().token_to_id("<unk>").expect("<unk>");
    let mut with_unk = 0;
    for _ in 0..4000 {
        let text = random_text(&mut rng);
        assert_same_ids(&text);
        with_unk += usize::from(lean().encode_raw(&text).unwrap().contains(&unk));
    }
    assert!(with_unk > 100, "only {with_unk} texts reached <unk>");
}

/// The models alone, on text the pipeline never hands them as is: every piece of the
/// vocabulary, pieces glued in pairs (where ties and longer matches compete), and the ids,
/// texts and offsets of every token.
#[test]
fn every_vocabulary_piece_tokenizes_as_the_stock_unigram_does() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer_json()).unwrap()).unwrap();
    let section = &json["model"];
    let ours: LeanUnigram = serde_json::from_value(section.clone()).expect("lean model");
    let theirs: Unigram = serde_json::from_value(section.clone()).expect("stock model");
    assert_eq!(ours.get_vocab_size(), theirs.get_vocab_size());
    let pieces: Vec<String> = (0..theirs.get_vocab_size() as u32)
        .map(|id| theirs.id_to_token(id).unwrap())
        .collect();
    let mut rng = Rng(42);
    for (id, piece) in pieces.iter().enumerate() {
        assert_eq!(ours.id_to_token(id as u32).as_ref(), Some(piece));
        assert_eq!(
            ours.token_to_id(piece),
            theirs.token_to_id(piece),
            "{piece:?}"
        );
        assert_eq!(
            ours.tokenize(piece).unwrap(),
            theirs.tokenize(piece).unwrap(),
            "piece {id} {piece:?}"
        );
        let glued = format!("{piece}{}", pieces[rng.below(pieces.len())]);
        assert_eq!(
            ours.tokenize(&glued).unwrap(),
            theirs.tokenize(&glued).unwrap(),
            "{glued:?}"
        );
    }
    assert_eq!(ours.token_to_id("not a piece at all"), None);
    assert_eq!(ours.id_to_token(pieces.len() as u32), None);
}
