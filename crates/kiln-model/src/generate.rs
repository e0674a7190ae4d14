//! Single-sequence generation: prefill the prompt, then decode token by token.

use std::time::Instant;

use crate::backend::Backend;
use crate::sampler::{Sampler, SamplerParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Model, ModelError};

/// Tokens run in one prefill pass at most.
pub const PREFILL_CHUNK: usize = 256;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How to pick tokens.
    pub sampler: SamplerParams,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The context window is full.
    ContextFull,
    /// The caller stopped it.
    Cancelled,
}

/// Timings of one generation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Seconds spent on the prompt.
    pub prefill_s: f64,
    /// Seconds spent generating.
    pub decode_s: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second (after the first).
    pub decode_tok_s: f64,
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, including a final end token if one was produced.
    pub ids: Vec<u32>,
    /// Generated text (end tokens not printed).
    pub text: String,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Timings.
    pub timings: Timings,
}

/// Generates a continuation of `prompt`, calling `on_text` with each new piece of text;
/// `on_text` returns `false` to stop.
pub fn generate<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, ModelError> {
    params.sampler.validate().map_err(ModelError::Input)?;
    if prompt.is_empty() {
        return Err(ModelError::Input("the prompt has no tokens".into()));
    }
    let ctx = model.cfg.context_length;
    if prompt.len() >= ctx {
        return Err(ModelError::Input(format!(
            "the prompt has {} tokens, the model's context is {ctx}",
            prompt.len()
        )));
    }
    let capacity = (prompt.len() + params.max_tokens).min(ctx);
    let mut kv = model.new_kv(capacity)?;
    let mut state = model.new_state(prompt.len().min(PREFILL_CHUNK), 1)?;
    let mut sampler = Sampler::new(params.sampler.clone());
    let mut timings = Timings::default();

    let t0 = Instant::now();
    let mut pos = 0;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        model.forward(&mut state, &mut kv, chunk, pos, false)?;
        pos += chunk.len();
    }
    timings.prefill_s = t0.elapsed().as_secs_f64();
    timings.prefill_tok_s = prompt.len() as f64 / timings.prefill_s.max(1e-9);

    let t1 = Instant::now();
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut dec = StreamDecoder::new();
    let mut finish = FinishReason::Length;
    let mut first_token_at = None;
    while ids.len() < params.max_tokens {
        let next = sampler.sample(&state.logits);
        ids.push(next);
        if first_token_at.is_none() {
            first_token_at = Some(Instant::now());
        }
        if tok.is_eog(next) {
            finish = FinishReason::Stop;
            break;
        }
        let piece = dec.push(tok, next);
        if !piece.is_empty() {
            text.push_str(&piece);
            if !on_text(&piece) {
                finish = FinishReason::Cancelled;
                break;
            }
        }
        if ids.len() == params.max_tokens {
            break;
        }
        if pos >= capacity {
            finish = FinishReason::ContextFull;
            break;
        }
        model.forward(&mut state, &mut kv, &[next], pos, false)?;
        pos += 1;
    }
    let rest = dec.finish();
    if !rest.is_empty() {
        text.push_str(&rest);
        on_text(&rest);
    }
    timings.decode_s = t1.elapsed().as_secs_f64();
    if let Some(ft) = first_token_at {
        let after_first = ids.len().saturating_sub(1);
        let secs = ft.elapsed().as_secs_f64();
        if after_first > 0 && secs > 0.0 {
            timings.decode_tok_s = after_first as f64 / secs;
        }
    }
    Ok(Generation {
        ids,
        text,
        finish,
        timings,
    })
}
