//! Scoring requests: the log-probability of each token of a text given the tokens before
//! it (teacher forcing, like vLLM's `prompt_logprobs`), computed in the engine's batches
//! without generating anything.
//!
//! A scored text runs in two phases. Its context (the positions before the first scored
//! token's predecessor) is an ordinary prefill that may come from the prefix cache; the
//! rest runs in a separate teacher-forced pass that returns one row of logits per token, so
//! the other sequences of the step keep their usual single-row pass.

use crate::error::SubmitError;

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

/// How an embedding pools the final hidden states of a text's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Their mean.
    Mean,
    /// The last token's (for models trained to summarize into it).
    Last,
}

impl Pooling {
    /// `mean` or `last`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "mean" => Some(Pooling::Mean),
            "last" => Some(Pooling::Last),
            _ => None,
        }
    }
}

/// A text to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedRequest {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// How the tokens' hidden states become one vector.
    pub pooling: Pooling,
    /// Scale the vector to length 1.
    pub normalize: bool,
}

/// Where an embedding goes, once, from the engine thread: the vector, or why there is none.
pub type EmbedSink = Box<dyn FnOnce(Result<Vec<f32>, String>) + Send>;

/// An embedding being gathered: hidden states arrive chunk by chunk as the text is
/// prefilled.
pub(crate) struct Pooled {
    pooling: Pooling,
    normalize: bool,
    /// Sum of the rows seen (mean pooling).
    sum: Vec<f64>,
    /// The latest row seen.
    last: Vec<f32>,
    /// Positions recorded (those computed again after a preemption are skipped).
    seen: usize,
    pub(crate) done: Option<EmbedSink>,
}

impl Pooled {
    pub(crate) fn new(req: &EmbedRequest, done: EmbedSink) -> Self {
        Pooled {
            pooling: req.pooling,
            normalize: req.normalize,
            sum: Vec::new(),
            last: Vec::new(),
            seen: 0,
            done: Some(done),
        }
    }

    /// Records the hidden rows (`dim` values each) of positions `pos0..pos0 + n`.
    pub(crate) fn record(&mut self, rows: &[f32], pos0: usize, n: usize, dim: usize) {
        if self.sum.len() != dim {
            self.sum = vec![0.0; dim];
        }
        for i in 0..n {
            if pos0 + i != self.seen {
                continue;
            }
            let row = &rows[i * dim..(i + 1) * dim];
            for (s, &x) in self.sum.iter_mut().zip(row) {
                *s += f64::from(x);
            }
            self.last.clear();
            self.last.extend_from_slice(row);
            self.seen += 1;
        }
    }

    /// The pooled vector.
    pub(crate) fn vector(&self) -> Vec<f32> {
        let mut v: Vec<f32> = match self.pooling {
            Pooling::Mean => self
                .sum
                .iter()
                .map(|&s| (s / self.seen.max(1) as f64) as f32)
                .collect(),
            Pooling::Last => self.last.clone(),
        };
        if self.normalize {
            let norm = v
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt();
            if norm > 0.0 {
                v.iter_mut()
                    .for_each(|x| *x = (f64::from(*x) / norm) as f32);
            }
        }
        v
    }
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
    fn pooling_means_or_takes_the_last_row_and_skips_repeats() {
        let req = EmbedRequest {
            tokens: vec![1, 2, 3],
            pooling: Pooling::Mean,
            normalize: false,
        };
        let mut p = Pooled::new(&req, Box::new(|_| {}));
        p.record(&[1.0, 2.0, 3.0, 4.0], 0, 2, 2);
        // Positions 0 and 1 again (after a preemption), then 2.
        p.record(&[9.0, 9.0, 9.0, 9.0, 5.0, 6.0], 0, 3, 2);
        assert_eq!(p.vector(), vec![3.0, 4.0]);
        p.pooling = Pooling::Last;
        assert_eq!(p.vector(), vec![5.0, 6.0]);
        p.normalize = true;
        let v = p.vector();
        assert!(
            (v[0] - 5.0 / 61f32.sqrt()).abs() < 1e-6 && (v[1] - 6.0 / 61f32.sqrt()).abs() < 1e-6
        );
    }

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
