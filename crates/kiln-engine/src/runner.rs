//! The engine's runner for a real model: one batched forward pass per step over a shared
//! paged KV pool.

use kiln_model::{Backend, Logits, Model, ModelError, State, KV_BLOCK};

use crate::engine::{Runner, Slice};

/// Runs a [`Model`] for the engine.
pub struct ModelRunner<B: Backend> {
    model: Model<B>,
    pool: B::KvPool,
    state: State<B>,
    n_blocks: usize,
}

impl<B: Backend> ModelRunner<B> {
    /// A runner whose KV pool takes at most `kv_budget_bytes`; steps carry at most
    /// `max_batch_tokens` tokens for at most `max_seqs` sequences.
    pub fn new(
        model: Model<B>,
        kv_budget_bytes: usize,
        max_batch_tokens: usize,
        max_seqs: usize,
    ) -> Result<Self, ModelError> {
        let per_block = model.kv_block_bytes().max(1);
        let n_blocks = kv_budget_bytes / per_block;
        if n_blocks == 0 {
            return Err(ModelError::OutOfMemory(format!(
                "the KV budget of {} MiB holds no block of {} KiB; raise the memory budget",
                kv_budget_bytes >> 20,
                per_block >> 10
            )));
        }
        let pool = model.new_kv_pool(n_blocks)?;
        let state = model.new_state(max_batch_tokens, max_seqs)?;
        Ok(ModelRunner {
            model,
            pool,
            state,
            n_blocks,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Positions the KV pool holds in all.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.n_blocks * KV_BLOCK
    }
}

impl<B: Backend> Runner for ModelRunner<B> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn context_length(&self) -> usize {
        self.model.cfg.context_length
    }

    fn block_size(&self) -> usize {
        KV_BLOCK
    }

    fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    fn step(&mut self, batch: &[Slice<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        self.model
            .forward_batch(&mut self.state, &mut self.pool, batch, Logits::Last)?;
        logits.extend_from_slice(&self.state.logits);
        Ok(())
    }

    fn copy_block(&mut self, src: u32, dst: u32) {
        self.model.backend.copy_kv_block(&mut self.pool, src, dst);
    }
}
