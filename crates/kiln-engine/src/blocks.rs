//! The paged KV cache's bookkeeping: fixed-size blocks from one pool, block tables per
//! sequence, and prefix sharing.
//!
//! Blocks that are full hold the keys and values of a known token prefix; they are
//! registered under a hash of that whole prefix and are never written again, so
//! sequences that start with the same tokens share them. The hash only finds a candidate:
//! a 64-bit FNV hash can be made to collide on purpose, and a collision would hand one
//! client the cache of another's prompt. So a block is reused only if its own tokens equal
//! the prompt's and its parent is the block just reused, in the same life (blocks count
//! their reuses), which by induction checks the whole prefix. A sequence only ever writes into
//! its own last, partial block; a fork copies that block (copy-on-write at the one place
//! where sharing would otherwise be written).

use std::collections::{BTreeSet, HashMap};

/// Not enough free blocks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {needed} blocks needed, {free} free of {total}")]
pub struct NoSpace {
    /// Blocks asked for.
    pub needed: usize,
    /// Blocks free.
    pub free: usize,
    /// Blocks in the pool.
    pub total: usize,
}

/// A forked block table, and the block copy `(src, dst)` the backend must make for it.
pub type Forked = (Vec<u32>, Option<(u32, u32)>);

/// Allocator of KV blocks with reference counts and a prefix cache.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    /// Free blocks ordered by when they were freed (oldest first), so cached contents
    /// survive as long as possible.
    free: BTreeSet<(u64, u32)>,
    stamp: Vec<u64>,
    clock: u64,
    /// Prefix hash -> block holding that prefix's last `block_size` tokens.
    cache: HashMap<u64, u32>,
    hash_of: Vec<Option<u64>>,
    /// What a registered block holds: its parent (block, life) and its own tokens.
    content: Vec<Option<Cached>>,
    /// How many times each block has been taken for new contents.
    life: Vec<u64>,
}

/// The prefix a registered block stands for, kept to check hash hits against.
#[derive(Debug)]
struct Cached {
    parent: Option<(u32, u64)>,
    tokens: Box<[u32]>,
}

/// Hash of a token prefix, chained block by block (FNV-1a over the previous hash and ids).
/// How far [`BlockManager::register`] has gone along one block table: its first `blocks`
/// blocks, whose chained hash is `hash`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Registered {
    blocks: usize,
    hash: u64,
}

pub fn chain_hash(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = prev ^ 0xcbf2_9ce4_8422_2325;
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl BlockManager {
    /// A pool of `n_blocks` blocks of `block_size` token positions.
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        BlockManager {
            block_size: block_size.max(1),
            refs: vec![0; n_blocks],
            free: (0..n_blocks as u32).map(|b| (0, b)).collect(),
            stamp: vec![0; n_blocks],
            clock: 0,
            cache: HashMap::new(),
            hash_of: vec![None; n_blocks],
            content: (0..n_blocks).map(|_| None).collect(),
            life: vec![0; n_blocks],
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks not referenced by any sequence (cached contents may still be reused).
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn used(&self) -> usize {
        self.total() - self.free_count()
    }

    /// Blocks needed to hold `len` positions.
    pub fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.block_size)
    }

    fn take_free(&mut self) -> Option<u32> {
        let (s, b) = self.free.pop_first()?;
        debug_assert_eq!(self.stamp[b as usize], s);
        if let Some(h) = self.hash_of[b as usize].take() {
            if self.cache.get(&h) == Some(&b) {
                self.cache.remove(&h);
            }
        }
        self.content[b as usize] = None;
        self.life[b as usize] += 1;
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn retain(&mut self, b: u32) {
        if self.refs[b as usize] == 0 {
            self.free.remove(&(self.stamp[b as usize], b));
        }
        self.refs[b as usize] += 1;
    }

    /// Blocks for a new sequence's prompt: reuses cached blocks for its longest cached
    /// prefix of whole blocks (never the block holding the last prompt token, whose logits
    /// must be computed), then allocates fresh ones for `reserve` positions in all.
    /// Returns the table and the number of positions already computed.
    pub fn allocate(
        &mut self,
        prompt: &[u32],
        reserve: usize,
    ) -> Result<(Vec<u32>, usize), NoSpace> {
        let bs = self.block_size;
        let reusable = prompt.len().saturating_sub(1) / bs;
        let mut hits = Vec::new();
        let mut h = 0u64;
        for i in 0..reusable {
            let tokens = &prompt[i * bs..(i + 1) * bs];
            h = chain_hash(h, tokens);
            let parent = hits.last().map(|&p: &u32| (p, self.life[p as usize]));
            match self.cache.get(&h) {
                Some(&b) if self.holds(b, parent, tokens) => hits.push(b),
                _ => break,
            }
        }
        let need_total = self.blocks_for(reserve.max(prompt.len()));
        let fresh = need_total.saturating_sub(hits.len());
        let hits_free = hits.iter().filter(|&&b| self.refs[b as usize] == 0).count();
        if fresh + hits_free > self.free.len() {
            return Err(NoSpace {
                needed: fresh + hits_free,
                free: self.free.len(),
                total: self.total(),
            });
        }
        let mut table = Vec::with_capacity(need_total);
        for b in hits {
            self.retain(b);
            table.push(b);
        }
        let cached = table.len() * bs;
        for _ in 0..fresh {
            // Counted above: there are enough free blocks.
            if let Some(b) = self.take_free() {
                table.push(b);
            }
        }
        Ok((table, cached))
    }

    /// Whether a lookup can still end at cached block `b` for these tokens: it holds them, and
    /// its parent is the block it was computed after (not since reused) and still the cache's
    /// entry for its own prefix.
    fn reachable(&self, b: u32, tokens: &[u32]) -> bool {
        let Some(c) = &self.content[b as usize] else {
            return false;
        };
        *c.tokens == *tokens
            && c.parent.is_none_or(|(p, life)| {
                self.life[p as usize] == life
                    && self.hash_of[p as usize].is_some_and(|hp| self.cache.get(&hp) == Some(&p))
            })
    }

    /// Whether block `b` holds `tokens` right after `parent` (a hash hit is only a candidate).
    fn holds(&self, b: u32, parent: Option<(u32, u64)>, tokens: &[u32]) -> bool {
        self.content[b as usize]
            .as_ref()
            .is_some_and(|c| c.parent == parent && *c.tokens == *tokens)
    }

    /// Makes sure `table` can hold `len` positions, allocating blocks at the end.
    pub fn grow(&mut self, table: &mut Vec<u32>, len: usize) -> Result<(), NoSpace> {
        let need = self.blocks_for(len).saturating_sub(table.len());
        if need > self.free.len() {
            return Err(NoSpace {
                needed: need,
                free: self.free.len(),
                total: self.total(),
            });
        }
        for _ in 0..need {
            if let Some(b) = self.take_free() {
                table.push(b);
            }
        }
        Ok(())
    }

    /// Records that the first `computed` positions of the sequence `tokens` are in the
    /// cache, so its full blocks can be shared with later sequences. `done` carries what
    /// earlier calls for the same table registered (start from `Registered::default()` for a
    /// new table), so each block is hashed once, not once per step.
    pub fn register(
        &mut self,
        table: &[u32],
        tokens: &[u32],
        computed: usize,
        done: &mut Registered,
    ) {
        let bs = self.block_size;
        let full = (computed / bs).min(table.len());
        if full <= done.blocks {
            return;
        }
        let mut h = done.hash;
        for i in done.blocks..full {
            h = chain_hash(h, &tokens[i * bs..(i + 1) * bs]);
            let b = table[i];
            if self.hash_of[b as usize].is_none() {
                self.hash_of[b as usize] = Some(h);
                // Parent by block and life: if the parent block is later taken for other
                // contents, this block's keys and values (computed after the old parent)
                // no longer match any prefix that reaches it.
                let parent = i
                    .checked_sub(1)
                    .map(|p| (table[p], self.life[table[p] as usize]));
                let here = &tokens[i * bs..(i + 1) * bs];
                // A block already cached under this hash stays unless it is stale (see
                // `reachable`): a stale one would hide this block from every later lookup.
                let keep = self
                    .cache
                    .get(&h)
                    .is_some_and(|&old| old != b && self.reachable(old, here));
                self.content[b as usize] = Some(Cached {
                    parent,
                    tokens: here.into(),
                });
                if !keep {
                    self.cache.insert(h, b);
                }
            }
        }
        *done = Registered {
            blocks: full,
            hash: h,
        };
    }

    /// A second table sharing the first `len` positions of `table`: whole blocks are shared;
    /// a partial last block is copied (returned as `(src, dst)` for the backend to copy).
    pub fn fork(&mut self, table: &[u32], len: usize) -> Result<Forked, NoSpace> {
        let bs = self.block_size;
        let full = len / bs;
        let partial = !len.is_multiple_of(bs);
        if partial && self.free.is_empty() {
            return Err(NoSpace {
                needed: 1,
                free: 0,
                total: self.total(),
            });
        }
        let mut out = Vec::with_capacity(full + 1);
        for &b in &table[..full] {
            self.retain(b);
            out.push(b);
        }
        let mut copy = None;
        if partial {
            if let Some(dst) = self.take_free() {
                copy = Some((table[full], dst));
                out.push(dst);
            }
        }
        Ok((out, copy))
    }

    /// Gives a sequence's blocks back.
    pub fn release(&mut self, table: &[u32]) {
        for &b in table {
            let r = &mut self.refs[b as usize];
            if *r == 0 {
                continue;
            }
            *r -= 1;
            if *r == 0 {
                self.clock += 1;
                self.stamp[b as usize] = self.clock;
                self.free.insert((self.clock, b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_release_and_budget() {
        let mut m = BlockManager::new(4, 16);
        let (t, cached) = m.allocate(&[1; 20], 40).unwrap();
        assert_eq!((t.len(), cached), (3, 0));
        assert_eq!(m.free_count(), 1);
        let e = m.allocate(&[2; 20], 40).unwrap_err();
        assert_eq!((e.needed, e.free), (3, 1));
        m.release(&t);
        assert_eq!(m.free_count(), 4);
    }

    #[test]
    fn shared_prefix_reuses_full_blocks_only() {
        let mut m = BlockManager::new(8, 4);
        let a: Vec<u32> = (0..10).collect();
        let (ta, _) = m.allocate(&a, 12).unwrap();
        m.register(&ta, &a, 10, &mut Registered::default());
        // Same first 8 tokens, then different.
        let mut b: Vec<u32> = (0..8).collect();
        b.extend([99, 98, 97]);
        let (tb, cached) = m.allocate(&b, 11).unwrap();
        assert_eq!(cached, 8);
        assert_eq!(&tb[..2], &ta[..2]);
        assert_ne!(tb[2], ta[2]);
        // A prompt equal to a cached one still computes its last block.
        let (tc, cached) = m.allocate(&a[..8], 8).unwrap();
        assert_eq!(
            cached, 4,
            "block holding the last prompt token is not reused"
        );
        assert_eq!(tc[0], ta[0]);
        m.release(&ta);
        m.release(&tb);
        m.release(&tc);
        assert_eq!(m.free_count(), 8);
        // Freed blocks keep their contents until reused.
        let (td, cached) = m.allocate(&a, 10).unwrap();
        assert_eq!(cached, 8);
        m.release(&td);
    }

    #[test]
    fn a_hash_hit_is_reused_only_if_the_tokens_and_parent_match() {
        let mut m = BlockManager::new(16, 4);
        let a: Vec<u32> = (0..9).collect();
        let (ta, _) = m.allocate(&a, 9).unwrap();
        m.register(&ta, &a, 9, &mut Registered::default());
        // What a collision would do: another prompt's hash leads to a's first block.
        let b: Vec<u32> = (100..109).collect();
        m.cache.insert(chain_hash(0, &b[..4]), ta[0]);
        let (tb, cached) = m.allocate(&b, 9).unwrap();
        assert_eq!(cached, 0, "reused another prompt's block on a hash hit");
        assert!(!tb.contains(&ta[0]));
        // Same tokens in the second block, after a different first block: not reused.
        let mut c = b[..4].to_vec();
        c.extend_from_slice(&a[4..9]);
        m.cache.remove(&chain_hash(0, &b[..4]));
        m.register(&tb, &b, 8, &mut Registered::default());
        let h = chain_hash(chain_hash(0, &c[..4]), &c[4..8]);
        m.cache.insert(h, ta[1]);
        let (tc, cached) = m.allocate(&c, 9).unwrap();
        assert_eq!(
            cached, 4,
            "the first block is b's, the second must not be a's"
        );
        assert_eq!(tc[0], tb[0]);
        assert_ne!(tc[1], ta[1]);
        // The honest prefix is still reused.
        let (td, cached) = m.allocate(&a, 9).unwrap();
        assert_eq!((cached, &td[..2]), (8, &ta[..2]));
        for t in [&ta, &tb, &tc, &td] {
            m.release(t);
        }
    }

    #[test]
    fn a_block_whose_parent_was_reused_is_not_reused() {
        let mut m = BlockManager::new(3, 2);
        let a = [1, 2, 3, 4, 5];
        let (ta, _) = m.allocate(&a[..4], 4).unwrap();
        m.register(&ta, &a[..4], 4, &mut Registered::default());
        m.release(&ta);
        // Take the parent block for other contents, keeping the child cached; then make the
        // child reachable under the new parent, as a collision would.
        let (tx, _) = m.allocate(&[7], 1).unwrap();
        let (tb, _) = m.allocate(&[8], 1).unwrap();
        assert_eq!(tb, [ta[0]]);
        m.register(&tb, &[3, 4], 2, &mut Registered::default());
        m.release(&tx);
        m.release(&tb);
        let p = [3, 4, 3, 4, 9];
        let h = chain_hash(chain_hash(0, &p[..2]), &p[2..4]);
        m.cache.insert(h, ta[1]);
        let (_, cached) = m.allocate(&p, 5).unwrap();
        assert_eq!(
            cached, 2,
            "the child was computed after the parent's old contents"
        );
    }

    #[test]
    fn a_stale_cached_block_gives_way_to_a_fresh_one() {
        let mut m = BlockManager::new(12, 2);
        let a = [1, 2, 3, 4, 5];
        let b = [10, 11, 12, 13, 14];
        let (tb, _) = m.allocate(&b, 5).unwrap();
        m.register(&tb, &b, 4, &mut Registered::default());
        // What a block left behind under a prefix's hash looks like (its parent since reused,
        // or a collision): the entry leads to a block that does not hold those tokens.
        m.cache.insert(chain_hash(0, &a[..2]), tb[0]);
        let (ta, cached) = m.allocate(&a, 5).unwrap();
        assert_eq!(cached, 0);
        m.register(&ta, &a, 4, &mut Registered::default());
        // The next request with the prefix finds the fresh blocks.
        let (tc, cached) = m.allocate(&a, 5).unwrap();
        assert_eq!(cached, 4, "the stale entry hid the fresh block");
        assert_eq!(&tc[..2], &ta[..2]);
        // An entry that still holds its tokens is kept.
        let (td, _) = m.allocate(&b, 5).unwrap();
        assert_eq!(td[0], tb[0]);
        for t in [&ta, &tb, &tc, &td] {
            m.release(t);
        }
    }

    #[test]
    fn fork_copies_the_partial_block() {
        let mut m = BlockManager::new(6, 4);
        let (t, _) = m.allocate(&[5; 6], 6).unwrap();
        let (f, copy) = m.fork(&t, 6).unwrap();
        assert_eq!(f[0], t[0]);
        assert_eq!(copy, Some((t[1], f[1])));
        assert_eq!(m.used(), 3);
        m.release(&t);
        assert_eq!(m.used(), 2, "the shared block is still held by the fork");
        m.release(&f);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn grow_adds_blocks_on_boundaries() {
        let mut m = BlockManager::new(3, 2);
        let (mut t, _) = m.allocate(&[1, 2], 2).unwrap();
        assert_eq!(t.len(), 1);
        m.grow(&mut t, 3).unwrap();
        assert_eq!(t.len(), 2);
        m.grow(&mut t, 4).unwrap();
        assert_eq!(t.len(), 2);
        m.grow(&mut t, 6).unwrap();
        assert!(m.grow(&mut t, 7).is_err());
    }
}
