//! Per-request sampling: penalties, temperature, top-k, top-p, min-p, seeds and logprobs.
//!
//! Every request owns its random stream, so a seeded request gives the same tokens whatever
//! else runs in the batch.

use kiln_model::sample::{Adjust, RowSampling, Sampled};
use serde::{Deserialize, Serialize};

/// How one request picks its tokens. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature in [0, 100]; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Nucleus threshold in (0, 1].
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the best one's, in [0, 1).
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens seen in the last
    /// `penalty_last_n` tokens; 1 disables. In (0, 10].
    pub repetition_penalty: f32,
    /// How many recent tokens (prompt included) the repetition penalty looks at.
    pub penalty_last_n: usize,
    /// Subtracted once per earlier occurrence in the generated text, in [-2, 2].
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurs in the generated text, in [-2, 2].
    pub presence_penalty: f32,
    /// Seed of this request's random stream (`None`: drawn from the engine's counter).
    pub seed: Option<u64>,
    /// Most tokens to generate (at least 1).
    pub max_tokens: usize,
    /// Strings that end generation; the text stops before them.
    pub stop: Vec<String>,
    /// Report the chosen token's log-probability and this many alternatives (0..=20).
    pub logprobs: Option<usize>,
    /// Keep generating through end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Added to the logits of these tokens before sampling, each in [-100, 100] (-100 in
    /// practice bans a token, 100 forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// Prompt lookup (speculative decoding without a draft model): up to this many tokens
    /// proposed each step from an earlier occurrence of the text's last tokens in the prompt
    /// or the answer so far, verified in one pass (0: off). The answer is the one plain
    /// decoding gives (for a sampled request, with the same seed).
    pub prompt_lookup: usize,
    /// Speculative decoding with the engine's draft model: up to this many tokens proposed
    /// each step by the draft, verified by the model in one pass (0: off; the engine must
    /// have a draft model). The answer is the one plain decoding gives, as with
    /// `prompt_lookup`.
    pub draft_max: usize,
}

/// Most tokens prompt lookup or a draft model proposes in one step.
pub const MAX_PROMPT_LOOKUP: usize = 16;

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.0,
            repetition_penalty: 1.0,
            penalty_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            logprobs: None,
            ignore_eos: false,
            logit_bias: Vec::new(),
            prompt_lookup: 0,
            draft_max: 0,
        }
    }
}

/// A parameter out of its range; the message names it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid parameter `{param}`: {what}")]
pub struct ParamError {
    /// The parameter's name.
    pub param: &'static str,
    /// What was wrong and what is expected.
    pub what: String,
}

fn check(ok: bool, param: &'static str, what: impl FnOnce() -> String) -> Result<(), ParamError> {
    if ok {
        Ok(())
    } else {
        Err(ParamError {
            param,
            what: what(),
        })
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// The same parameters with `max_tokens` set.
    pub fn with_max(self, max_tokens: usize) -> Self {
        SamplingParams { max_tokens, ..self }
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), ParamError> {
        let t = self.temperature;
        check(
            t.is_finite() && (0.0..=100.0).contains(&t),
            "temperature",
            || format!("{t} is not in [0, 100]"),
        )?;
        let p = self.top_p;
        check(p.is_finite() && p > 0.0 && p <= 1.0, "top_p", || {
            format!("{p} is not in (0, 1]")
        })?;
        let m = self.min_p;
        check(m.is_finite() && (0.0..1.0).contains(&m), "min_p", || {
            format!("{m} is not in [0, 1)")
        })?;
        let r = self.repetition_penalty;
        check(
            r.is_finite() && r > 0.0 && r <= 10.0,
            "repetition_penalty",
            || format!("{r} is not in (0, 10]"),
        )?;
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            check(v.is_finite() && (-2.0..=2.0).contains(&v), name, || {
                format!("{v} is not in [-2, 2]")
            })?;
        }
        check(self.max_tokens >= 1, "max_tokens", || {
            "must be at least 1".into()
        })?;
        check(self.max_tokens <= 1 << 20, "max_tokens", || {
            format!("{} is absurdly large", self.max_tokens)
        })?;
        check(self.stop.len() <= 16, "stop", || {
            format!("{} stop strings, at most 16", self.stop.len())
        })?;
        check(
            self.stop.iter().all(|s| !s.is_empty() && s.len() <= 256),
            "stop",
            || "stop strings must be 1 to 256 bytes".into(),
        )?;
        check(self.logit_bias.len() <= 1024, "logit_bias", || {
            format!("{} entries, at most 1024", self.logit_bias.len())
        })?;
        if let Some(&(t, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !b.is_finite() || !(-100.0..=100.0).contains(b))
        {
            return Err(ParamError {
                param: "logit_bias",
                what: format!("the bias {b} of token {t} is not in [-100, 100]"),
            });
        }
        if let Some(n) = self.logprobs {
            check(n <= 20, "logprobs", || {
                format!("{n} alternatives, at most 20")
            })?;
        }
        let k = self.prompt_lookup;
        check(k <= MAX_PROMPT_LOOKUP, "prompt_lookup", || {
            format!("{k} tokens, at most {MAX_PROMPT_LOOKUP}")
        })?;
        let d = self.draft_max;
        check(d <= MAX_PROMPT_LOOKUP, "draft_max", || {
            format!("{d} tokens, at most {MAX_PROMPT_LOOKUP}")
        })?;
        check(k == 0 || d == 0, "draft_max", || {
            "a draft model and prompt lookup do not combine: set one of `draft_max` and `prompt_lookup` to 0".into()
        })?;
        Ok(())
    }

    /// Most tokens proposed in one step, by prompt lookup or the draft model (0: none).
    pub fn speculative(&self) -> usize {
        self.prompt_lookup.max(self.draft_max)
    }

    /// Greedy, and the token is the logits' argmax: no penalty, bias or log-probabilities
    /// (so proposed tokens are verified on the device, by the argmax of each row).
    pub fn plain_greedy(&self) -> bool {
        self.temperature == 0.0
            && self.repetition_penalty == 1.0
            && self.frequency_penalty == 0.0
            && self.presence_penalty == 0.0
            && self.logit_bias.is_empty()
            && self.logprobs.is_none()
    }
}

/// The log-probability of a chosen token and its best alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The chosen token.
    pub token: u32,
    /// Its log-probability under the model (temperature 1, after penalties).
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// The log-probabilities a backend returned with a sampled token.
    pub fn from_sampled(s: &Sampled) -> Self {
        TokenLogprob {
            token: s.token,
            logprob: s.logprob,
            top: s.top().to_vec(),
        }
    }
}

/// One request's sampling state on the host: its parameters, seed, how many tokens it has
/// drawn, and the token counts its penalties need. It never sees the logits: each step it
/// describes its row ([`RequestSampler::row`]) and the backend samples where the logits are.
#[derive(Debug, Clone)]
pub struct RequestSampler {
    params: SamplingParams,
    seed: u64,
    drawn: u64,
    counts: std::collections::HashMap<u32, u32>,
    recent: std::collections::VecDeque<u32>,
    in_window: std::collections::HashMap<u32, u32>,
    /// The logit bias by token, sorted, duplicates summed.
    bias: Vec<(u32, f32)>,
}

impl RequestSampler {
    /// A sampler for one request; `seed` is the resolved seed; `prompt` feeds the
    /// repetition window.
    pub fn new(params: SamplingParams, seed: u64, prompt: &[u32]) -> Self {
        let mut s = RequestSampler {
            params,
            seed,
            drawn: 0,
            counts: Default::default(),
            recent: Default::default(),
            in_window: Default::default(),
            bias: Vec::new(),
        };
        let mut bias = s.params.logit_bias.clone();
        bias.sort_by_key(|b| b.0);
        for (t, v) in bias {
            match s.bias.last_mut() {
                Some(last) if last.0 == t => last.1 += v,
                _ => s.bias.push((t, v)),
            }
        }
        if s.params.repetition_penalty != 1.0 {
            let keep = s.params.penalty_last_n;
            for &t in &prompt[prompt.len().saturating_sub(keep)..] {
                s.push_recent(t);
            }
        }
        s
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    fn push_recent(&mut self, t: u32) {
        let keep = self.params.penalty_last_n;
        if keep == 0 {
            return;
        }
        if self.recent.len() == keep {
            if let Some(old) = self.recent.pop_front() {
                if let Some(c) = self.in_window.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.in_window.remove(&old);
                    }
                }
            }
        }
        self.recent.push_back(t);
        *self.in_window.entry(t).or_insert(0) += 1;
    }

    /// This request's row of the next step: appends its adjustments (penalties and logit
    /// bias: one entry per distinct token concerned, so the work is bounded by the request's
    /// history, never the vocabulary) to `adjust`.
    pub fn row(&self, adjust: &mut Vec<Adjust>) -> RowSampling {
        let p = &self.params;
        let start = adjust.len();
        let rep = p.repetition_penalty != 1.0;
        let counted = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        if rep || counted || !self.bias.is_empty() {
            let bias = |t: u32| -> f32 {
                self.bias
                    .binary_search_by_key(&t, |b| b.0)
                    .map_or(0.0, |i| self.bias[i].1)
            };
            let mut add = |token: u32, repeated: bool| {
                let c = self.counts.get(&token).copied().unwrap_or(0);
                adjust.push(Adjust {
                    token,
                    repeated,
                    add: bias(token) - penalty(p, c),
                })
            };
            if rep {
                for &t in self.in_window.keys() {
                    add(t, true);
                }
            }
            for &t in self.counts.keys() {
                if !self.in_window.contains_key(&t) {
                    add(t, false);
                }
            }
            for &(t, _) in &self.bias {
                if !self.in_window.contains_key(&t) && !self.counts.contains_key(&t) {
                    add(t, false);
                }
            }
        }
        RowSampling {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            seed: self.seed,
            counter: self.drawn,
            adjust: (start as u32, (adjust.len() - start) as u32),
            logprobs: p.logprobs.map(|n| n as u8),
            mask: None,
        }
    }

    /// Records the token drawn for this request (for the penalties and the random stream).
    pub fn record(&mut self, token: u32) {
        self.drawn += 1;
        if self.params.frequency_penalty != 0.0 || self.params.presence_penalty != 0.0 {
            *self.counts.entry(token).or_insert(0) += 1;
        }
        if self.params.repetition_penalty != 1.0 {
            self.push_recent(token);
        }
    }

    /// Samples on the host from one row of logits (tests and runners without a device
    /// sampler): the same steps as a backend's.
    pub fn sample(&mut self, logits: &[f32]) -> (u32, Option<TokenLogprob>) {
        let mut adjust = Vec::new();
        let row = self.row(&mut adjust);
        let mut l = logits.to_vec();
        let s = kiln_model::sample::sample_row(
            &mut l,
            &row,
            None,
            &adjust,
            &mut kiln_model::sample::Scratch::default(),
        );
        self.record(s.token);
        let lp = self.params.logprobs.map(|_| TokenLogprob::from_sampled(&s));
        (s.token, lp)
    }
}

/// What frequency and presence penalties subtract for a token seen `count` times.
fn penalty(p: &SamplingParams, count: u32) -> f32 {
    if count == 0 {
        0.0
    } else {
        p.frequency_penalty * count as f32 + p.presence_penalty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..50)
            .map(|i| ((i * 7919) % 23) as f32 * 0.25 - 2.0)
            .collect()
    }

    #[test]
    fn validation_names_each_parameter() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: 1.0,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: 3.0,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: -3.0,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    max_tokens: 0,
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                SamplingParams {
                    stop: vec![String::new()],
                    ..Default::default()
                },
                "stop",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..Default::default()
                },
                "logprobs",
            ),
        ];
        for (p, name) in cases {
            let e = p.validate().unwrap_err();
            assert_eq!(e.param, name);
            assert!(e.to_string().contains(name));
        }
        SamplingParams::default().validate().unwrap();
    }

    #[test]
    fn same_seed_same_tokens() {
        let l = logits();
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            ..Default::default()
        };
        let run = |seed| {
            let mut s = RequestSampler::new(p.clone(), seed, &[]);
            (0..40).map(|_| s.sample(&l).0).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn penalties_change_the_greedy_choice() {
        let mut l = vec![0.0f32; 10];
        l[3] = 2.0;
        l[4] = 1.9;
        let p = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 1.5,
            ..Default::default()
        };
        let mut s = RequestSampler::new(p, 0, &[3]);
        assert_eq!(s.sample(&l).0, 4, "token 3 was in the prompt window");
        let p = SamplingParams {
            temperature: 0.0,
            presence_penalty: 0.5,
            ..Default::default()
        };
        let mut s = RequestSampler::new(p, 0, &[]);
        assert_eq!(s.sample(&l).0, 3);
        assert_eq!(s.sample(&l).0, 4, "token 3 is now present");
        let p = SamplingParams {
            temperature: 0.0,
            frequency_penalty: 0.06,
            ..Default::default()
        };
        let mut s = RequestSampler::new(p, 0, &[]);
        assert_eq!(s.sample(&l).0, 3);
        assert_eq!(s.sample(&l).0, 3, "one occurrence costs 0.06 < 0.1");
        assert_eq!(s.sample(&l).0, 4, "two cost 0.12 > 0.1");
    }

    #[test]
    fn min_p_and_top_p_restrict_the_choice() {
        let l = vec![5.0, 4.0, 0.0, -1.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            min_p: 0.2,
            ..Default::default()
        };
        let mut s = RequestSampler::new(p, 1, &[]);
        for _ in 0..200 {
            assert!(
                s.sample(&l).0 <= 1,
                "exp(-5) of the best is below min_p 0.2"
            );
        }
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = RequestSampler::new(p, 1, &[]);
        for _ in 0..200 {
            assert_eq!(s.sample(&l).0, 0);
        }
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let l = logits();
        let p = SamplingParams {
            temperature: 0.0,
            logprobs: Some(5),
            ..Default::default()
        };
        let mut s = RequestSampler::new(p, 0, &[]);
        let (tok, lp) = s.sample(&l);
        let lp = lp.unwrap();
        assert_eq!(lp.token, tok);
        assert_eq!(lp.top.len(), 5);
        assert_eq!(lp.top[0].0, tok);
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f32 = l
            .iter()
            .map(|&x| (x - l[tok as usize] + lp.logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
    }
}
