//! Pairwise merging of adjacent symbols, the loop at the heart of every BPE.
//!
//! Each step merges the adjacent pair with the smallest key, leftmost on ties, until no pair
//! merges. Rescanning the whole sequence per step is quadratic (a 100,000-character word took
//! 98 s); a heap of candidate pairs over a linked list of symbols makes it O(n log n). Heap
//! entries go stale when a neighbour merges; they are checked when popped, not removed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// No neighbour.
const NONE: usize = usize::MAX;

/// Merges `syms` in place. `pair(left, right)` gives the key of merging two adjacent symbols
/// (smaller merges first) and the merged symbol, or `None` when they never merge.
pub(crate) fn merge<T: Copy, K: Ord + Copy>(
    syms: &mut Vec<T>,
    pair: impl Fn(T, T) -> Option<(K, T)>,
) {
    let n = syms.len();
    if n < 2 {
        return;
    }
    // Symbols keep their index; a merge keeps the left one and unlinks the right one, so
    // index order is text order and the leftmost symbol never dies.
    let mut next: Vec<usize> = (1..=n).map(|i| if i == n { NONE } else { i }).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::with_capacity(n);
    for i in 0..n - 1 {
        if let Some((k, _)) = pair(syms[i], syms[i + 1]) {
            heap.push(Reverse((k, i, i + 1)));
        }
    }
    while let Some(Reverse((k, l, r))) = heap.pop() {
        if !alive[l] || !alive[r] || next[l] != r {
            continue;
        }
        // The pair is adjacent; it is current if merging it still has the same key (an
        // identical fresh entry exists then, and either one stands for it).
        let Some((now, m)) = pair(syms[l], syms[r]) else {
            continue;
        };
        if now != k {
            continue;
        }
        syms[l] = m;
        alive[r] = false;
        let after = next[r];
        next[l] = after;
        if after != NONE {
            prev[after] = l;
            if let Some((k, _)) = pair(syms[l], syms[after]) {
                heap.push(Reverse((k, l, after)));
            }
        }
        let before = prev[l];
        if before != NONE {
            if let Some((k, _)) = pair(syms[before], syms[l]) {
                heap.push(Reverse((k, before, l)));
            }
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i != NONE {
        out.push(syms[i]);
        i = next[i];
    }
    *syms = out;
}

/// A score ordered so that higher scores merge first (SentencePiece), ties leftmost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HigherFirst(pub f32);

impl Eq for HigherFirst {}

impl PartialOrd for HigherFirst {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HigherFirst {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The definition, step by step: rescan every pair, merge the best (quadratic).
    pub(crate) fn reference<T: Copy, K: Ord + Copy>(
        syms: &mut Vec<T>,
        pair: impl Fn(T, T) -> Option<(K, T)>,
    ) {
        loop {
            let best = (0..syms.len().saturating_sub(1))
                .filter_map(|i| pair(syms[i], syms[i + 1]).map(|(k, m)| (k, i, m)))
                .min_by_key(|&(k, i, _)| (k, i));
            let Some((_, i, m)) = best else { break };
            syms[i] = m;
            syms.remove(i + 1);
        }
    }

    /// xorshift64*: deterministic, so a failure can be replayed from its seed.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn heap_merge_equals_rescanning_on_random_tables() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
            // A small alphabet and a dense random merge table, so that merges chain, compete
            // and tie; keys repeat on purpose (ties must go leftmost).
            let alphabet = 2 + rng.below(4) as u32;
            let n_sym = alphabet + 40;
            let mut table = std::collections::HashMap::new();
            for _ in 0..rng.below(120) + 1 {
                let (a, b) = (
                    rng.below(n_sym as u64) as u32,
                    rng.below(n_sym as u64) as u32,
                );
                let key = rng.below(20) as u32;
                let m = rng.below(n_sym as u64) as u32;
                table.entry((a, b)).or_insert((key, m));
            }
            let pair = |a: u32, b: u32| table.get(&(a, b)).copied();
            let len = rng.below(200) as usize;
            let syms: Vec<u32> = (0..len)
                .map(|_| rng.below(alphabet as u64) as u32)
                .collect();
            let (mut fast, mut slow) = (syms.clone(), syms.clone());
            merge(&mut fast, pair);
            reference(&mut slow, pair);
            assert_eq!(fast, slow, "seed {seed}, input {syms:?}");
        }
    }

    #[test]
    fn higher_scores_merge_first_and_ties_go_left() {
        // "abc": (a,b) scores 1, (b,c) scores 2: b+c first. Ties: leftmost.
        let score = |l: char, r: char| match (l, r) {
            ('a', 'b') => Some(1.0),
            ('b', 'c') => Some(2.0),
            ('x', 'x') => Some(0.5),
            _ => None,
        };
        let pair = |l: char, r: char| score(l, r).map(|s| (HigherFirst(s), 'M'));
        let mut s: Vec<char> = "abc".chars().collect();
        merge(&mut s, pair);
        assert_eq!(s, ['a', 'M']);
        let mut s: Vec<char> = "xxx".chars().collect();
        merge(&mut s, pair);
        assert_eq!(s, ['M', 'x']);
    }

    #[test]
    fn a_long_run_merges_in_n_log_n() {
        // Every pair of equal symbols merges into a symbol twice as long: a 2^17 run halves
        // 17 times. Quadratic rescanning would take minutes; this is the regression guard
        // for the 98 s prompt (it fails by timing out the suite, never by a timed assert).
        let n = 1usize << 17;
        let mut s = vec![1u32; n];
        merge(&mut s, |a, b| (a == b).then_some((a, a * 2)));
        assert_eq!(s, vec![n as u32]);
    }
}
