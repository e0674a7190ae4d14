//! Turning rows of logits into tokens where the logits are: penalties and biases,
//! temperature, top-k, top-p, min-p, seeded randomness and log-probabilities.
//!
//! This file is the reference every backend follows (the CPU backend runs it in place; the
//! CUDA backend runs the same steps in a kernel). The steps for one row:
//!
//! 1. Adjustments: each listed token's logit is divided by the repetition penalty (multiplied
//!    when negative) if it is marked as repeated, then `add` (logit bias minus frequency and
//!    presence penalties) is added. Only listed tokens are touched, so the host's work per
//!    token is the length of the list, never the vocabulary.
//! 2. Temperature 0 (or top-k 1): the largest logit, lowest id among equals.
//! 3. Otherwise a lower bound on the logit: at least the k-th largest logit (top-k; equal
//!    logits at the boundary all stay), at least the logit at which the probability mass at
//!    temperature T of the tokens above the top-k bound, taken from the most likely down,
//!    first reaches `top_p` (top-p), and at least `max + T ln(min_p)` (min-p).
//! 4. Among the tokens at or above the bound, the one with the largest `logit / T + g`, where
//!    `g` is Gumbel noise drawn from a hash of (seed, counter, token id): an exact draw from
//!    the softmax at temperature T over those tokens. The noise depends on nothing else, so a
//!    request's tokens for a given seed do not depend on which requests share its batch or on
//!    the device.
//! 5. Log-probabilities, when asked for, are taken at temperature 1 after the adjustments.

/// The largest Gumbel noise [`gumbel_at`] can give: `-ln(-ln(1 - 2^-24))` = 16.64, rounded up.
pub const GUMBEL_MAX: f32 = 17.5;

/// Most alternatives a row may ask log-probabilities for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How one row of logits becomes a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSampling {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: u32,
    /// Nucleus threshold in (0, 1]; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the best one (0: none).
    pub min_p: f32,
    /// Divisor of repeated tokens' positive logits (multiplier of negative ones); 1: none.
    pub repetition_penalty: f32,
    /// Seed of the request's random stream.
    pub seed: u64,
    /// Which draw of that stream this is (tokens sampled so far).
    pub counter: u64,
    /// This row's adjustments: `adjust.0..adjust.0 + adjust.1` of the step's list.
    pub adjust: (u32, u32),
    /// Report log-probabilities: the chosen token's and this many alternatives.
    pub logprobs: Option<u8>,
}

impl RowSampling {
    /// Greedy, no adjustments, no log-probabilities.
    pub const GREEDY: RowSampling = RowSampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        seed: 0,
        counter: 0,
        adjust: (0, 0),
        logprobs: None,
    };

    /// Whether the row picks the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }
}

/// A change to one token's logit before sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adjust {
    /// The token.
    pub token: u32,
    /// Apply the row's repetition penalty first.
    pub repeated: bool,
    /// Then add this (logit bias, minus frequency and presence penalties).
    pub add: f32,
}

/// The token chosen for one row, with log-probabilities when they were asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub token: u32,
    /// Its log-probability at temperature 1 after adjustments (NaN when not asked for).
    pub logprob: f32,
    /// How many of `top` are filled.
    pub n_top: u8,
    /// The most likely tokens with their log-probabilities, best first.
    pub top: [(u32, f32); MAX_TOP_LOGPROBS],
}

impl Sampled {
    /// A result holding just `token`.
    pub fn token(token: u32) -> Self {
        Sampled {
            token,
            logprob: f32::NAN,
            n_top: 0,
            top: [(0, 0.0); MAX_TOP_LOGPROBS],
        }
    }

    /// The alternatives that were filled in.
    pub fn top(&self) -> &[(u32, f32)] {
        &self.top[..self.n_top as usize]
    }
}

/// A draw's key: SplitMix64's finaliser over a mix of the request's seed and the draw's
/// counter, folded to 32 bits. Computed once per row; [`uniform_at`] spends 32-bit work per
/// token on it. The CUDA kernels compute the same bits.
#[inline]
pub fn draw_key(seed: u64, counter: u64) -> u32 {
    let mut z = seed ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z ^ (z >> 32)) as u32
}

/// 23 random bits of (key, token) as a uniform number in (0, 1) (exactly representable, so
/// never 0 or 1): MurmurHash3's 32-bit finaliser over the key and an odd multiple of
/// `token + 1`. Each step is a bijection, so no two tokens of a row share a value.
#[inline]
pub fn uniform_at(key: u32, token: u32) -> f32 {
    let mut h = key ^ token.wrapping_add(1).wrapping_mul(0x9E37_79B9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    ((h >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Gumbel noise for (key, token).
#[inline]
pub fn gumbel_at(key: u32, token: u32) -> f32 {
    -(-uniform_at(key, token).ln()).ln()
}

/// The index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    argmax_value(logits).0
}

/// [`argmax`] and the value there (negative infinity when no value beats it).
fn argmax_value(logits: &[f32]) -> (u32, f32) {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    (best as u32, bv)
}

/// Best first: higher logit, then lower token id.
fn order(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Reusable scratch space of the host sampler.
#[derive(Debug, Default)]
pub struct Scratch {
    cand: Vec<(f32, u32)>,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Ord32>>,
}

/// An f32 ordered by `total_cmp`.
#[derive(Debug, Clone, Copy)]
struct Ord32(f32);

impl PartialEq for Ord32 {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0).is_eq()
    }
}
impl Eq for Ord32 {}
impl PartialOrd for Ord32 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ord32 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// The k-th largest value of `row` (`1 <= k < row.len()`). Small k: one pass with a min-heap
/// of k (most of a large vocabulary costs one comparison); otherwise a selection.
fn kth_largest(row: &[f32], k: usize, s: &mut Scratch) -> f32 {
    if k <= 256 {
        let heap = &mut s.heap;
        heap.clear();
        for &l in row {
            if heap.len() < k {
                heap.push(std::cmp::Reverse(Ord32(l)));
            } else if let Some(mut w) = heap.peek_mut() {
                if l.total_cmp(&w.0 .0).is_gt() {
                    *w = std::cmp::Reverse(Ord32(l));
                }
            }
        }
        return heap.peek().map_or(f32::NEG_INFINITY, |w| w.0 .0);
    }
    s.cand.clear();
    s.cand
        .extend(row.iter().enumerate().map(|(i, &l)| (l, i as u32)));
    let (_, kth, _) = s.cand.select_nth_unstable_by(k - 1, order);
    kth.0
}

/// Samples one row in place (the adjustments are applied to `row`), following the steps in
/// this module's documentation.
pub fn sample_row(row: &mut [f32], p: &RowSampling, adjust: &[Adjust], s: &mut Scratch) -> Sampled {
    for a in adjust {
        if let Some(l) = row.get_mut(a.token as usize) {
            if a.repeated {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
            *l += a.add;
        }
    }
    let token = if p.is_greedy() || row.len() < 2 {
        argmax(row)
    } else {
        pick(row, p, s)
    };
    let mut out = Sampled::token(token);
    if let Some(n) = p.logprobs {
        fill_logprobs(row, n as usize, &mut out, s);
    }
    out
}

fn pick(row: &[f32], p: &RowSampling, s: &mut Scratch) -> u32 {
    let t = p.temperature;
    // The largest logit and the first token holding it, in one pass.
    let (top, max) = argmax_value(row);
    let mut lower = f32::NEG_INFINITY;
    let k = p.top_k as usize;
    if k > 0 && k < row.len() {
        lower = kth_largest(row, k, s);
    }
    if p.top_p < 1.0 {
        s.cand.clear();
        s.cand.extend(
            row.iter()
                .enumerate()
                .filter(|&(_, &l)| l >= lower)
                .map(|(i, &l)| (l, i as u32)),
        );
        s.cand.sort_unstable_by(order);
        let w = |l: f32| ((l - max) / t).exp() as f64;
        let total: f64 = s.cand.iter().map(|c| w(c.0)).sum();
        let target = p.top_p as f64 * total;
        let mut acc = 0f64;
        for c in &s.cand {
            acc += w(c.0);
            if acc >= target {
                lower = lower.max(c.0);
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        lower = lower.max(max + t * p.min_p.ln());
    }
    // The most likely token is always a candidate, so its score bounds the winner's from
    // below; the noise is at most GUMBEL_MAX, so tokens whose logit / T lies further below
    // cannot win and get no draw (the kernel takes the same shortcut; the winner is the same).
    let key = draw_key(p.seed, p.counter);
    let bound = max / t + gumbel_at(key, top);
    let skip = (bound - GUMBEL_MAX) * t;
    let mut best = (f32::NEG_INFINITY, u32::MAX);
    for (i, &l) in row.iter().enumerate() {
        if l >= skip && l >= lower && !l.is_nan() {
            let score = l / t + gumbel_at(key, i as u32);
            if score > best.0 || best.1 == u32::MAX {
                best = (score, i as u32);
            }
        }
    }
    if best.1 == u32::MAX {
        top
    } else {
        best.1
    }
}

fn fill_logprobs(row: &[f32], n: usize, out: &mut Sampled, s: &mut Scratch) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    out.logprob = row
        .get(out.token as usize)
        .map_or(f32::NEG_INFINITY, |l| l - lse);
    let n = n.min(MAX_TOP_LOGPROBS).min(row.len());
    if n == 0 {
        return;
    }
    s.cand.clear();
    s.cand
        .extend(row.iter().enumerate().map(|(i, &l)| (l, i as u32)));
    s.cand.select_nth_unstable_by(n - 1, order);
    s.cand.truncate(n);
    s.cand.sort_unstable_by(order);
    for (slot, c) in out.top.iter_mut().zip(&s.cand) {
        *slot = (c.1, c.0 - lse);
    }
    out.n_top = n as u8;
}

/// Samples `rows.len()` rows of `width` logits held in host memory, in place; the
/// adjustments of row `i` are `adjust[rows[i].adjust]`.
pub fn sample_rows(
    logits: &mut [f32],
    width: usize,
    rows: &[RowSampling],
    adjust: &[Adjust],
    out: &mut Vec<Sampled>,
    s: &mut Scratch,
) {
    out.clear();
    for (row, p) in logits.chunks_exact_mut(width.max(1)).zip(rows) {
        let (a0, n) = (p.adjust.0 as usize, p.adjust.1 as usize);
        let adj = adjust.get(a0..a0 + n).unwrap_or(&[]);
        out.push(sample_row(row, p, adj, s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> RowSampling {
        RowSampling {
            temperature: t,
            seed: 7,
            ..RowSampling::GREEDY
        }
    }

    fn draw(row: &[f32], p: RowSampling) -> u32 {
        let mut r = row.to_vec();
        sample_row(&mut r, &p, &[], &mut Scratch::default()).token
    }

    #[test]
    fn greedy_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(draw(&[0.0, 2.0, 2.0], params(0.0)), 1);
    }

    #[test]
    fn draws_follow_the_softmax() {
        // Probabilities at T = 1: exp(l) / sum over four tokens.
        let row = [1.0f32, 0.0, -1.0, 0.5];
        let z: f32 = row.iter().map(|l| l.exp()).sum();
        let mut hits = [0usize; 4];
        let n = 40_000;
        for c in 0..n {
            let p = RowSampling {
                counter: c,
                ..params(1.0)
            };
            hits[draw(&row, p) as usize] += 1;
        }
        for (i, &h) in hits.iter().enumerate() {
            let want = row[i].exp() / z;
            let got = h as f32 / n as f32;
            // Four standard deviations of a binomial proportion.
            let sd = (want * (1.0 - want) / n as f32).sqrt();
            assert!((got - want).abs() < 4.0 * sd, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn filters_restrict_the_choice() {
        let row = [5.0f32, 4.0, 0.0, -1.0, 4.0];
        for c in 0..300 {
            let base = RowSampling {
                counter: c,
                ..params(1.0)
            };
            let t = draw(&row, RowSampling { top_k: 2, ..base });
            assert!(t == 0 || t == 1 || t == 4, "top-k 2 keeps the tie at 4.0");
            let t = draw(&row, RowSampling { min_p: 0.2, ..base });
            assert!(t != 2 && t != 3, "exp(-5) is below min_p 0.2");
            let t = draw(&row, RowSampling { top_p: 0.5, ..base });
            assert_eq!(t, 0, "the best token alone holds over half the mass");
        }
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let row: Vec<f32> = (0..500).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| -> Vec<u32> {
            (0..50)
                .map(|c| {
                    draw(
                        &row,
                        RowSampling {
                            seed,
                            counter: c,
                            ..params(1.0)
                        },
                    )
                })
                .collect()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn adjustments_apply_penalties_and_bias() {
        let mut row = vec![2.0f32, -1.0, 1.9, 0.0];
        let adj = [
            Adjust {
                token: 0,
                repeated: true,
                add: 0.0,
            },
            Adjust {
                token: 1,
                repeated: true,
                add: 0.5,
            },
        ];
        let p = RowSampling {
            repetition_penalty: 2.0,
            adjust: (0, 2),
            ..RowSampling::GREEDY
        };
        let s = sample_row(&mut row, &p, &adj, &mut Scratch::default());
        assert_eq!(row, vec![1.0, -1.5, 1.9, 0.0]);
        assert_eq!(s.token, 2);
        let mut row = vec![0.0f32; 4];
        let adj = [Adjust {
            token: 3,
            repeated: false,
            add: 100.0,
        }];
        let p = RowSampling {
            adjust: (0, 1),
            ..params(1.0)
        };
        assert_eq!(
            sample_row(&mut row, &p, &adj, &mut Scratch::default()).token,
            3
        );
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let mut row: Vec<f32> = (0..50)
            .map(|i| ((i * 7919) % 23) as f32 * 0.25 - 2.0)
            .collect();
        let orig = row.clone();
        let p = RowSampling {
            logprobs: Some(5),
            ..RowSampling::GREEDY
        };
        let s = sample_row(&mut row, &p, &[], &mut Scratch::default());
        assert_eq!(s.top().len(), 5);
        assert_eq!(s.top()[0].0, s.token);
        assert!(s.top().windows(2).all(|w| w[0].1 >= w[1].1));
        let total: f32 = orig
            .iter()
            .map(|&x| (x - orig[s.token as usize] + s.logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
    }

    #[test]
    fn kth_largest_by_heap_equals_selection() {
        let mut s = Scratch::default();
        for len in [2usize, 3, 50, 1000, 5000] {
            // Few distinct values, so ties at the boundary are common.
            let row: Vec<f32> = (0..len).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            for k in [1usize, 2, 5, 40, 256, 257, 700] {
                if k >= len {
                    continue;
                }
                let mut v = row.clone();
                v.sort_by(|a, b| b.total_cmp(a));
                assert_eq!(kth_largest(&row, k, &mut s), v[k - 1], "len {len}, k {k}");
            }
        }
    }

    #[test]
    fn uniform_is_inside_the_open_interval_and_noise_below_its_bound() {
        for c in 0..10_000u64 {
            let u = uniform_at(draw_key(c.wrapping_mul(31), c), (c % 977) as u32);
            assert!(u > 0.0 && u < 1.0);
        }
        let largest = ((1u64 << 23) - 1) as f32 + 0.5;
        let u = largest * (1.0 / 8_388_608.0);
        assert!(u < 1.0 && -(-u.ln()).ln() < GUMBEL_MAX);
    }
}
