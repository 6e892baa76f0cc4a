//! A SentencePiece Unigram model that gives exactly the ids of the `tokenizers` crate's
//! `Unigram`, held in a few flat arrays instead of its per-node hash maps.
//!
//! The crate's model keeps a byte trie with a `HashMap` per node, a `HashMap<String, u32>` and a
//! `Vec<(String, f64)>` of the vocabulary, and a cache. Here the pieces are one byte buffer with
//! offsets, the scores one `Vec<f64>`, and the trie three arrays in breadth-first order, where a
//! node's children are a contiguous, sorted range (a child is a binary search over its
//! siblings' labels; the root's, where every Viterbi step starts, a table). For XLM-R's
//! 250,002 pieces (2.6 MB of text, 782,761 trie nodes) loading the whole tokenizer costs
//! 14.5 MB resident instead of 288.6 MB, peaks at 28.8 MB instead of 297 MB, and takes about
//! 150 ms instead of 700 (`examples/tokenizer_memory.rs`); encoding is as fast as the crate's
//! with its word cache warm, and faster on words it has not seen.
//!
//! Encoding repeats the crate's `Unigram::encode_optimized` step by step, so that ties and
//! rounding go the same way: Viterbi over the byte positions with `f64` sums in the same order,
//! candidates visited shortest first and an earlier one kept on equal scores, an unknown
//! character scored `min score - 10` only where no piece covers exactly that character, runs of
//! unknowns fused into one `<unk>`, and each output piece's id looked up by its text (so the last
//! of duplicate pieces wins, and `byte_fallback` maps an unknown run to `<0xNN>` pieces).
//! `tokenizers` still does everything around the model (normalizer, pre-tokenizer, added
//! tokens, post-processor): see `text.rs`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use tokenizers::models::unigram::UnigramTrainer;
use tokenizers::{Model, Result, Token};

/// What an unknown character scores below the lowest piece (the crate's `K_UNK_PENALTY`).
const UNK_PENALTY: f64 = 10.0;

/// Marks a trie node that ends no piece, and a Viterbi position not reached yet.
const NONE: u32 = u32::MAX;

/// The Unigram model of a `tokenizer.json`, deserialized from its `"model"` section.
#[derive(Clone)]
pub struct LeanUnigram {
    /// Every piece's UTF-8 bytes, one after another, in id order.
    bytes: Box<[u8]>,
    /// Piece `id` is `bytes[starts[id]..starts[id + 1]]` (one entry more than pieces).
    starts: Box<[u32]>,
    /// Piece `id`'s log-probability, as the file gives it.
    scores: Box<[f64]>,
    trie: Trie,
    unk_id: Option<u32>,
    /// The lowest score minus [`UNK_PENALTY`], what one unknown character costs.
    unk_score: f64,
    byte_fallback: bool,
}

/// Why a model section cannot be used (the crate's `UnigramError`, plus size limits).
#[derive(Debug, thiserror::Error)]
pub enum UnigramError {
    /// `unk_id` is set but there is no piece at all.
    #[error("the vocabulary is empty but at least <unk> is needed")]
    EmptyVocabulary,
    /// `unk_id` points past the last piece.
    #[error("unk_id {unk_id} is not below the vocabulary size {size}")]
    UnkIdNotInVocabulary {
        /// The file's `unk_id`.
        unk_id: usize,
        /// How many pieces the file has.
        size: usize,
    },
    /// A text has a character no piece covers and the model has no `unk_id` to give it.
    #[error("encountered an unknown token but unk_id is missing")]
    MissingUnkId,
    /// The pieces do not fit the 32-bit offsets and ids this model stores.
    #[error("the vocabulary is too large ({pieces} pieces, {bytes} bytes)")]
    TooLarge {
        /// How many pieces the file has.
        pieces: usize,
        /// Their total length in bytes.
        bytes: usize,
    },
}

impl LeanUnigram {
    /// Builds the model from `(piece, score)` pairs, as the crate's `Unigram::from` does
    /// (its checks, its errors); used by the deserializer and by tests.
    pub fn from_pieces<S: AsRef<str>>(
        pieces: &[(S, f64)],
        unk_id: Option<usize>,
        byte_fallback: bool,
    ) -> std::result::Result<Self, UnigramError> {
        let mut builder = Builder::default();
        for (piece, score) in pieces {
            builder.push(piece.as_ref(), *score);
        }
        builder.build(unk_id, byte_fallback)
    }

    fn piece(&self, id: u32) -> &[u8] {
        let id = id as usize;
        &self.bytes[self.starts[id] as usize..self.starts[id + 1] as usize]
    }

    fn len(&self) -> usize {
        self.scores.len()
    }

    /// The best path's last piece ending at each byte position of `sentence` (where a
    /// character ends): `Unigram::encode_optimized`'s forward pass.
    fn best_path(&self, sentence: &str) -> Result<Vec<Best>> {
        let bytes = sentence.as_bytes();
        let size = bytes.len();
        if size >= NONE as usize {
            // Positions are stored as u32; no request comes near 4 GB in one word.
            return Err(format!("a word of {size} bytes is too long to tokenize").into());
        }
        let unreached = Best {
            score: 0.0,
            start: NONE,
            id: 0,
        };
        let mut best = vec![unreached; size + 1];
        let mut start = 0;
        while start < size {
            let here = best[start].score;
            let char_len = sentence[start..].chars().next().map_or(1, char::len_utf8);
            let mut covers_char = false;
            self.trie.prefixes(&bytes[start..], |len, id| {
                let candidate = self.scores[id as usize] + here;
                let target = &mut best[start + len];
                if target.start == NONE || candidate > target.score {
                    *target = Best {
                        score: candidate,
                        start: start as u32,
                        id,
                    };
                }
                covers_char |= len == char_len;
            });
            if !covers_char {
                let candidate = self.unk_score + here;
                let target = &mut best[start + char_len];
                if target.start == NONE || candidate > target.score {
                    *target = Best {
                        score: candidate,
                        start: start as u32,
                        id: self.unk_id.ok_or(UnigramError::MissingUnkId)?,
                    };
                }
            }
            start += char_len;
        }
        Ok(best)
    }

    /// Pushes the tokens of one unknown run (fused `<unk>` pieces) in reverse order: the
    /// piece of that text if there is one, else its bytes as `<0xNN>` pieces if the model has
    /// them all, else `<unk>`.
    fn unknown_run(
        &self,
        sentence: &str,
        (start, end): (usize, usize),
        tokens: &mut Vec<Token>,
    ) -> Result<()> {
        let run = &sentence[start..end];
        let offsets = (start, end);
        if let Some(id) = self.trie.get(run.as_bytes()) {
            tokens.push(Token::new(id, run.to_owned(), offsets));
            return Ok(());
        }
        if self.byte_fallback {
            let bytes: Option<Vec<Token>> = run
                .bytes()
                .map(|byte| {
                    let piece = format!("<0x{byte:02X}>");
                    let id = self.trie.get(piece.as_bytes())?;
                    Some(Token::new(id, piece, offsets))
                })
                .collect();
            if let Some(bytes) = bytes {
                tokens.extend(bytes.into_iter().rev());
                return Ok(());
            }
        }
        let unk = self.unk_id.ok_or(UnigramError::MissingUnkId)?;
        tokens.push(Token::new(unk, run.to_owned(), offsets));
        Ok(())
    }
}

impl fmt::Debug for LeanUnigram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanUnigram")
            .field("vocab", &self.len())
            .field("trie_nodes", &self.trie.labels.len())
            .field("unk_id", &self.unk_id)
            .field("byte_fallback", &self.byte_fallback)
            .finish()
    }
}

impl Model for LeanUnigram {
    type Trainer = UnigramTrainer;

    fn tokenize(&self, sentence: &str) -> Result<Vec<Token>> {
        let best = self.best_path(sentence)?;
        let mut tokens = Vec::new();
        // Backtracks from the end, as the crate does, fusing consecutive unknowns.
        let mut unknown_end = None;
        let mut end = sentence.len();
        while end > 0 {
            // Every character boundary is reached: by a piece or by the unknown node.
            let Best { start, id, .. } = best[end];
            let start = start as usize;
            if Some(id) == self.unk_id {
                unknown_end.get_or_insert(end);
            } else {
                if let Some(run_end) = unknown_end.take() {
                    self.unknown_run(sentence, (end, run_end), &mut tokens)?;
                }
                let value = sentence[start..end].to_owned();
                tokens.push(Token::new(id, value, (start, end)));
            }
            end = start;
        }
        if let Some(run_end) = unknown_end {
            self.unknown_run(sentence, (0, run_end), &mut tokens)?;
        }
        tokens.reverse();
        Ok(tokens)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.trie.get(token.as_bytes())
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        ((id as usize) < self.len()).then(|| String::from_utf8_lossy(self.piece(id)).into_owned())
    }

    /// Builds the map on demand (tens of MB for XLM-R): only for callers that ask for it,
    /// never on the encoding path.
    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.len() as u32)
            .map(|id| (String::from_utf8_lossy(self.piece(id)).into_owned(), id))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.len()
    }

    fn save(&self, folder: &Path, prefix: Option<&str>) -> Result<Vec<PathBuf>> {
        let name = match prefix {
            Some(prefix) => format!("{prefix}-unigram.json"),
            None => "unigram.json".to_owned(),
        };
        let path = folder.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        Ok(vec![path])
    }

    fn get_trainer(&self) -> UnigramTrainer {
        UnigramTrainer::default()
    }
}

/// The best path to one byte position: its score, and its last piece (start and id).
#[derive(Clone, Copy)]
struct Best {
    score: f64,
    start: u32,
    id: u32,
}

/// A byte trie in breadth-first order: node 0 is the root, node `n`'s children are nodes
/// `nodes[n].first_child..nodes[n + 1].first_child`, sorted by their `labels` (a last,
/// childless node closes the list).
#[derive(Clone)]
struct Trie {
    /// The root's child for each byte, or [`NONE`]: every start position of the Viterbi pass
    /// begins there, and the root has the most children (141 in XLM-R).
    root: Box<[u32; 256]>,
    nodes: Box<[Node]>,
    /// The byte leading to each node from its parent.
    labels: Box<[u8]>,
}

/// One trie node; its children's range and its piece sit in one cache line, read together
/// at every step of a walk.
#[derive(Clone, Copy)]
struct Node {
    first_child: u32,
    /// The id of the piece that ends here, or [`NONE`].
    id: u32,
}

impl Trie {
    /// Builds the trie of the pieces `key(0..count)`; of equal pieces the highest id wins,
    /// as the crate's `HashMap` insertions in id order leave it.
    fn build<'a>(count: usize, key: impl Fn(u32) -> &'a [u8]) -> Self {
        let mut order: Vec<u32> = (0..count as u32).collect();
        order.sort_unstable_by(|&a, &b| key(a).cmp(key(b)).then(a.cmp(&b)));
        let unset = Node {
            first_child: 0,
            id: NONE,
        };
        let mut nodes = vec![unset];
        let mut labels = vec![0u8];
        // The key ranges of the nodes not expanded yet, in node order (breadth first).
        let mut pending = std::collections::VecDeque::from([(0usize, count, 0usize)]);
        let mut node = 0;
        while let Some((mut lo, hi, depth)) = pending.pop_front() {
            // Sorted, so the pieces ending at this node come first; the last has the top id.
            while lo < hi && key(order[lo]).len() == depth {
                nodes[node].id = order[lo];
                lo += 1;
            }
            nodes[node].first_child = labels.len() as u32;
            while lo < hi {
                let label = key(order[lo])[depth];
                let mut end = lo + 1;
                while end < hi && key(order[end])[depth] == label {
                    end += 1;
                }
                labels.push(label);
                nodes.push(unset);
                pending.push_back((lo, end, depth + 1));
                lo = end;
            }
            node += 1;
        }
        nodes.push(Node {
            first_child: labels.len() as u32,
            id: NONE,
        });
        let mut root = Box::new([NONE; 256]);
        for child in nodes[0].first_child..nodes[1].first_child {
            root[labels[child as usize] as usize] = child;
        }
        Self {
            root,
            nodes: nodes.into(),
            labels: labels.into(),
        }
    }

    fn child(&self, node: usize, label: u8) -> Option<usize> {
        let first = self.nodes[node].first_child as usize;
        let end = self.nodes[node + 1].first_child as usize;
        let siblings = &self.labels[first..end];
        // Most nodes have a few children, where a scan beats a binary search.
        let i = if siblings.len() <= 16 {
            siblings.iter().position(|&l| l == label)?
        } else {
            siblings.binary_search(&label).ok()?
        };
        Some(first + i)
    }

    /// Calls `found(len, id)` for every piece that is a prefix of `text`, shortest first.
    fn prefixes(&self, text: &[u8], mut found: impl FnMut(usize, u32)) {
        let Some((&first, rest)) = text.split_first() else {
            return;
        };
        let node = self.root[first as usize];
        if node == NONE {
            return;
        }
        let mut node = node as usize;
        if self.nodes[node].id != NONE {
            found(1, self.nodes[node].id);
        }
        for (i, &byte) in rest.iter().enumerate() {
            match self.child(node, byte) {
                Some(next) => node = next,
                None => return,
            }
            if self.nodes[node].id != NONE {
                found(i + 2, self.nodes[node].id);
            }
        }
    }

    /// The id of the piece `text`, if it is one.
    fn get(&self, text: &[u8]) -> Option<u32> {
        let mut node = 0;
        for &byte in text {
            node = self.child(node, byte)?;
        }
        let id = self.nodes[node].id;
        (id != NONE).then_some(id)
    }
}

/// Collects pieces as they are parsed, so the vocabulary never exists as 250k `String`s.
#[derive(Default)]
struct Builder {
    bytes: Vec<u8>,
    starts: Vec<usize>,
    scores: Vec<f64>,
}

impl Builder {
    fn push(&mut self, piece: &str, score: f64) {
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(piece.as_bytes());
        self.scores.push(score);
    }

    fn build(
        mut self,
        unk_id: Option<usize>,
        byte_fallback: bool,
    ) -> std::result::Result<LeanUnigram, UnigramError> {
        let size = self.scores.len();
        if let Some(unk_id) = unk_id {
            if size == 0 {
                return Err(UnigramError::EmptyVocabulary);
            }
            if unk_id >= size {
                return Err(UnigramError::UnkIdNotInVocabulary { unk_id, size });
            }
        }
        let too_large = UnigramError::TooLarge {
            pieces: size,
            bytes: self.bytes.len(),
        };
        if size >= NONE as usize || self.bytes.len() > u32::MAX as usize {
            return Err(too_large);
        }
        self.starts.push(self.bytes.len());
        // In bounds: checked against u32::MAX just above.
        let starts: Box<[u32]> = self.starts.iter().map(|&s| s as u32).collect();
        let bytes = self.bytes.into_boxed_slice();
        let trie = Trie::build(size, |id| {
            &bytes[starts[id as usize] as usize..starts[id as usize + 1] as usize]
        });
        let mut min_score = f64::INFINITY;
        for &score in &self.scores {
            if score < min_score {
                min_score = score;
            }
        }
        Ok(LeanUnigram {
            bytes,
            starts,
            scores: self.scores.into_boxed_slice(),
            trie,
            unk_id: unk_id.map(|id| id as u32),
            unk_score: min_score - UNK_PENALTY,
            byte_fallback,
        })
    }
}

impl Serialize for LeanUnigram {
    /// The crate's `Unigram` layout, so a saved tokenizer loads in either.
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        struct Vocab<'a>(&'a LeanUnigram);
        impl Serialize for Vocab<'_> {
            fn serialize<S: Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for id in 0..self.0.len() as u32 {
                    let piece = String::from_utf8_lossy(self.0.piece(id));
                    seq.serialize_element(&(piece, self.0.scores[id as usize]))?;
                }
                seq.end()
            }
        }
        let mut model = serializer.serialize_struct("Unigram", 4)?;
        model.serialize_field("type", "Unigram")?;
        model.serialize_field("unk_id", &self.unk_id)?;
        model.serialize_field("vocab", &Vocab(self))?;
        model.serialize_field("byte_fallback", &self.byte_fallback)?;
        model.end()
    }
}

impl<'de> Deserialize<'de> for LeanUnigram {
    /// Reads a `"model"` section: `type` (absent or `"Unigram"`; anything else is refused by
    /// name), `vocab` as `[piece, score]` pairs, `unk_id`, `byte_fallback`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(ModelVisitor)
    }
}

struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = LeanUnigram;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Unigram model: {\"type\": \"Unigram\", \"unk_id\": .., \"vocab\": [[piece, score], ..]}")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<LeanUnigram, A::Error> {
        let mut vocab = None;
        let mut unk_id = None;
        let mut byte_fallback = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    let kind: String = map.next_value()?;
                    if kind != "Unigram" {
                        return Err(de::Error::custom(format!(
                            "model type {kind:?} is not supported: clipserve reads Unigram \
                             (SentencePiece) tokenizers only"
                        )));
                    }
                }
                "vocab" => {
                    let mut builder = Builder::default();
                    map.next_value_seed(VocabSeed(&mut builder))?;
                    vocab = Some(builder);
                }
                "unk_id" => unk_id = map.next_value()?,
                "byte_fallback" => byte_fallback = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let vocab = vocab.ok_or_else(|| de::Error::missing_field("vocab"))?;
        vocab
            .build(unk_id, byte_fallback)
            .map_err(|e| de::Error::custom(format!("Unable to load vocab: {e}")))
    }
}

/// Appends the `[[piece, score], ..]` list to a [`Builder`] as it is parsed.
struct VocabSeed<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for VocabSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for VocabSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of [piece, score] pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(PieceSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One `[piece, score]` pair, pushed to the [`Builder`] without an owned `String` where the
/// JSON text has no escapes.
struct PieceSeed<'a>(&'a mut Builder);

impl<'de> DeserializeSeed<'de> for PieceSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_tuple(2, self)
    }
}

impl<'de> Visitor<'de> for PieceSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [piece, score] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let piece: std::borrow::Cow<'de, str> = seq
            .next_element::<BorrowedOrOwned<'de>>()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?
            .0;
        let score: f64 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        self.0.push(&piece, score);
        Ok(())
    }
}

/// A string that borrows from the JSON text when it can.
struct BorrowedOrOwned<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for BorrowedOrOwned<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = BorrowedOrOwned<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a piece string")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedOrOwned(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedOrOwned(v.to_owned().into()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(BorrowedOrOwned(v.into()))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

#[cfg(test)]
mod tests {
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
}
