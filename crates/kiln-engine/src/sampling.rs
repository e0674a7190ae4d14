//! Per-request sampling: penalties, temperature, top-k, top-p, min-p, seeds and logprobs.
//!
//! Every request owns its random stream, so a seeded request gives the same tokens whatever
//! else runs in the batch.

use kiln_model::sampler::Rng;
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
}

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
        if let Some(n) = self.logprobs {
            check(n <= 20, "logprobs", || {
                format!("{n} alternatives, at most 20")
            })?;
        }
        Ok(())
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

/// One request's sampler: its parameters, random stream, token counts and scratch space.
#[derive(Debug, Clone)]
pub struct RequestSampler {
    params: SamplingParams,
    rng: Rng,
    counts: std::collections::HashMap<u32, u32>,
    recent: std::collections::VecDeque<u32>,
    scratch: Vec<f32>,
    cand: Vec<(f32, u32)>,
}

impl RequestSampler {
    /// A sampler for one request; `seed` is the resolved seed; `prompt` feeds the
    /// repetition window.
    pub fn new(params: SamplingParams, seed: u64, prompt: &[u32]) -> Self {
        let keep = params.penalty_last_n;
        let recent = prompt[prompt.len().saturating_sub(keep)..]
            .iter()
            .copied()
            .collect();
        RequestSampler {
            params,
            rng: Rng::new(seed),
            counts: Default::default(),
            recent,
            scratch: Vec::new(),
            cand: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` and records it for the penalties.
    pub fn sample(&mut self, logits: &[f32]) -> (u32, Option<TokenLogprob>) {
        let p = &self.params;
        let penalised =
            p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
        let logits: &[f32] = if penalised {
            self.scratch.clear();
            self.scratch.extend_from_slice(logits);
            if p.repetition_penalty != 1.0 {
                let mut seen: Vec<u32> = self.recent.iter().copied().collect();
                seen.sort_unstable();
                seen.dedup();
                for t in seen {
                    if let Some(l) = self.scratch.get_mut(t as usize) {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
            for (&t, &c) in &self.counts {
                if let Some(l) = self.scratch.get_mut(t as usize) {
                    *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
                }
            }
            &self.scratch
        } else {
            logits
        };
        let token = if p.temperature <= 0.0 || p.top_k == 1 {
            kiln_model::sampler::argmax(logits)
        } else {
            pick(p, &mut self.rng, &mut self.cand, logits)
        };
        let lp = p.logprobs.map(|n| logprobs(logits, token, n));
        *self.counts.entry(token).or_insert(0) += 1;
        if self.params.penalty_last_n > 0 {
            if self.recent.len() == self.params.penalty_last_n {
                self.recent.pop_front();
            }
            self.recent.push_back(token);
        }
        (token, lp)
    }
}

/// Best first: higher logit, then lower token id.
fn order(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The `k` best `(logit, id)` pairs in [`order`], unsorted: the set `select_nth_unstable_by`
/// would keep. One pass with a heap of `k` whose top is the worst kept, so that most of a large
/// vocabulary costs one comparison.
fn top_k_into(logits: &[f32], k: usize, cand: &mut Vec<(f32, u32)>) {
    struct Worst((f32, u32));
    impl PartialEq for Worst {
        fn eq(&self, o: &Self) -> bool {
            order(&self.0, &o.0).is_eq()
        }
    }
    impl Eq for Worst {}
    impl PartialOrd for Worst {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Worst {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            order(&self.0, &o.0)
        }
    }
    let mut heap: std::collections::BinaryHeap<Worst> =
        std::collections::BinaryHeap::with_capacity(k);
    for (i, &l) in logits.iter().enumerate() {
        let c = (l, i as u32);
        if heap.len() < k {
            heap.push(Worst(c));
        } else if let Some(mut w) = heap.peek_mut() {
            // Ids rise, so an equal logit never displaces a kept one: only a larger one does.
            if l.total_cmp(&w.0 .0).is_gt() {
                *w = Worst(c);
            }
        }
    }
    cand.clear();
    cand.extend(heap.into_iter().map(|w| w.0));
}

fn pick(p: &SamplingParams, rng: &mut Rng, cand: &mut Vec<(f32, u32)>, logits: &[f32]) -> u32 {
    let k = if p.top_k == 0 {
        logits.len()
    } else {
        p.top_k.min(logits.len())
    };
    if k < logits.len() && k <= 256 {
        top_k_into(logits, k, cand);
    } else {
        cand.clear();
        cand.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, order);
            cand.truncate(k);
        }
    }
    cand.sort_unstable_by(order);
    let max = cand[0].0;
    let inv_t = 1.0 / p.temperature;
    let mut sum = 0f32;
    for c in cand.iter_mut() {
        c.0 = ((c.0 - max) * inv_t).exp();
        sum += c.0;
    }
    let mut keep = cand.len();
    if p.top_p < 1.0 {
        let mut acc = 0f32;
        for (i, c) in cand.iter().enumerate() {
            acc += c.0 / sum;
            if acc >= p.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        // cand[0] has weight 1 (its logit is the maximum).
        keep = cand[..keep]
            .iter()
            .take_while(|c| c.0 >= p.min_p)
            .count()
            .max(1);
    }
    let total: f32 = cand[..keep].iter().map(|c| c.0).sum();
    let mut r = rng.next_f32() * total;
    for c in &cand[..keep] {
        r -= c.0;
        if r <= 0.0 {
            return c.1;
        }
    }
    cand[keep - 1].1
}

fn logprobs(logits: &[f32], token: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = n.min(idx.len());
        let order = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
        idx.sort_unstable_by(order);
        top.extend(idx.into_iter().map(|i| (i, logits[i as usize] - lse)));
    }
    TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |l| l - lse),
        top,
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
    fn heap_top_k_keeps_the_same_tokens_as_selection() {
        let mut r = Rng::new(7);
        for round in 0..200 {
            let len = 1 + (r.next_f32() * 3000.0) as usize;
            // Few distinct values, so ties at the boundary are common.
            let levels = 1.0 + (round % 7) as f32 * 3.0;
            let logits: Vec<f32> = (0..len)
                .map(|_| (r.next_f32() * levels).floor() - 2.0)
                .collect();
            for k in [1usize, 2, 5, 40, 256] {
                if k >= len {
                    continue;
                }
                let mut a = Vec::new();
                top_k_into(&logits, k, &mut a);
                a.sort_unstable_by(order);
                let mut b: Vec<(f32, u32)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (l, i as u32))
                    .collect();
                b.select_nth_unstable_by(k - 1, order);
                b.truncate(k);
                b.sort_unstable_by(order);
                assert_eq!(a, b, "len {len}, k {k}");
            }
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
