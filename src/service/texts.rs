//! Texts: checked against the length limit and tokenized (on the blocking pool when long),
//! answered from the text cache where possible, the rest queued on the text tower.

use super::{validate, InputRules, Service, ServiceError};
use crate::embedding::Embedding;
use crate::preprocess::text::{TextTokenizer, TokenIds};

/// Above this many bytes of text in one request, tokenizing moves off the async runtime.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

/// Checks one text against the length limit and tokenizes it; `index` is its position in the
/// caller's request. The one way texts become token ids, for the service and the bulk command
/// alike.
pub fn tokenize_text(
    text: &str,
    tokenizer: &TextTokenizer,
    rules: &InputRules,
    context_length: usize,
    index: usize,
) -> Result<TokenIds, ServiceError> {
    validate::text_length(index, text, rules.max_text_chars, context_length)?;
    tokenizer
        .encode(text)
        .map_err(|e| ServiceError::Internal(format!("tokenizing text {index}: {e}")))
}

impl Service {
    /// Texts to token ids, as the text tower sees them. Every text is checked for length first,
    /// so the first too long is reported whatever its position.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<TokenIds>, ServiceError> {
        let inner = &self.0;
        let context = inner.engine.folder.context_length;
        for (index, text) in texts.iter().enumerate() {
            validate::text_length(index, text, inner.rules.max_text_chars, context)?;
        }
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                tokenize_text(text, &inner.engine.tokenizer, &inner.rules, context, index)
            })
            .collect()
    }

    /// [`Service::tokenize`], on the blocking pool when the texts are long enough to stall the
    /// runtime.
    pub async fn tokenize_off_runtime(
        &self,
        texts: Vec<String>,
    ) -> Result<Vec<TokenIds>, ServiceError> {
        let total: usize = texts.iter().map(String::len).sum();
        if total <= INLINE_TOKENIZE_BYTES {
            return self.tokenize(&texts);
        }
        let service = self.clone();
        tokio::task::spawn_blocking(move || service.tokenize(&texts))
            .await
            .map_err(|e| ServiceError::Internal(format!("tokenizer task: {e}")))?
    }

    /// Texts to embeddings, in order.
    pub async fn embed_texts(&self, texts: Vec<String>) -> Result<Vec<Embedding>, ServiceError> {
        let ids = self.tokenize_off_runtime(texts).await?;
        self.embed_token_ids(ids).await
    }

    /// Token ids (from [`Service::tokenize`]) to embeddings: recent ones from the text cache,
    /// the others on the text tower (each costs its length), which then go into the cache.
    pub async fn embed_token_ids(
        &self,
        ids: Vec<TokenIds>,
    ) -> Result<Vec<Embedding>, ServiceError> {
        let cache = &self.0.text_cache;
        let mut out: Vec<Option<Embedding>> = ids.iter().map(|t| cache.get(t.as_slice())).collect();
        let (slots, misses): (Vec<usize>, Vec<TokenIds>) = ids
            .into_iter()
            .enumerate()
            .filter(|(i, _)| out[*i].is_none())
            .unzip();
        if cache.capacity() > 0 {
            self.0
                .metrics
                .text_cache(out.len() - misses.len(), misses.len());
        }
        if !misses.is_empty() {
            let keys: Vec<TokenIds> = if cache.capacity() > 0 {
                misses.clone()
            } else {
                Vec::new()
            };
            let items = misses
                .into_iter()
                .map(|t| {
                    let len = t.len();
                    (t, len)
                })
                .collect();
            let embedded = self.run_on(&self.0.texts, items, slots.clone()).await?;
            for (i, (slot, e)) in slots.into_iter().zip(embedded).enumerate() {
                if let Some(key) = keys.get(i) {
                    cache.put(key.as_slice(), e.clone());
                }
                out[slot] = Some(e);
            }
        }
        Ok(out
            .into_iter()
            .map(|e| e.expect("every text is a cache hit or was just embedded"))
            .collect())
    }
}
