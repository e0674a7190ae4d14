//! The engine's runner for a real model: one batched forward pass per step over a shared
//! paged KV pool.

use kiln_model::sample::{Adjust, RowSampling, Sampled};
use kiln_model::{Backend, Logits, Model, ModelError, State, KV_BLOCK};

use crate::engine::{Runner, Slice};

/// Rows of logits a runner made by [`ModelRunner::new`] returns at least, so that texts are
/// scored in chunks of this many tokens even when few sequences run at once. Each row takes
/// `vocab_size` floats twice (backend and host, the host copy for scoring only).
pub const MIN_LOGIT_ROWS: usize = 16;

/// Runs a [`Model`] for the engine.
pub struct ModelRunner<B: Backend> {
    model: Model<B>,
    pool: B::KvPool,
    state: State<B>,
    n_blocks: usize,
    logit_rows: usize,
}

impl<B: Backend> ModelRunner<B> {
    /// A runner whose KV pool takes at most `kv_budget_bytes`; steps carry at most
    /// `max_batch_tokens` tokens for at most `max_seqs` sequences. Scoring passes return up
    /// to `max(max_seqs, MIN_LOGIT_ROWS)` rows of logits (at most `max_batch_tokens`).
    pub fn new(
        model: Model<B>,
        kv_budget_bytes: usize,
        max_batch_tokens: usize,
        max_seqs: usize,
    ) -> Result<Self, ModelError> {
        Self::with_logit_rows(
            model,
            kv_budget_bytes,
            max_batch_tokens,
            max_seqs,
            max_seqs.max(MIN_LOGIT_ROWS),
        )
    }

    /// Like [`ModelRunner::new`], with room for `logit_rows` rows of logits per pass
    /// (clamped to `max_seqs..=max_batch_tokens`): the most tokens one teacher-forced
    /// scoring pass carries. More rows score long texts in fewer steps, for
    /// `2 * logit_rows * vocab_size * 4` bytes.
    pub fn with_logit_rows(
        model: Model<B>,
        kv_budget_bytes: usize,
        max_batch_tokens: usize,
        max_seqs: usize,
        logit_rows: usize,
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
        let max_tokens = max_batch_tokens.max(1);
        let logit_rows = logit_rows.max(max_seqs).clamp(1, max_tokens);
        let pool = model.new_kv_pool(n_blocks)?;
        let state = model.new_state(max_tokens, logit_rows)?;
        Ok(ModelRunner {
            model,
            pool,
            state,
            n_blocks,
            logit_rows,
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

    fn step(
        &mut self,
        batch: &[Slice<'_>],
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        self.model
            .forward_batch(&mut self.state, &mut self.pool, batch, Logits::Keep)?;
        self.model.sample(&mut self.state, rows, adjust, masks, out)
    }

    fn overlaps(&self) -> bool {
        self.model.backend.asynchronous()
    }

    fn pass_done(&self) -> bool {
        self.model.backend.work_done()
    }

    fn host_run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        self.model.backend.host_run(f)
    }

    fn start_pass(&mut self, batch: &[Slice<'_>]) -> Result<(), ModelError> {
        self.model
            .forward_batch(&mut self.state, &mut self.pool, batch, Logits::Keep)
    }

    fn start_sampling(
        &mut self,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> Result<(), ModelError> {
        self.model
            .sample_start(&mut self.state, rows, adjust, masks)
    }

    fn finish(&mut self, out: &mut Vec<Sampled>) -> Result<(), ModelError> {
        self.model.sample_wait(&mut self.state, out)
    }

    fn host_words(&self, n: usize) -> Option<Box<dyn kiln_model::HostWords>> {
        self.model.backend.host_words(n)
    }

    fn step_all(&mut self, batch: &[Slice<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        self.model
            .forward_batch(&mut self.state, &mut self.pool, batch, Logits::All)?;
        logits.extend_from_slice(&self.state.logits);
        Ok(())
    }

    fn max_logit_rows(&self) -> usize {
        self.logit_rows
    }

    fn step_greedy_all(
        &mut self,
        batch: &[Slice<'_>],
        out: &mut Vec<u32>,
    ) -> Result<(), ModelError> {
        self.model
            .forward_batch(&mut self.state, &mut self.pool, batch, Logits::GreedyAll)?;
        out.extend_from_slice(&self.state.argmax);
        Ok(())
    }

    fn step_hidden(&mut self, batch: &[Slice<'_>], out: &mut Vec<f32>) -> Result<(), ModelError> {
        self.model
            .forward_batch(&mut self.state, &mut self.pool, batch, Logits::Hidden)?;
        out.extend_from_slice(&self.state.logits);
        Ok(())
    }

    fn hidden_size(&self) -> usize {
        self.model.cfg.dim
    }

    fn copy_block(&mut self, src: u32, dst: u32) {
        self.model.backend.copy_kv_block(&mut self.pool, src, dst);
    }
}
