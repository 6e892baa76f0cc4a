//! Embeddings and what is computed from them: unit-length vectors, cosine scores, and the
//! softmax over `logit_scale x cosine` that CLIP uses for zero-shot probabilities.

use thiserror::Error;

/// A unit-length embedding. Every vector the service hands out goes through [`Embedding::new`],
/// so callers can rely on `dot` being the cosine whether or not the graph normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(Vec<f32>);

/// Why a raw model output could not become an embedding.
#[derive(Debug, Error, PartialEq)]
pub enum EmbeddingError {
    /// The output held NaN or infinity: a broken graph or weights, never a caller's fault.
    #[error("the model produced a non-finite value")]
    NonFinite,
    /// The output was all zeros, which has no direction.
    #[error("the model produced a zero vector")]
    Zero,
}

impl Embedding {
    /// Normalizes a raw model output to unit length (accumulating in f64 so that the norm of a
    /// 512-d vector is as exact as the f32 values allow).
    pub fn new(mut raw: Vec<f32>) -> Result<Self, EmbeddingError> {
        if raw.iter().any(|v| !v.is_finite()) {
            return Err(EmbeddingError::NonFinite);
        }
        let norm = raw
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            return Err(EmbeddingError::Zero);
        }
        for v in &mut raw {
            *v = (f64::from(*v) / norm) as f32;
        }
        Ok(Self(raw))
    }

    /// The components, unit length.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// Number of dimensions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True only for a zero-dimensional embedding, which [`Embedding::new`] never builds.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Cosine similarity with another embedding of the same model (both are unit length).
    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum::<f64>() as f32
    }

    /// The first `dims` components renormalized to unit length: the Matryoshka-style shortening
    /// that the OpenAI API's `dimensions` parameter asks for.
    pub fn truncated(&self, dims: usize) -> Result<Embedding, EmbeddingError> {
        Embedding::new(self.0[..dims.min(self.0.len())].to_vec())
    }

    /// The components, consuming the embedding.
    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }
}

/// Cosine of every row embedding with every column embedding: `scores[i][j] = rows[i] . cols[j]`.
pub fn cosine_matrix(rows: &[Embedding], cols: &[Embedding]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| cols.iter().map(|c| r.cosine(c)).collect())
        .collect()
}

/// Softmax of `logit_scale x score` along one row, computed stably (max subtracted first).
pub fn softmax(scores: &[f32], logit_scale: f32) -> Vec<f32> {
    let logits: Vec<f64> = scores
        .iter()
        .map(|&s| f64::from(logit_scale) * f64::from(s))
        .collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_embedding_has_unit_length() {
        let e = Embedding::new(vec![3.0, 4.0]).unwrap();
        assert_eq!(e.as_slice(), &[0.6, 0.8]);
        assert!((e.cosine(&e) - 1.0).abs() < 1e-7);
    }

    #[test]
    fn non_finite_and_zero_outputs_are_refused() {
        assert_eq!(
            Embedding::new(vec![f32::NAN, 1.0]),
            Err(EmbeddingError::NonFinite)
        );
        assert_eq!(
            Embedding::new(vec![f32::INFINITY]),
            Err(EmbeddingError::NonFinite)
        );
        assert_eq!(Embedding::new(vec![0.0, 0.0]), Err(EmbeddingError::Zero));
    }

    #[test]
    fn truncation_renormalizes() {
        let e = Embedding::new(vec![3.0, 4.0, 12.0]).unwrap();
        let t = e.truncated(2).unwrap();
        assert_eq!(t.len(), 2);
        assert!((t.as_slice()[0] - 0.6).abs() < 1e-6);
        assert_eq!(e.truncated(10).unwrap(), e);
    }

    #[test]
    fn cosine_matrix_has_rows_by_columns() {
        let a = Embedding::new(vec![1.0, 0.0]).unwrap();
        let b = Embedding::new(vec![0.0, 1.0]).unwrap();
        let m = cosine_matrix(std::slice::from_ref(&a), &[a.clone(), b]);
        assert_eq!(m, vec![vec![1.0, 0.0]]);
    }

    #[test]
    fn softmax_sums_to_one_and_follows_the_scale() {
        let p = softmax(&[0.3, 0.2, 0.1], 100.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > 0.99);
        let flat = softmax(&[0.3, 0.2, 0.1], 0.0);
        assert!(flat.iter().all(|&x| (x - 1.0 / 3.0).abs() < 1e-6));
        // Large logits must not overflow.
        let big = softmax(&[1.0, 1.0], 1e6);
        assert!((big[0] - 0.5).abs() < 1e-6);
    }
}
