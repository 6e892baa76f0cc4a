//! Text -> token ids for the text tower, as OpenCLIP's `HFTokenizer` produces them for
//! `xlm-roberta-base-ViT-B-32`: [`clean`], then the Hugging Face tokenizer from
//! `tokenizer.json` with special tokens (`<s> ... </s>`), truncated to the context length
//! with `</s>` kept last. Padding is left to the caller ([`TextTokenizer::pad_id`]).
//!
//! The `tokenizers` crate runs every step but the model: its normalizer, pre-tokenizer, added
//! tokens and post-processor, read from the file as usual. The Unigram model is
//! [`LeanUnigram`], which gives the crate's ids from flat arrays: the loaded tokenizer holds
//! 14.5 MB resident where it held 288.6 MB with the crate's `Unigram` (see `unigram/mod.rs`); the
//! server on the tiny fixture model went from 324 to 60 MB once ready.

use std::path::{Path, PathBuf};

use tokenizers::utils::truncation::{truncate_encodings, TruncationParams};
use tokenizers::{
    DecoderWrapper, Encoding, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    TokenizerImpl,
};

use super::clean::clean;
use super::unigram::LeanUnigram;

/// The crate's tokenizer with [`LeanUnigram`] in place of its model: the other parts are the
/// same wrappers a `tokenizers::Tokenizer` holds, deserialized from the same file.
type Tokenizer = TokenizerImpl<
    LeanUnigram,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Why a tokenizer could not be loaded or a text could not be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The tokenizer file is missing, is not a tokenizer.json the crate understands, or its
    /// model is not a Unigram (SentencePiece) model, the only kind [`LeanUnigram`] reads.
    #[error("cannot load tokenizer {}: {source}", path.display())]
    Load {
        /// The file we tried to load.
        path: PathBuf,
        /// What the tokenizers crate reported.
        #[source]
        source: tokenizers::Error,
    },
    /// The vocabulary lacks one of the special tokens the model was trained with.
    #[error("tokenizer {} has no {token} token", path.display())]
    MissingSpecialToken {
        /// The file we loaded.
        path: PathBuf,
        /// The token we looked for, e.g. `<pad>`.
        token: &'static str,
    },
    /// The tokenizer does not wrap a text in exactly `<s> ... </s>`.
    #[error("tokenizer {} turns an empty text into {ids:?}, expected [bos, eos]", path.display())]
    UnexpectedTemplate {
        /// The file we loaded.
        path: PathBuf,
        /// The ids it produced for "".
        ids: Vec<u32>,
    },
    /// The context length cannot even hold the special tokens.
    #[error("context length {context_length} is shorter than the {special} special tokens")]
    ContextTooShort {
        /// The requested context length.
        context_length: usize,
        /// How many special tokens every sequence carries.
        special: usize,
    },
    /// The tokenizers crate failed on this text.
    #[error("tokenization failed: {source}")]
    Tokenize {
        /// What the tokenizers crate reported.
        #[source]
        source: tokenizers::Error,
    },
    /// The ids broke the `<s> ... </s>`, length <= context invariant (a tokenizer bug).
    #[error("tokenizer produced {len} ids not framed by bos/eos within the context length")]
    Malformed {
        /// How many ids it produced.
        len: usize,
    },
}

/// Token ids ready for the text tower: starts with `<s>`, ends with `</s>`, at most the
/// context length long. Only [`TextTokenizer::encode`] makes them, so holders need not
/// re-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds(Vec<u32>);

impl TokenIds {
    /// The ids, unpadded, for building the model's input tensor.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// How many ids there are (at least 2: `<s>` and `</s>`); the rest of the row is padding.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false (there are always `<s>` and `</s>`); present for `len`'s sake.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The XLM-R tokenizer plus OpenCLIP's cleaning and truncation rule, shared by all
/// requests (it is `Send + Sync`; encoding takes `&self`).
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    context_length: usize,
    truncation: TruncationParams,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

impl std::fmt::Debug for TextTokenizer {
    /// Summarises instead of dumping the 250k-entry vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            // Without added tokens: with them the crate builds the whole vocabulary as a map.
            .field("vocab_size", &self.tokenizer.get_vocab_size(false))
            .field("context_length", &self.context_length)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, looks up `<s>`, `</s>` and `<pad>` in it, and checks that
    /// it frames texts as `<s> ... </s>` and that `context_length` can hold that frame.
    pub fn from_file(path: impl AsRef<Path>, context_length: usize) -> Result<Self, TextError> {
        let path = path.as_ref();
        let load_error = |source: tokenizers::Error| TextError::Load {
            path: path.to_owned(),
            source,
        };
        let json = std::fs::read_to_string(path).map_err(|e| load_error(e.into()))?;
        let mut tokenizer: Tokenizer =
            serde_json::from_str(&json).map_err(|e| load_error(e.into()))?;
        drop(json);
        // OpenCLIP sets its own truncation and padding on every call; ignore the file's.
        tokenizer.with_truncation(None).map_err(load_error)?;
        tokenizer.with_padding(None);
        let id = |token: &'static str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| TextError::MissingSpecialToken {
                    path: path.to_owned(),
                    token,
                })
        };
        let (bos_id, eos_id, pad_id) = (id("<s>")?, id("</s>")?, id("<pad>")?);
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        if context_length < special {
            return Err(TextError::ContextTooShort {
                context_length,
                special,
            });
        }
        let empty = tokenizer.encode_fast("", true).map_err(load_error)?;
        if empty.get_ids() != [bos_id, eos_id] {
            return Err(TextError::UnexpectedTemplate {
                path: path.to_owned(),
                ids: empty.get_ids().to_vec(),
            });
        }
        let truncation = TruncationParams {
            max_length: context_length - special,
            ..TruncationParams::default()
        };
        Ok(Self {
            tokenizer,
            context_length,
            truncation,
            bos_id,
            eos_id,
            pad_id,
        })
    }

    /// Cleans and tokenizes one text exactly as OpenCLIP does before padding. An empty or
    /// blank text is valid and yields `[<s>, </s>]`, as in the reference.
    pub fn encode(&self, text: &str) -> Result<TokenIds, TextError> {
        let cleaned = clean(text);
        let content = self.run(|t| t.encode_fast(cleaned.as_str(), false))?;
        // What `post_process` does with truncation set: cut the content to leave room
        // for the special tokens, then add them.
        let (content, _) = truncate_encodings(content, None, &self.truncation)
            .map_err(|source| TextError::Tokenize { source })?;
        let framed = self.run(|t| t.post_process(content, None, true))?;
        self.validate(framed.get_ids().to_vec())
    }

    /// [`Self::encode`] for each text, in order, one result per text so one bad text does
    /// not sink the batch. Sequential on purpose: a short text takes ~10-20 µs, and the
    /// tokenizers crate's rayon-parallel batch was no faster here (measured on 8-256
    /// texts), while it would compete with the model's threads.
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Result<TokenIds, TextError>> {
        texts.iter().map(|text| self.encode(text)).collect()
    }

    /// Tokenizes `text` as given: no cleaning, no truncation, special tokens added. For
    /// comparing against reference ids of the bare Hugging Face tokenizer.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let encoding = self.run(|t| t.encode_fast(text, true))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id that fills a row after `</s>` (`<pad>`).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id every [`TokenIds`] starts with (`<s>`), e.g. for building warm-up inputs.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The id every [`TokenIds`] ends with (`</s>`).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The row length the text tower expects; [`TokenIds`] never exceed it.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    fn run(
        &self,
        step: impl FnOnce(&Tokenizer) -> tokenizers::Result<Encoding>,
    ) -> Result<Encoding, TextError> {
        step(&self.tokenizer).map_err(|source| TextError::Tokenize { source })
    }

    fn validate(&self, ids: Vec<u32>) -> Result<TokenIds, TextError> {
        let framed = ids.len() >= 2
            && ids.len() <= self.context_length
            && ids.first() == Some(&self.bos_id)
            && ids.last() == Some(&self.eos_id);
        if framed {
            Ok(TokenIds(ids))
        } else {
            Err(TextError::Malformed { len: ids.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_can_be_shared_across_request_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TextTokenizer>();
        assert_send_sync::<TokenIds>();
        assert_send_sync::<TextError>();
    }
}
