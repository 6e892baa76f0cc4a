//! What the service can fail with: one typed error for every front end (HTTP routes, the
//! OpenAI route, the bulk command), each mapping it to its own answer in one place.

use thiserror::Error;

/// Why the service could not embed (or tokenize) a request. `index` is always the position of
/// the item in the caller's request, never a position in a batch.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum ServiceError {
    /// No items were given.
    #[error("no {what} given: send at least one")]
    Empty {
        /// The noun the caller uses for its items (`texts`, `images`, `labels`).
        what: &'static str,
    },
    /// More items than one request may carry.
    #[error("{count} {what} in one request; the limit is {max}: split the request")]
    TooMany {
        /// The noun the caller uses for its items.
        what: &'static str,
        /// How many were sent (or, while streaming, reached).
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An item that is not an image in a form the service reads (bad base64, a URL).
    #[error("image {index}: {message}")]
    BadImageData {
        /// The item.
        index: usize,
        /// Why.
        message: String,
    },
    /// An image that could not be decoded.
    #[error("image {index}: {message}")]
    InvalidImage {
        /// The item.
        index: usize,
        /// Why.
        message: String,
    },
    /// An image with more pixels than `limits.max_image_pixels`.
    #[error("image {index}: {message}; resize it before sending")]
    ImageTooLarge {
        /// The item.
        index: usize,
        /// Its size and the limit.
        message: String,
    },
    /// A text longer than `limits.max_text_chars`.
    #[error("text {index} has {chars} characters; the limit is {max} (the model reads at most {context} tokens anyway)")]
    TextTooLong {
        /// The item.
        index: usize,
        /// Its length in characters.
        chars: usize,
        /// The limit.
        max: usize,
        /// The model's context length in tokens.
        context: usize,
    },
    /// A tower's queue is full: nothing of the request was queued.
    #[error("the {tower} queue is full")]
    Overloaded {
        /// Which tower.
        tower: &'static str,
    },
    /// The model is not loaded yet.
    #[error("the model is not loaded yet")]
    NotReady,
    /// The encoder failed on this item (the other items of its batch were still answered).
    /// `message` is for logs, not callers.
    #[error("item {index}: {message}")]
    Encode {
        /// The item.
        index: usize,
        /// What went wrong.
        message: String,
    },
    /// Anything else that went wrong inside (a task that failed to join, the tokenizer); for
    /// logs, not callers.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// The request item the error is about, if any.
    pub fn index(&self) -> Option<usize> {
        match self {
            ServiceError::BadImageData { index, .. }
            | ServiceError::InvalidImage { index, .. }
            | ServiceError::ImageTooLarge { index, .. }
            | ServiceError::TextTooLong { index, .. }
            | ServiceError::Encode { index, .. } => Some(*index),
            ServiceError::Empty { .. }
            | ServiceError::TooMany { .. }
            | ServiceError::Overloaded { .. }
            | ServiceError::NotReady
            | ServiceError::Internal(_) => None,
        }
    }
}
