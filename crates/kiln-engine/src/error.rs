//! Why the engine refuses a request.

use crate::sampling::ParamError;

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// A sampling parameter is out of range.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The prompt is empty or too long, or a token is outside the vocabulary.
    #[error("{0}")]
    Prompt(String),
    /// The request could never fit in the KV memory budget.
    #[error("the request needs {needed} KV blocks but the memory budget allows {total}; raise --max-memory-mb or shorten it")]
    TooLarge {
        /// Blocks needed.
        needed: usize,
        /// Blocks in the pool.
        total: usize,
    },
    /// Too many requests are waiting.
    #[error("the queue is full ({0} requests waiting); try again later")]
    QueueFull(usize),
}
