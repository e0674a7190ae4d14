//! Turning rows of logits into tokens where the logits are: penalties and biases,
//! temperature, top-k, top-p, min-p, seeded randomness and log-probabilities.
//!
//! This file is the reference every backend follows (the CPU backend runs it in place; the
//! CUDA backend runs the same steps in a kernel). The steps for one row:
//!
//! 0. A mask, when the row has one (constrained decoding): every token whose bit is clear
//!    gets a logit of negative infinity, so nothing below can choose it.
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
    /// The tokens this row may choose: row `m` of the step's masks, [`mask_words`] words
    /// of which bit `t % 32` of word `t / 32` allows token `t`; `None` allows every token.
    pub mask: Option<u32>,
}

/// Words of one row's mask for a vocabulary of `width` tokens.
pub fn mask_words(width: usize) -> usize {
    width.div_ceil(32)
}

/// Row `m`'s mask of the step's `masks` (empty when they do not hold it).
pub fn mask_row(masks: &[u32], width: usize, m: Option<u32>) -> Option<&[u32]> {
    let w = mask_words(width);
    m.map(|m| {
        masks
            .get(m as usize * w..(m as usize + 1) * w)
            .unwrap_or(&[])
    })
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
        mask: None,
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
    uniform_of(bits_at(key, token))
}

/// The 23 bits [`uniform_at`] turns into a number.
#[inline]
fn bits_at(key: u32, token: u32) -> u32 {
    let mut h = key ^ token.wrapping_add(1).wrapping_mul(0x9E37_79B9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    h >> 9
}

#[inline]
fn uniform_of(bits: u32) -> f32 {
    (bits as f32 + 0.5) * (1.0 / 8_388_608.0)
}

#[inline]
fn gumbel_of(bits: u32) -> f32 {
    -(-uniform_of(bits).ln()).ln()
}

/// Gumbel noise for (key, token).
#[inline]
pub fn gumbel_at(key: u32, token: u32) -> f32 {
    gumbel_of(bits_at(key, token))
}

/// A bucket of [`GUMBEL_CEIL`] spans the values of [`bits_at`] that differ in this many low bits.
const BUCKET_SHIFT: u32 = 11;

/// For each bucket of 2^11 consecutive values of [`bits_at`] (4,096 of them), a number at
/// least the Gumbel noise of any value in it: the noise of its largest value (the noise grows
/// with the value) plus a margin for the logarithm's rounding. A token whose score could not
/// beat the best one even with its bucket's ceiling gets no logarithms.
static GUMBEL_CEIL: std::sync::LazyLock<Box<[f32]>> = std::sync::LazyLock::new(|| {
    (0..1u32 << (23 - BUCKET_SHIFT))
        .map(|b| {
            let g = gumbel_of((b << BUCKET_SHIFT) | ((1 << BUCKET_SHIFT) - 1));
            g + 1e-4 * (1.0 + g.abs())
        })
        .collect()
});

/// The index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    argmax_value(logits).0
}

/// Values looked at together by the scans below: wide enough for the compiler to use whole
/// vector registers, so a chunk that cannot matter costs a few instructions.
const CHUNK: usize = 16;

/// Whether every value of `c` is below `bound` (NaN is not below anything, so a chunk with
/// one is never skipped: the exact scalar test then decides).
#[inline]
fn all_below(c: &[f32], bound: f32) -> bool {
    c.iter().fold(true, |a, &l| a & (l < bound))
}

/// The largest value of `row` (NaN ignored: it never wins `>`; negative infinity for an
/// empty row), in `CHUNK` lanes the compiler vectorizes.
#[inline(always)]
fn largest(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; CHUNK];
    let chunks = row.chunks_exact(CHUNK);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            if v > *m {
                *m = v;
            }
        }
    }
    for &v in tail {
        if v > lanes[0] {
            lanes[0] = v;
        }
    }
    lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// [`argmax`] and the value there (negative infinity when no value beats it). One pass over
/// blocks of `ARGMAX_BLOCK` values: each block's largest value in `CHUNK` lanes the compiler
/// vectorizes (NaN never replaces a lane's maximum, as it never wins `>`), the first block
/// whose largest beats every earlier block's kept; then the first value of that block equal
/// to it: the same token as one pass with `>` over every value (the second of -0 and +0 does
/// not beat the first, and they compare equal here too). The row is read once, where finding
/// the largest value and then its first place read it up to twice.
#[inline(always)]
fn argmax_value(logits: &[f32]) -> (u32, f32) {
    let (mut max, mut at) = (f32::NEG_INFINITY, usize::MAX);
    for (bi, b) in logits.chunks(ARGMAX_BLOCK).enumerate() {
        let m = largest(b);
        if m > max {
            (max, at) = (m, bi);
        }
    }
    if at == usize::MAX {
        return (0, f32::NEG_INFINITY);
    }
    let base = at * ARGMAX_BLOCK;
    let i = base
        + logits[base..]
            .iter()
            .take(ARGMAX_BLOCK)
            .position(|&v| v == max)
            .unwrap_or(0);
    (i as u32, logits[i])
}

/// Values [`argmax_value`] takes the largest of at once: 16 chunks.
const ARGMAX_BLOCK: usize = 16 * CHUNK;

/// Sorts candidates gathered in token order by [`order`] (best first): the same sequence as
/// `sort_unstable_by(order)` (a strict order: no two candidates are equal), by a stable
/// radix sort on the logit's `total_cmp` rank, four passes of a byte, where there are many
/// (a top-p row without top-k holds the whole vocabulary: its draw took 1.34 to 1.39 ms with
/// 49,152 pairs sorted by comparison, 0.57 to 0.65 ms so; docs/PERF.md, forty-second
/// session).
fn sort_best_first(cand: &mut Vec<(f32, u32)>, spare: &mut Vec<(f32, u32)>) {
    if cand.len() < 1024 {
        cand.sort_unstable_by(order);
        return;
    }
    // Ascending in this key is descending in `total_cmp`; stability keeps the lower id first
    // among equal logits, as the ids ascend in the input.
    let key = |l: f32| {
        let b = l.to_bits();
        !(if b >> 31 == 1 { !b } else { b | 0x8000_0000 })
    };
    spare.clear();
    spare.resize(cand.len(), (0.0, 0));
    for shift in [0u32, 8, 16, 24] {
        let mut at = [0usize; 256];
        for c in cand.iter() {
            at[(key(c.0) >> shift) as usize & 255] += 1;
        }
        let mut sum = 0;
        for a in at.iter_mut() {
            (*a, sum) = (sum, sum + *a);
        }
        for &c in cand.iter() {
            let d = (key(c.0) >> shift) as usize & 255;
            spare[at[d]] = c;
            at[d] += 1;
        }
        std::mem::swap(cand, spare);
    }
}

/// Best first: higher logit, then lower token id.
fn order(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Reusable scratch space of the host sampler.
#[derive(Debug, Default)]
pub struct Scratch {
    cand: Vec<(f32, u32)>,
    /// [`sort_best_first`]'s second buffer.
    spare: Vec<(f32, u32)>,
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
/// of k, where a chunk wholly below the heap's least value is passed over (most of a large
/// vocabulary); otherwise a selection.
fn kth_largest(row: &[f32], k: usize, s: &mut Scratch) -> f32 {
    if k <= 256 {
        let heap = &mut s.heap;
        heap.clear();
        for c in row.chunks(CHUNK) {
            // A value below the least kept one (`<`, so neither is NaN) is also below it in
            // `total_cmp`'s order, and would not enter the heap.
            if heap.len() == k && heap.peek().is_some_and(|w| all_below(c, w.0 .0)) {
                continue;
            }
            for &l in c {
                if heap.len() < k {
                    heap.push(std::cmp::Reverse(Ord32(l)));
                } else if let Some(mut w) = heap.peek_mut() {
                    if l.total_cmp(&w.0 .0).is_gt() {
                        *w = std::cmp::Reverse(Ord32(l));
                    }
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

/// Samples one row in place (the mask and the adjustments are applied to `row`), following
/// the steps in this module's documentation. A mask shorter than the row bans the tokens it
/// does not cover.
pub fn sample_row(
    row: &mut [f32],
    p: &RowSampling,
    mask: Option<&[u32]>,
    adjust: &[Adjust],
    s: &mut Scratch,
) -> Sampled {
    if let Some(m) = mask {
        for (i, c) in row.chunks_mut(32).enumerate() {
            let bits = m.get(i).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (j, l) in c.iter_mut().enumerate() {
                if (bits >> j) & 1 == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
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
        for (ci, c) in row.chunks(CHUNK).enumerate() {
            if all_below(c, lower) {
                continue;
            }
            s.cand.extend(
                c.iter()
                    .enumerate()
                    .filter(|&(_, &l)| l >= lower)
                    .map(|(i, &l)| (l, (ci * CHUNK + i) as u32)),
            );
        }
        sort_best_first(&mut s.cand, &mut s.spare);
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
    if p.top_p < 1.0 {
        // Every token at or above both bounds is among the candidates (`lower` only rose
        // since they were gathered), best first: no second pass over the row.
        return best_of_sorted(&s.cand, key, t, skip, lower).map_or(top, |b| b.1);
    }
    gumbel_best(row, key, t, skip, lower).map_or(top, |b| b.1)
}

/// [`gumbel_best`] over candidates sorted best first (by [`order`]) that hold every token of
/// the row at or above both bounds: the same token (the largest score, the lowest id on
/// ties, as the scan in token order keeps the first). Stops at the first candidate below a
/// bound, or whose score cannot reach the best even with the largest noise.
fn best_of_sorted(
    cand: &[(f32, u32)],
    key: u32,
    t: f32,
    skip: f32,
    lower: f32,
) -> Option<(f32, u32)> {
    let mut best: Option<(f32, u32)> = None;
    for &(l, i) in cand {
        if !(l >= skip && l >= lower) {
            break;
        }
        // Sums round monotonically: below the best with the largest noise, below it with any.
        if best.is_some_and(|b| l / t + GUMBEL_MAX < b.0) {
            break;
        }
        let score = l / t + gumbel_at(key, i);
        if best.is_none_or(|b| score > b.0 || (score == b.0 && i < b.1)) {
            best = Some((score, i));
        }
    }
    best
}

/// Buckets of [`GUMBEL_CEIL`].
const BUCKETS: usize = 1 << (23 - BUCKET_SHIFT);

/// Which tokens of a whole chunk are at or above both `skip` and `lower` (never NaN): bit `j`
/// for token `j`, token by token (vector versions in `x86`).
fn chunk_above_plain(c: &[f32; CHUNK], skip: f32, lower: f32) -> u16 {
    let mut m = 0;
    for (j, &l) in c.iter().enumerate() {
        m |= u16::from(l >= skip && l >= lower) << j;
    }
    m
}

/// Which tokens of a whole chunk (its first token's id `base`) have a score bound (`logit /
/// t` plus the ceiling of the token's noise bucket) above `best`: bit `j` for token `j` (NaN
/// logits never have), token by token (vector versions in `x86`: the same operations on each
/// token, so the same bits).
fn chunk_test_plain(
    c: &[f32; CHUNK],
    base: u32,
    key: u32,
    t: f32,
    best: f32,
    ceil: &[f32; BUCKETS],
) -> u16 {
    let mut m = 0;
    for (j, &l) in c.iter().enumerate() {
        let bits = bits_at(key, base + j as u32);
        m |= u16::from(l / t + ceil[(bits >> BUCKET_SHIFT) as usize & (BUCKETS - 1)] > best) << j;
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BUCKETS, BUCKET_SHIFT, CHUNK};
    use std::arch::x86_64::*;

    /// [`super::bits_at`] of 16 (AVX-512) or 8 (AVX2) tokens at once.
    macro_rules! bits {
        ($tok:expr, $key:expr, $set1:ident, $mul:ident, $xor:ident, $srli:ident, $add:ident) => {{
            let h = $xor(
                $key,
                $mul($add($tok, $set1(1)), $set1(0x9E37_79B9u32 as i32)),
            );
            let h = $mul($xor(h, $srli::<16>(h)), $set1(0x85EB_CA6Bu32 as i32));
            let h = $mul($xor(h, $srli::<13>(h)), $set1(0xC2B2_AE35u32 as i32));
            $srli::<9>($xor(h, $srli::<16>(h)))
        }};
    }

    /// [`super::chunk_above_plain`] with AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chunk_above_avx512(c: &[f32; CHUNK], skip: f32, lower: f32) -> u16 {
        // SAFETY: the chunk holds 16 values.
        let l = unsafe { _mm512_loadu_ps(c.as_ptr()) };
        _mm512_cmp_ps_mask::<_CMP_GE_OQ>(l, _mm512_set1_ps(skip))
            & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(l, _mm512_set1_ps(lower))
    }

    /// [`super::chunk_above_plain`] with AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn chunk_above_avx2(c: &[f32; CHUNK], skip: f32, lower: f32) -> u16 {
        let mut m = 0u16;
        for half in 0..CHUNK / 8 {
            // SAFETY: 8 values from `8 * half` of 16.
            let l = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * half)) };
            let ge = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GE_OQ>(l, _mm256_set1_ps(skip)),
                _mm256_cmp_ps::<_CMP_GE_OQ>(l, _mm256_set1_ps(lower)),
            );
            m |= (_mm256_movemask_ps(ge) as u16) << (8 * half);
        }
        m
    }

    /// [`super::chunk_test_plain`] with AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chunk_test_avx512(
        c: &[f32; CHUNK],
        base: u32,
        key: u32,
        t: f32,
        best: f32,
        ceil: &[f32; BUCKETS],
    ) -> u16 {
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let tok = _mm512_add_epi32(_mm512_set1_epi32(base as i32), lanes);
        let bits = bits!(
            tok,
            _mm512_set1_epi32(key as i32),
            _mm512_set1_epi32,
            _mm512_mullo_epi32,
            _mm512_xor_si512,
            _mm512_srli_epi32,
            _mm512_add_epi32
        );
        let bucket = _mm512_srli_epi32::<{ BUCKET_SHIFT }>(bits);
        // SAFETY: every bucket is below BUCKETS (23 bits shifted right by BUCKET_SHIFT);
        // the chunk holds 16 values.
        unsafe {
            let top = _mm512_i32gather_ps::<4>(bucket, ceil.as_ptr().cast());
            let l = _mm512_loadu_ps(c.as_ptr());
            let bound = _mm512_add_ps(_mm512_div_ps(l, _mm512_set1_ps(t)), top);
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(bound, _mm512_set1_ps(best))
        }
    }

    /// [`super::chunk_test_plain`] with AVX2, 8 tokens at a time.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn chunk_test_avx2(
        c: &[f32; CHUNK],
        base: u32,
        key: u32,
        t: f32,
        best: f32,
        ceil: &[f32; BUCKETS],
    ) -> u16 {
        let mut m = 0u16;
        for half in 0..CHUNK / 8 {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let tok = _mm256_add_epi32(_mm256_set1_epi32((base + 8 * half as u32) as i32), lanes);
            let bits = bits!(
                tok,
                _mm256_set1_epi32(key as i32),
                _mm256_set1_epi32,
                _mm256_mullo_epi32,
                _mm256_xor_si256,
                _mm256_srli_epi32,
                _mm256_add_epi32
            );
            let bucket = _mm256_srli_epi32::<{ BUCKET_SHIFT as i32 }>(bits);
            // SAFETY: as in the AVX-512 version, 8 values from `8 * half`.
            unsafe {
                let top = _mm256_i32gather_ps::<4>(ceil.as_ptr(), bucket);
                let l = _mm256_loadu_ps(c.as_ptr().add(8 * half));
                let bound = _mm256_add_ps(_mm256_div_ps(l, _mm256_set1_ps(t)), top);
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(bound, _mm256_set1_ps(best));
                m |= (_mm256_movemask_ps(gt) as u16) << (8 * half);
            }
        }
        m
    }

    /// `$name`: [`super::gumbel_best`] with the chunk tests `$above` and `$test`, compiled
    /// for `$features` (the caller's promise that the CPU has them).
    macro_rules! gumbel_best_for {
        ($(#[$doc:meta])* $name:ident, $features:literal, $above:ident, $test:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(
                row: &[f32],
                key: u32,
                t: f32,
                skip: f32,
                lower: f32,
            ) -> Option<(f32, u32)> {
                // SAFETY (both): the caller's.
                super::gumbel_best_with(
                    row,
                    (key, t, skip, lower),
                    |c, s, l| unsafe { $above(c, s, l) },
                    |c, b, k, t, best, ceil| unsafe { $test(c, b, k, t, best, ceil) },
                )
            }
        };
    }

    gumbel_best_for!(
        /// [`super::gumbel_best`] with AVX-512's chunk tests.
        ///
        /// # Safety
        /// The CPU has AVX-512 F, POPCNT and BMI1.
        gumbel_best_avx512,
        "avx512f,popcnt,bmi1",
        chunk_above_avx512,
        chunk_test_avx512
    );
    gumbel_best_for!(
        /// [`super::gumbel_best`] with AVX2's chunk tests.
        ///
        /// # Safety
        /// The CPU has AVX2, POPCNT and BMI1.
        gumbel_best_avx2,
        "avx2,popcnt,bmi1",
        chunk_above_avx2,
        chunk_test_avx2
    );
}

/// Step 4: the largest `logit / t` plus noise among the tokens of `row` at or above both
/// `skip` and `lower` (and not NaN), the first on ties, with its score; `None` when there is
/// no such token.
///
/// Chunk by chunk: which tokens are at or above both bounds, for the whole chunk at once
/// ([`chunk_above_plain`]); where more than two are, which of them have a score bound above
/// the best score before the chunk ([`chunk_test_plain`]: the hash and the ceiling's lookup
/// for the whole chunk; the best only grows along the chunk, so the token-by-token test would
/// pass over the others too); then the tokens left, one by one. Both chunk tests run in vector
/// lanes where the CPU has AVX-512 or AVX2. `kernels -- 1 sample` at T 0.7: a flat row (a
/// fifth of the vocabulary within `17.5 T` of its largest logit) 138 to 158 us token by token,
/// 25 to 29 us so; a peaked row 15.0 to 17.1 us, 16.2 to 17.8 (docs/PERF.md, forty-first
/// session, with real rows of the default model).
fn gumbel_best(row: &[f32], key: u32, t: f32, skip: f32, lower: f32) -> Option<(f32, u32)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") && std::arch::is_x86_feature_detected!("bmi1")
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features.
            return unsafe { x86::gumbel_best_avx512(row, key, t, skip, lower) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { x86::gumbel_best_avx2(row, key, t, skip, lower) };
        }
    }
    gumbel_best_with(
        row,
        (key, t, skip, lower),
        chunk_above_plain,
        chunk_test_plain,
    )
}

/// [`gumbel_best`] with the chunk tests given (`(key, t, skip, lower)` as there).
#[inline(always)]
fn gumbel_best_with(
    row: &[f32],
    (key, t, skip, lower): (u32, f32, f32, f32),
    above: impl Fn(&[f32; CHUNK], f32, f32) -> u16,
    test: impl Fn(&[f32; CHUNK], u32, u32, f32, f32, &[f32; BUCKETS]) -> u16,
) -> Option<(f32, u32)> {
    let ceil: &[f32; BUCKETS] = (&**GUMBEL_CEIL)
        .try_into()
        .expect("a ceiling for each bucket");
    let mut best = (f32::NEG_INFINITY, u32::MAX);
    for (ci, c) in row.chunks(CHUNK).enumerate() {
        let base = ci * CHUNK;
        let Ok(c) = <&[f32; CHUNK]>::try_from(c) else {
            // The last, partial chunk: token by token.
            for (j, &l) in c.iter().enumerate() {
                if l >= skip && l >= lower {
                    consider(&mut best, l, (base + j) as u32, key, t, ceil);
                }
            }
            continue;
        };
        let mut maybe = above(c, skip, lower);
        if maybe.count_ones() > 2 && best.1 != u32::MAX {
            maybe &= test(c, base as u32, key, t, best.0, ceil);
        }
        while maybe != 0 {
            let j = maybe.trailing_zeros() as usize;
            maybe &= maybe - 1;
            consider(&mut best, c[j], (base + j) as u32, key, t, ceil);
        }
    }
    (best.1 != u32::MAX).then_some(best)
}

/// Token `i` (logit `l`, at or above the row's bounds, not NaN) against the best so far.
#[inline(always)]
fn consider(best: &mut (f32, u32), l: f32, i: u32, key: u32, t: f32, ceil: &[f32; BUCKETS]) {
    let bits = bits_at(key, i);
    // Its score is at most `l / t` plus its bucket's ceiling (sums round monotonically): if
    // that cannot beat the best, neither can the score.
    if best.1 != u32::MAX && l / t + ceil[(bits >> BUCKET_SHIFT) as usize & (BUCKETS - 1)] <= best.0
    {
        return;
    }
    let score = l / t + gumbel_of(bits);
    if score > best.0 || best.1 == u32::MAX {
        *best = (score, i);
    }
}

/// `2^f` for `f` in [-0.5, 0.5]: the coefficients of a degree-6 polynomial, highest first
/// (relative error about 2e-7). The CPU's vector `exp` uses them too.
pub const EXP2_POLY: [f32; 7] = [
    1.535_336_2e-4,
    1.339_887_4e-3,
    9.618_437e-3,
    5.550_332_4e-2,
    2.402_264_8e-1,
    6.931_472e-1,
    1.0,
];

/// `e^x` without a library call, so a loop of them vectorizes: `2^(x log2 e)` split into a
/// whole power (set in the exponent bits) and a fraction in [-0.5, 0.5] (a degree-6
/// polynomial, relative error about 2e-7); `x` clamped to +-87, where `e^x` stays a normal
/// number (`e^-inf` gives 1.6e-38 instead of 0, nothing beside a sum of at least 1).
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    let x = x.clamp(-87.0, 87.0);
    let t = x * std::f32::consts::LOG2_E;
    // Round to nearest by the 1.5 * 2^23 trick (|t| < 126): the sum's low bits are then
    // the whole number itself, read without a conversion (which would not vectorize).
    let big = t + 12_582_912.0;
    let k = big - 12_582_912.0;
    let ki = (big.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let f = t - k;
    let mut p = EXP2_POLY[0];
    for &c in &EXP2_POLY[1..] {
        p = p * f + c;
    }
    p * f32::from_bits((ki.wrapping_add(127) as u32) << 23)
}

/// `ln(sum(e^l))` over a row: the largest logit (NaN ignored) plus the log of the sum of
/// `e^(l - max)` in 16 running sums added in a fixed order, so every instruction set gives
/// the same bits.
#[inline(always)]
fn log_sum_exp_body(row: &[f32]) -> f32 {
    let max = largest(row);
    let chunks = row.chunks_exact(CHUNK);
    let tail = chunks.remainder();
    let mut acc = [0f32; CHUNK];
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp_poly(v - max);
        }
    }
    for (a, &v) in acc.iter_mut().zip(tail) {
        *a += exp_poly(v - max);
    }
    let mut w = CHUNK;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    max + acc[0].ln()
}

/// [`log_sum_exp_body`], with 512-bit vectors where the CPU has them (the same results).
fn log_sum_exp(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        fn wide(row: &[f32]) -> f32 {
            log_sum_exp_body(row)
        }
        // SAFETY: the CPU has AVX-512 F (checked above).
        return unsafe { wide(row) };
    }
    log_sum_exp_body(row)
}

fn fill_logprobs(row: &[f32], n: usize, out: &mut Sampled, s: &mut Scratch) {
    let lse = log_sum_exp(row);
    out.logprob = row
        .get(out.token as usize)
        .map_or(f32::NEG_INFINITY, |l| l - lse);
    let n = n.min(MAX_TOP_LOGPROBS).min(row.len());
    if n == 0 {
        return;
    }
    top_n(row, n, &mut s.cand);
    for (slot, c) in out.top.iter_mut().zip(&s.cand) {
        *slot = (c.1, c.0 - lse);
    }
    out.n_top = n as u8;
}

/// The `n` best tokens of `row` by [`order`] (higher logit in `total_cmp`'s order, then lower
/// id), best first, into `top`, in one pass: the tokens kept so far sorted, a token entering
/// only where it beats the last (a later token of an equal logit never does), and a chunk
/// wholly below the last one's logit passed over (`<`: never where a NaN is).
#[inline(never)]
fn top_n(row: &[f32], n: usize, top: &mut Vec<(f32, u32)>) {
    top.clear();
    if n == 0 {
        return;
    }
    for (ci, c) in row.chunks(CHUNK).enumerate() {
        if top.len() == n && all_below(c, top[n - 1].0) {
            continue;
        }
        for (j, &l) in c.iter().enumerate() {
            let e = (l, (ci * CHUNK + j) as u32);
            if top.len() == n {
                if order(&e, &top[n - 1]).is_ge() {
                    continue;
                }
                top.pop();
            }
            let at = top.partition_point(|x| order(x, &e).is_lt());
            top.insert(at, e);
        }
    }
}

/// Samples `rows.len()` rows of `width` logits held in host memory, in place; the
/// adjustments of row `i` are `adjust[rows[i].adjust]`, its mask row `rows[i].mask` of
/// `masks`.
pub fn sample_rows(
    logits: &mut [f32],
    width: usize,
    rows: &[RowSampling],
    adjust: &[Adjust],
    masks: &[u32],
    out: &mut Vec<Sampled>,
    s: &mut Scratch,
) {
    out.clear();
    for (row, p) in logits.chunks_exact_mut(width.max(1)).zip(rows) {
        let (a0, n) = (p.adjust.0 as usize, p.adjust.1 as usize);
        let adj = adjust.get(a0..a0 + n).unwrap_or(&[]);
        let mask = mask_row(masks, width, p.mask);
        out.push(sample_row(row, p, mask, adj, s));
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
        sample_row(&mut r, &p, None, &[], &mut Scratch::default()).token
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
        let s = sample_row(&mut row, &p, None, &adj, &mut Scratch::default());
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
            sample_row(&mut row, &p, None, &adj, &mut Scratch::default()).token,
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
        let s = sample_row(&mut row, &p, None, &[], &mut Scratch::default());
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

    /// The next number of a xorshift generator.
    fn xorshift(x: &mut u32) -> u32 {
        *x ^= *x << 13;
        *x ^= *x >> 17;
        *x ^= *x << 5;
        *x
    }

    /// Rows with what the chunked scans must get right: ties, both zeros, infinities, NaN,
    /// lengths that leave a partial chunk, and the maximum in every position of a chunk.
    fn awkward_rows() -> Vec<Vec<f32>> {
        let mut rows = Vec::new();
        let mut x = 0x2545_F491u32;
        let mut next = move || xorshift(&mut x);
        for len in [1usize, 2, 15, 16, 17, 33, 100, 1000, 4099] {
            for kind in 0..6 {
                let row: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = next();
                        match (kind, r % 97) {
                            (1, 0) => f32::NAN,
                            (2, 0) => -0.0,
                            (2, 1) => 0.0,
                            (3, 0) => f32::INFINITY,
                            (3, 1) => f32::NEG_INFINITY,
                            (4, _) => (r % 5) as f32 - 20.0,
                            (5, _) => f32::NEG_INFINITY,
                            _ => (r % 10_000) as f32 * 1e-3 - 5.0,
                        }
                    })
                    .collect();
                rows.push(row);
            }
        }
        rows.push(vec![f32::NAN; 40]);
        rows.push(vec![-0.0, 0.0, 0.0, -0.0]);
        // Zeros of both signs as the largest values, in different blocks of 256, and a NaN
        // opening the block that holds the largest.
        for (a, b) in [(300, 500), (10, 400)] {
            let mut row = vec![-1.0f32; 600];
            row[a] = if a == 300 { -0.0 } else { 0.0 };
            row[b] = if a == 300 { 0.0 } else { -0.0 };
            rows.push(row);
        }
        let mut row = vec![-1.0f32; 700];
        row[512] = f32::NAN;
        row[600] = 3.0;
        rows.push(row);
        rows
    }

    /// `row`'s tokens as (logit, id) pairs, sorted by [`order`] (the reference).
    fn by_order(row: &[f32]) -> Vec<(f32, u32)> {
        let mut v: Vec<(f32, u32)> = row
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i as u32))
            .collect();
        v.sort_by(order);
        v
    }

    /// Pairs as bits, so that NaN and -0 compare exactly.
    fn bits(v: &[(f32, u32)]) -> Vec<(u32, u32)> {
        v.iter().map(|c| (c.0.to_bits(), c.1)).collect()
    }

    #[test]
    fn radix_order_is_the_comparison_order() {
        let mut rows = awkward_rows();
        let mut x = 0x2545_F491u32;
        rows.push(
            (0..49_152)
                .map(|_| (xorshift(&mut x) % 300) as f32 * 0.25 - 30.0)
                .collect(),
        );
        rows.push(
            (0..5_000)
                .map(|_| f32::from_bits(xorshift(&mut x)))
                .collect(),
        );
        let (mut got, mut spare) = (Vec::new(), Vec::new());
        for row in &rows {
            got.clear();
            got.extend(row.iter().enumerate().map(|(i, &l)| (l, i as u32)));
            sort_best_first(&mut got, &mut spare);
            assert_eq!(bits(&got), bits(&by_order(row)), "row of {}", row.len());
        }
    }

    #[test]
    fn top_n_is_the_sorted_selection() {
        let mut rows = awkward_rows();
        let mut x = 0x9E37_79B9u32;
        // A vocabulary's size with many equal logits, and a peaked one.
        rows.push(
            (0..49_152)
                .map(|_| (xorshift(&mut x) % 50) as f32)
                .collect(),
        );
        rows.push(
            (0..49_152)
                .map(|i| {
                    if i % 7919 == 3 {
                        9.0
                    } else {
                        (xorshift(&mut x) % 1000) as f32 * 1e-3
                    }
                })
                .collect(),
        );
        let mut top = Vec::new();
        for row in &rows {
            let want = by_order(row);
            for n in 1..=MAX_TOP_LOGPROBS.min(row.len()) {
                top_n(row, n, &mut top);
                assert_eq!(bits(&top), bits(&want[..n]), "n {n}, row of {}", row.len());
            }
        }
    }

    #[test]
    fn chunked_argmax_is_the_first_largest() {
        for row in awkward_rows() {
            let mut best = (0u32, f32::NEG_INFINITY);
            for (i, &v) in row.iter().enumerate() {
                if v > best.1 {
                    best = (i as u32, v);
                }
            }
            let got = argmax_value(&row);
            assert_eq!(got.0, best.0, "{row:?}");
            assert_eq!(got.1.to_bits(), best.1.to_bits(), "{row:?}");
        }
    }

    /// Step 4 on every instruction set this CPU has (the chunk tests token by token, with AVX2,
    /// with AVX-512): the best token and its score of a scan of every token, bit for bit.
    #[test]
    fn every_chunk_test_draws_what_a_scan_of_every_token_draws() {
        type Best = fn(&[f32], u32, f32, f32, f32) -> Option<(f32, u32)>;
        let mut variants: Vec<(&str, Best)> = vec![("plain", |r, k, t, s, l| {
            gumbel_best_with(r, (k, t, s, l), chunk_above_plain, chunk_test_plain)
        })];
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| match f {
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                _ => std::arch::is_x86_feature_detected!("avx512f"),
            } && std::arch::is_x86_feature_detected!("popcnt")
                && std::arch::is_x86_feature_detected!("bmi1");
            if has("avx2") {
                // SAFETY: the CPU has the features.
                variants.push(("avx2", |r, k, t, s, l| unsafe {
                    x86::gumbel_best_avx2(r, k, t, s, l)
                }));
            }
            if has("avx512") {
                // SAFETY: as above.
                variants.push(("avx512", |r, k, t, s, l| unsafe {
                    x86::gumbel_best_avx512(r, k, t, s, l)
                }));
            }
        }
        fn scan(row: &[f32], key: u32, t: f32, skip: f32, lower: f32) -> Option<(f32, u32)> {
            let mut best = (f32::NEG_INFINITY, u32::MAX);
            for (i, &l) in row.iter().enumerate() {
                if l >= skip && l >= lower && !l.is_nan() {
                    let score = l / t + gumbel_at(key, i as u32);
                    if score > best.0 || best.1 == u32::MAX {
                        best = (score, i as u32);
                    }
                }
            }
            (best.1 != u32::MAX).then_some(best)
        }
        let mut rows = awkward_rows();
        let mut x = 0x51ED_2701u32;
        for spread in [4.0f32, 12.0, 30.0] {
            rows.push(
                (0..49_152)
                    .map(|_| {
                        let u = (xorshift(&mut x) >> 8) as f32 / (1u32 << 24) as f32;
                        spread * (u * u * u) - 10.0
                    })
                    .collect(),
            );
        }
        let mut checked = 0;
        for row in &rows {
            let (top, max) = argmax_value(row);
            for t in [0.3f32, 0.7, 1.5] {
                for key in [1u32, 0xDEAD_BEEF] {
                    let skip = (max / t + gumbel_at(key, top) - GUMBEL_MAX) * t;
                    for (skip, lower) in [
                        (skip, f32::NEG_INFINITY),
                        (f32::NEG_INFINITY, f32::NEG_INFINITY),
                        (skip, max - 1.0),
                    ] {
                        let want = scan(row, key, t, skip, lower).map(|b| (b.0.to_bits(), b.1));
                        for (name, f) in &variants {
                            let got = f(row, key, t, skip, lower).map(|b| (b.0.to_bits(), b.1));
                            assert_eq!(got, want, "{name}, t {t}, skip {skip}, lower {lower}");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked >= rows.len() * 18);
    }

    #[test]
    fn chunked_filters_draw_what_a_full_scan_draws() {
        // The same steps as `pick` over every token, with no chunk passed over.
        fn full_scan(row: &[f32], p: &RowSampling) -> u32 {
            let t = p.temperature;
            let (mut top, mut max) = (0u32, f32::NEG_INFINITY);
            for (i, &v) in row.iter().enumerate() {
                if v > max {
                    (top, max) = (i as u32, v);
                }
            }
            let mut lower = f32::NEG_INFINITY;
            let k = p.top_k as usize;
            if k > 0 && k < row.len() {
                let mut v = row.to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                lower = v[k - 1];
            }
            if p.top_p < 1.0 {
                let mut cand: Vec<(f32, u32)> = row
                    .iter()
                    .enumerate()
                    .filter(|&(_, &l)| l >= lower)
                    .map(|(i, &l)| (l, i as u32))
                    .collect();
                cand.sort_unstable_by(order);
                let w = |l: f32| ((l - max) / t).exp() as f64;
                let total: f64 = cand.iter().map(|c| w(c.0)).sum();
                let mut acc = 0f64;
                for c in &cand {
                    acc += w(c.0);
                    if acc >= p.top_p as f64 * total {
                        lower = lower.max(c.0);
                        break;
                    }
                }
            }
            if p.min_p > 0.0 {
                lower = lower.max(max + t * p.min_p.ln());
            }
            let key = draw_key(p.seed, p.counter);
            let mut best = (f32::NEG_INFINITY, u32::MAX);
            for (i, &l) in row.iter().enumerate() {
                if l >= lower && !l.is_nan() {
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
        let mut s = Scratch::default();
        let mut same = |row: &[f32], p: RowSampling| {
            assert_eq!(pick(row, &p, &mut s), full_scan(row, &p), "{p:?}");
        };
        // Rows of a vocabulary's size whose logits spread as a model's do, where most
        // tokens are passed over by their noise's ceiling: the same tokens at every
        // temperature and over many draws.
        let mut x = 0x2545_F491u32;
        for spread in [4.0f32, 12.0, 30.0] {
            let row: Vec<f32> = (0..49_152)
                .map(|_| {
                    let u = (xorshift(&mut x) >> 8) as f32 / (1u32 << 24) as f32;
                    spread * (u * u * u) - 10.0
                })
                .collect();
            for temperature in [0.3f32, 0.7, 1.0, 1.5] {
                for (top_k, top_p, min_p) in [
                    (0, 1.0, 0.0),
                    (40, 0.95, 0.0),
                    (40, 0.9, 0.05),
                    (0, 0.9, 0.0),
                    (400, 0.999, 0.0),
                ] {
                    for counter in 0..40 {
                        let seed = 7;
                        same(
                            &row,
                            RowSampling {
                                temperature,
                                top_k,
                                top_p,
                                min_p,
                                seed,
                                counter,
                                ..RowSampling::GREEDY
                            },
                        );
                    }
                }
            }
        }
        for (r, row) in awkward_rows().into_iter().enumerate() {
            if row.len() < 2 {
                continue;
            }
            for (k, top_p, min_p) in [
                (0, 1.0, 0.0),
                (40, 0.95, 0.0),
                (3, 1.0, 0.05),
                (0, 0.5, 0.0),
            ] {
                for counter in 0..4 {
                    let p = RowSampling {
                        temperature: 0.7,
                        top_k: k,
                        top_p,
                        min_p,
                        seed: r as u64,
                        counter,
                        ..RowSampling::GREEDY
                    };
                    same(&row, p);
                }
            }
        }
    }

    #[test]
    fn log_sum_exp_is_close_to_f64_and_the_same_on_every_path() {
        for row in awkward_rows() {
            if row.iter().any(|v| v.is_nan() || *v == f32::INFINITY)
                || row.iter().all(|&v| v == f32::NEG_INFINITY)
            {
                continue;
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let want = max
                + row
                    .iter()
                    .map(|&l| (l as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let got = log_sum_exp(&row);
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{got} vs {want}"
            );
            assert_eq!(got.to_bits(), log_sum_exp_body(&row).to_bits());
        }
        for x in [-87.0f32, -20.5, -1.0, -0.3, 0.0, 0.7, 10.0, 80.0] {
            let rel = (exp_poly(x) as f64 / (x as f64).exp() - 1.0).abs();
            // The rounding of x log2(e) grows with |x|: 2e-6 at -87.
            assert!(rel < 1e-6 + 3e-8 * x.abs() as f64, "exp({x}): {rel}");
        }
    }
}
