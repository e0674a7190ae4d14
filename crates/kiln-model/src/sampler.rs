//! Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p.

/// Sampling parameters; `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Seed of the random stream.
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 0x5EED,
        }
    }
}

impl SamplerParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplerParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks ranges; the error names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || !(0.0..=100.0).contains(&self.temperature) {
            return Err(format!(
                "temperature must be between 0 and 100, got {}",
                self.temperature
            ));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// A small, fast, seedable generator (SplitMix64); same seed, same stream, on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The index of the largest value (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A sampler with its own random stream and reusable scratch space.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    rng: Rng,
    cand: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: SamplerParams) -> Self {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            cand: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = if p.top_k == 0 {
            self.cand.len()
        } else {
            p.top_k.min(self.cand.len())
        };
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k - 1, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);
        let max = self.cand[0].0;
        let inv_t = 1.0 / p.temperature;
        let mut sum = 0f32;
        for c in self.cand.iter_mut() {
            c.0 = ((c.0 - max) * inv_t).exp();
            sum += c.0;
        }
        // top-p over the sorted probabilities
        let mut keep = self.cand.len();
        if p.top_p < 1.0 {
            let mut acc = 0f32;
            for (i, c) in self.cand.iter().enumerate() {
                acc += c.0 / sum;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = self.cand[..keep].iter().map(|c| c.0).sum();
        let mut r = self.rng.next_f32() * total;
        for c in &self.cand[..keep] {
            r -= c.0;
            if r <= 0.0 {
                return c.1;
            }
        }
        self.cand[keep - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(SamplerParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_choices_and_top_k_respected() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let params = SamplerParams {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            seed: 7,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let mut top: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i as u32))
            .collect();
        top.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        let allowed: Vec<u32> = top[..5].iter().map(|c| c.1).collect();
        assert!(
            a.iter().all(|t| allowed.contains(t)),
            "{a:?} outside {allowed:?}"
        );
        assert!(a.iter().any(|&t| t != a[0]), "sampling at T=1 should vary");
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1e-6,
            seed: 1,
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[1.0, 5.0, 2.0]), 1);
        }
    }

    #[test]
    fn validation_names_parameter() {
        let bad = SamplerParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        let bad = SamplerParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("top_p"));
    }
}
