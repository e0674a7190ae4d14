//! Scoring requests: the log-probability of each token of a text given the tokens before
//! it (teacher forcing, like vLLM's `prompt_logprobs`), computed in the engine's batches
//! without generating anything.
//!
//! A scored text runs in two phases. Its context (the positions before the first scored
//! token's predecessor) is an ordinary prefill that may come from the prefix cache; the
//! rest runs in a separate teacher-forced pass that returns one row of logits per token, so
//! the other sequences of the step keep their usual single-row pass.

use crate::engine::SubmitError;

/// A text to score: nothing is generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRequest {
    /// Token ids (template already applied).
    pub tokens: Vec<u32>,
    /// Position of the first token to score; earlier tokens are context only. The first token
    /// of a text has nothing before it, so 0 is read as 1. Must be below `tokens.len()`.
    pub from: usize,
}

/// Log-probabilities of a scored text's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptScore {
    /// Position of the first scored token (`max(from, 1)`).
    pub from: usize,
    /// `logprobs[i]` is ln p(`tokens[from + i]` | `tokens[..from + i]`) at temperature 1,
    /// without penalties.
    pub logprobs: Vec<f32>,
    /// Context positions whose KV came from the prefix cache.
    pub cached_tokens: usize,
    /// Seconds from submission to the result.
    pub total_s: f64,
}

impl PromptScore {
    /// Mean negative log-probability of the scored tokens, in nats per token (0 when none).
    pub fn mean_nll(&self) -> f64 {
        if self.logprobs.is_empty() {
            return 0.0;
        }
        -self.logprobs.iter().map(|&l| l as f64).sum::<f64>() / self.logprobs.len() as f64
    }
}

/// Where a scoring request's result goes, once, from the engine thread: the scores, or why
/// the request failed.
pub type ScoreSink = Box<dyn FnOnce(Result<PromptScore, String>) + Send>;

/// Why a scoring request produced no scores.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoreError {
    /// The engine refused the request.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The engine failed while running it, or shut down first.
    #[error("scoring failed: {0}")]
    Failed(String),
}

/// ln p(`token`) under the softmax of `logits`.
pub(crate) fn token_logprob(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| l - max - sum.ln())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprob_is_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f32 = l.iter().map(|x| x.exp()).sum();
        for t in 0..3 {
            assert!((token_logprob(&l, t).exp() - l[t as usize].exp() / z).abs() < 1e-6);
        }
        assert_eq!(token_logprob(&l, 9), f32::NEG_INFINITY);
    }

    #[test]
    fn mean_nll_of_scores() {
        let s = PromptScore {
            from: 1,
            logprobs: vec![-1.0, -3.0],
            cached_tokens: 0,
            total_s: 0.0,
        };
        assert!((s.mean_nll() - 2.0).abs() < 1e-12);
        let empty = PromptScore {
            logprobs: vec![],
            ..s
        };
        assert_eq!(empty.mean_nll(), 0.0);
    }
}
