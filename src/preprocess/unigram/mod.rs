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

mod serialization;
#[cfg(test)]
mod tests;
mod trie;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tokenizers::models::unigram::UnigramTrainer;
use tokenizers::{Model, Result, Token};

use trie::Trie;

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
            .field("trie_nodes", &self.trie.len())
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
