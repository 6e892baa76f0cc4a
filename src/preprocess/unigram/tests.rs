//! [`LeanUnigram`] against the crate's `Unigram` on small vocabularies made to hit ties,
//! duplicates, unknown runs and byte fallback.

use super::*;
use tokenizers::models::unigram::Unigram;

/// xorshift64: small random vocabularies and texts, the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Letters the vocabularies are made of, and `z`, `é`, `𠀀` that most of them lack.
const ALPHABET: &[char] = &['a', 'b', 'c', 'é', '▁', 'z', '𠀀'];

fn random_string(rng: &mut Rng, max_len: usize) -> String {
    (0..1 + rng.below(max_len))
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

/// Pieces over `a b c é ▁` with scores from a handful of values, so that ties are common,
/// some duplicates, and sometimes byte pieces for `z` and `é` (or only its first byte).
fn random_vocab(rng: &mut Rng) -> Vec<(String, f64)> {
    let mut vocab = vec![("<unk>".to_owned(), 0.0)];
    for _ in 0..rng.below(40) {
        let piece: String = (0..1 + rng.below(4))
            .map(|_| ALPHABET[rng.below(5)])
            .collect();
        vocab.push((piece, -((1 + rng.below(4)) as f64) * 0.5));
    }
    if rng.below(2) == 0 {
        vocab.push(("<0x7A>".to_owned(), -3.0));
        vocab.push(("<0xC3>".to_owned(), -3.0));
        if rng.below(2) == 0 {
            // `é` is C3 A9: its bytes' order shows in the tokens.
            vocab.push(("<0xA9>".to_owned(), -3.0));
        }
    }
    vocab
}

fn ours_and_theirs(
    vocab: &[(String, f64)],
    unk: Option<usize>,
    fallback: bool,
) -> (LeanUnigram, Unigram) {
    let ours = LeanUnigram::from_pieces(vocab, unk, fallback).expect("lean");
    let theirs = Unigram::from(vocab.to_vec(), unk, fallback).expect("stock");
    (ours, theirs)
}

#[test]
fn random_vocabularies_tokenize_as_the_stock_unigram() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..2000 {
        let vocab = random_vocab(&mut rng);
        let unk = (round % 7 != 0).then_some(0);
        let fallback = round % 3 == 0;
        let (ours, theirs) = ours_and_theirs(&vocab, unk, fallback);
        for _ in 0..20 {
            let text = random_string(&mut rng, 12);
            match (ours.tokenize(&text), theirs.tokenize(&text)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{text:?} with {vocab:?}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{text:?} with {vocab:?}: {a:?} vs {b:?}"),
            }
        }
        for (piece, _) in &vocab {
            assert_eq!(ours.token_to_id(piece), theirs.token_to_id(piece));
        }
    }
}

#[test]
fn the_last_of_duplicate_pieces_wins_as_in_the_stock_unigram() {
    let vocab = [
        ("<unk>", 0.0),
        ("ab", -1.0),
        ("a", -1.0),
        ("ab", -5.0),
        ("b", -1.0),
    ];
    let ours = LeanUnigram::from_pieces(&vocab, Some(0), false).unwrap();
    assert_eq!(ours.token_to_id("ab"), Some(3));
    let theirs = Unigram::from(
        vocab.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
        Some(0),
        false,
    )
    .unwrap();
    assert_eq!(ours.tokenize("ab").unwrap(), theirs.tokenize("ab").unwrap());
}

#[test]
fn runs_of_unknown_characters_fuse_into_one_unk() {
    let vocab = [("<unk>", 0.0), ("a", -1.0)];
    let ours = LeanUnigram::from_pieces(&vocab, Some(0), false).unwrap();
    let tokens = ours.tokenize("a𠀀zéa").unwrap();
    let ids: Vec<_> = tokens
        .iter()
        .map(|t| (t.id, t.value.as_str(), t.offsets))
        .collect();
    assert_eq!(
        ids,
        [(1, "a", (0, 1)), (0, "𠀀zé", (1, 8)), (1, "a", (8, 9))]
    );
}

#[test]
fn a_bad_unk_id_is_refused() {
    let vocab = [("<unk>", 0.0)];
    assert!(matches!(
        LeanUnigram::from_pieces(&vocab, Some(1), false),
        Err(UnigramError::UnkIdNotInVocabulary { unk_id: 1, size: 1 })
    ));
    let empty: [(&str, f64); 0] = [];
    assert!(matches!(
        LeanUnigram::from_pieces(&empty, Some(0), false),
        Err(UnigramError::EmptyVocabulary)
    ));
}

#[test]
fn other_model_types_are_refused_by_name() {
    let json = r#"{"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}"#;
    let err = serde_json::from_str::<LeanUnigram>(json).expect_err("must fail");
    assert!(
        err.to_string().contains("\"WordLevel\" is not supported"),
        "{err}"
    );
}

#[test]
fn a_saved_model_loads_back_as_the_stock_unigram() {
    let vocab = [("<unk>", 0.0), ("a\"b", -1.5), ("é", -2.25)];
    let ours = LeanUnigram::from_pieces(&vocab, Some(0), true).unwrap();
    let json = serde_json::to_string(&ours).unwrap();
    let theirs: Unigram = serde_json::from_str(&json).unwrap();
    assert_eq!(theirs.get_vocab_size(), 3);
    assert_eq!(theirs.token_to_id("a\"b"), Some(1));
    assert!(theirs.byte_fallback());
    let again: LeanUnigram = serde_json::from_str(&json).unwrap();
    assert_eq!(
        again.tokenize("a\"bé").unwrap(),
        ours.tokenize("a\"bé").unwrap()
    );
}
