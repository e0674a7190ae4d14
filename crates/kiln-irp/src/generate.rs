//! Where candidates come from: a [`Generator`] turns candidate specifications into answers.
//! [`EngineGenerator`] submits them all to the engine at once, so the engine decodes them as
//! one batch; tests use generators with controlled outputs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use kiln_engine::FinishReason;
use kiln_engine::{EngineHandle, Event, Request, SamplingParams, ScoreRequest};
use kiln_tokenizer::chat::{ChatTemplate, Message};
use kiln_tokenizer::Tokenizer;

use crate::snarc::{Surprisal, SurpriseModel};
use crate::IrpError;

/// One candidate to generate: a conversation and the engine's own sampling parameters (the
/// same type a CLI flag or an HTTP request fills).
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateSpec {
    /// The conversation to answer (the chat template is applied by the generator).
    pub messages: Vec<Message>,
    /// How to sample it (temperature, seed, limits...).
    pub params: SamplingParams,
}

/// A generated candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The answer text.
    pub text: String,
    /// Generated tokens (with the final end token, if any).
    pub tokens: usize,
    /// Sum of the chosen tokens' log-probabilities at temperature 1.
    pub sum_logprob: f64,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Seconds from submission to the first token (queueing and prefill).
    pub first_token_s: f64,
}

/// Produces candidates; all specs of one call may be generated together.
pub trait Generator {
    /// Generates one answer per spec, in order.
    fn generate(&self, specs: &[CandidateSpec]) -> Result<Vec<Generated>, IrpError>;
}

/// Candidates from a running engine: every spec of a call is submitted before any is awaited,
/// so the engine's continuous batching decodes them together.
pub struct EngineGenerator<'a> {
    /// The engine.
    pub engine: &'a EngineHandle,
    /// The model's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The model's chat template.
    pub template: &'a ChatTemplate,
}

impl EngineGenerator<'_> {
    /// The prompt ids of a conversation, ready for the assistant's turn.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, IrpError> {
        self.template
            .encode(self.tokenizer, messages, true)
            .map_err(|e| IrpError::Engine(format!("applying the chat template: {e}")))
    }

    /// The ids of `conversation` followed by `question` as the next user turn, and where the
    /// question's own tokens begin. The question is tokenized on its own (as plain text), so
    /// that exactly its tokens are scored and not the template's markup around them.
    pub fn question_tokens(
        &self,
        conversation: &[Message],
        question: &str,
    ) -> Result<(Vec<u32>, usize), IrpError> {
        let q = question.trim();
        if q.is_empty() {
            return Err(IrpError::Scoring("the question to score is empty".into()));
        }
        let mut msgs = conversation.to_vec();
        msgs.push(Message::new("user", q));
        let r = self
            .template
            .render_marked(&msgs, false)
            .map_err(|e| IrpError::Scoring(format!("applying the chat template: {e}")))?;
        let text = &r.text;
        let at = text.rfind(q).ok_or_else(|| {
            IrpError::Scoring("the chat template does not show the question verbatim".into())
        })?;
        // Control tokens count only where the template wrote them, not in earlier contents.
        let before: Vec<std::ops::Range<usize>> = match r.contents {
            Some(contents) => contents
                .into_iter()
                .filter(|c| c.start < at)
                .map(|c| c.start..c.end.min(at))
                .collect(),
            None => {
                if let Some(t) = msgs
                    .iter()
                    .find_map(|m| self.tokenizer.special_text_in(&m.content))
                {
                    return Err(IrpError::Scoring(format!(
                        "a message spells the control token `{t}` and the chat template transforms contents; cannot score the question"
                    )));
                }
                Vec::new()
            }
        };
        let mut ids = self
            .tokenizer
            .encode_with_literal(&text[..at], true, &before);
        let from = ids.len();
        ids.extend(self.tokenizer.encode(q, false, false));
        Ok((ids, from))
    }
}

/// The model's surprisal of a question, through the engine's scoring requests (batched with
/// whatever else the engine runs).
impl SurpriseModel for EngineGenerator<'_> {
    fn surprisal(&self, conversation: &[Message], question: &str) -> Result<Surprisal, IrpError> {
        let (tokens, from) = self.question_tokens(conversation, question)?;
        let s = self
            .engine
            .score(ScoreRequest { tokens, from })
            .map_err(|e| IrpError::Scoring(e.to_string()))?;
        Ok(Surprisal {
            mean_nll: s.mean_nll(),
            tokens: s.logprobs.len(),
        })
    }
}

struct Partial {
    text: String,
    tokens: usize,
    sum_logprob: f64,
    done: Option<(FinishReason, usize, f64)>,
}

impl Generator for EngineGenerator<'_> {
    fn generate(&self, specs: &[CandidateSpec]) -> Result<Vec<Generated>, IrpError> {
        self.generate_unless(specs, None)
    }
}

impl EngineGenerator<'_> {
    /// [`Generator::generate`], abandoned as soon as `cancel` is set (a server's client went
    /// away): the candidates' sequences are cancelled at the engine's next step and the call
    /// returns an error.
    pub fn generate_unless(
        &self,
        specs: &[CandidateSpec],
        cancel: Option<&Arc<AtomicBool>>,
    ) -> Result<Vec<Generated>, IrpError> {
        let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Acquire));
        if cancelled() {
            return Err(IrpError::Engine("cancelled: the client went away".into()));
        }
        // Every prompt first (one per distinct conversation), then every request in one go:
        // the engine admits the candidates together instead of as each prompt is ready
        // (applying the template between submissions let the first run a step or two
        // alone, and the last finish that much later).
        let mut prompts: Vec<Vec<u32>> = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let same = i > 0 && specs[i - 1].messages == s.messages;
            let p = match prompts.last() {
                Some(p) if same => p.clone(),
                _ => self.prompt(&s.messages)?,
            };
            prompts.push(p);
        }
        let (tx, rx) = mpsc::channel::<(usize, Event)>();
        for (i, (s, prompt)) in specs.iter().zip(prompts).enumerate() {
            let params = SamplingParams {
                logprobs: Some(0),
                ..s.params.clone()
            };
            let tx = tx.clone();
            let stop = cancel.cloned();
            self.engine
                .submit(
                    Request::new(prompt, params),
                    Box::new(move |ev| {
                        !stop.as_ref().is_some_and(|c| c.load(Ordering::Acquire))
                            && tx.send((i, ev)).is_ok()
                    }),
                )
                .map_err(|e| IrpError::Engine(e.to_string()))?;
        }
        drop(tx);
        let mut out: Vec<Partial> = specs
            .iter()
            .map(|_| Partial {
                text: String::new(),
                tokens: 0,
                sum_logprob: 0.0,
                done: None,
            })
            .collect();
        let mut left = specs.len();
        while left > 0 {
            let (i, ev) = rx.recv().map_err(|_| {
                if cancelled() {
                    IrpError::Engine("cancelled: the client went away".into())
                } else {
                    IrpError::Engine("the engine stopped before the candidates were done".into())
                }
            })?;
            let p = &mut out[i];
            match ev {
                Event::Token { text, logprob, .. } => {
                    p.text.push_str(&text);
                    p.tokens += 1;
                    p.sum_logprob += logprob.map_or(0.0, |l| l.logprob as f64);
                }
                Event::Done { reason, usage } => {
                    p.done = Some((reason, usage.prompt_tokens, usage.time_to_first_token_s));
                    left -= 1;
                }
                Event::Failed(m) => return Err(IrpError::Engine(m)),
            }
        }
        Ok(out
            .into_iter()
            .map(|p| {
                let (finish, prompt_tokens, first_token_s) =
                    p.done.unwrap_or((FinishReason::Cancelled, 0, 0.0));
                Generated {
                    text: p.text.trim().to_owned(),
                    tokens: p.tokens,
                    sum_logprob: p.sum_logprob,
                    finish,
                    prompt_tokens,
                    first_token_s,
                }
            })
            .collect())
    }
}
