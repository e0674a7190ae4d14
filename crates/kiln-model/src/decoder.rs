//! The decoder: one forward pass for Llama, Qwen2 and Phi-3, written against [`Backend`].

use crate::backend::{Backend, FusedLayer, PagedSeq, PassKey};
use crate::sample::{Adjust, RowSampling, Sampled, MAX_TOP_LOGPROBS};
use crate::weights::Weights;
use crate::{ModelConfig, ModelError};

enum Layer<B: Backend> {
    /// Every projection its own matrix; the decoder runs each operation.
    Split(Box<SplitLayer<B>>),
    /// Stacked projections; the backend runs the whole layer.
    Fused(Box<FusedLayer<B>>),
}

struct SplitLayer<B: Backend> {
    attn_norm: B::Act,
    wq: B::Mat,
    wk: B::Mat,
    wv: B::Mat,
    bq: Option<B::Act>,
    bk: Option<B::Act>,
    bv: Option<B::Act>,
    wo: B::Mat,
    ffn_norm: B::Act,
    w_gate: B::Mat,
    w_up: B::Mat,
    w_down: B::Mat,
}

/// A model resident on a backend.
pub struct Model<B: Backend> {
    /// Shape.
    pub cfg: ModelConfig,
    /// The backend that holds the weights and runs the kernels.
    pub backend: B,
    tok_embd: B::Mat,
    output_norm: B::Act,
    output: Option<B::Mat>,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Model<B> {
    /// Takes the weights into the backend.
    pub fn new(backend: B, cfg: ModelConfig, w: Weights) -> Result<Self, ModelError> {
        let vec = |v: &[f32]| backend.vector(v);
        let opt = |v: &Option<Vec<f32>>| -> Result<Option<B::Act>, ModelError> {
            v.as_deref().map(vec).transpose()
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in w.layers {
            let bias = match (&l.bq, &l.bk, &l.bv) {
                (Some(a), Some(b), Some(c)) => Some([&a[..], b, c].concat()),
                _ => None,
            };
            let qkv = backend.stack("qkv", &[&l.wq, &l.wk, &l.wv], bias.as_deref())?;
            let gate_up = match &qkv {
                Some(_) => backend.stack("gate_up", &[&l.w_gate, &l.w_up], None)?,
                None => None,
            };
            if let (Some(qkv), Some(gate_up)) = (qkv, gate_up) {
                layers.push(Layer::Fused(Box::new(FusedLayer {
                    attn_norm: vec(&l.attn_norm)?,
                    qkv,
                    wo: backend.matrix(l.wo)?,
                    ffn_norm: vec(&l.ffn_norm)?,
                    gate_up,
                    down: backend.matrix(l.w_down)?,
                })));
                continue;
            }
            layers.push(Layer::Split(Box::new(SplitLayer {
                attn_norm: vec(&l.attn_norm)?,
                wq: backend.matrix(l.wq)?,
                wk: backend.matrix(l.wk)?,
                wv: backend.matrix(l.wv)?,
                bq: opt(&l.bq)?,
                bk: opt(&l.bk)?,
                bv: opt(&l.bv)?,
                wo: backend.matrix(l.wo)?,
                ffn_norm: vec(&l.ffn_norm)?,
                w_gate: backend.matrix(l.w_gate)?,
                w_up: backend.matrix(l.w_up)?,
                w_down: backend.matrix(l.w_down)?,
            })));
        }
        Ok(Model {
            tok_embd: backend.matrix(w.tok_embd)?,
            output_norm: vec(&w.output_norm)?,
            output: w.output.map(|o| backend.matrix(o)).transpose()?,
            layers,
            cfg,
            backend,
        })
    }
}

/// Scratch buffers for passes of up to `max_tokens` tokens at once; allocated once.
pub struct State<B: Backend> {
    max_tokens: usize,
    max_logit_rows: usize,
    x: B::Act,
    xb: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    att: B::Act,
    gate: B::Act,
    up: B::Act,
    last: B::Act,
    logits_dev: B::Act,
    rows: Vec<usize>,
    paged: Vec<(usize, usize, usize)>,
    tokens: Vec<u32>,
    /// Logits of the last pass: one row of `vocab` values per row asked for.
    pub logits: Vec<f32>,
    /// With [`Logits::Greedy`]: the most likely token of each row asked for.
    pub argmax: Vec<u32>,
    /// Rows of logits the last pass computed.
    logit_rows: usize,
    /// Unique among the states of this process (recorded passes are keyed by it).
    id: u64,
    /// Tokens sampled on the host by [`Model::sample_start`], for [`Model::sample_wait`].
    sampled: Vec<Sampled>,
    /// Whether a device sampling was started and not yet read.
    sampling: bool,
    /// Seconds per component, accumulated over passes, when enabled (a synchronous backend's
    /// operations are timed as they return).
    pub breakdown: Option<Breakdown>,
}

/// Where a forward pass spends its time, in seconds, summed over passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Breakdown {
    /// Token embedding lookup.
    pub embedding: f64,
    /// RMSNorms.
    pub norms: f64,
    /// Rotary embeddings.
    pub rope: f64,
    /// q/k/v projections and biases, attention over the KV cache, output projection, residual.
    pub attention: f64,
    /// Gate, up, SwiGLU, down projection, residual.
    pub ffn: f64,
    /// Gathering the rows that need logits, the output head, reading logits back.
    pub output_head: f64,
}

/// Adds the time since `*t` to `slot` and restarts the clock, when timing is on.
#[inline]
fn lap(on: bool, t: &mut std::time::Instant, slot: &mut f64) {
    if on {
        let now = std::time::Instant::now();
        *slot += now.duration_since(*t).as_secs_f64();
        *t = now;
    }
}

static NEXT_STATE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Positions per KV block.
pub const KV_BLOCK: usize = 16;

/// A KV cache of its own for one sequence: a small pool and the identity block table.
pub struct KvCache<B: Backend> {
    pool: B::KvPool,
    blocks: Vec<u32>,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// Positions it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// One sequence's part of a batched pass.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// Tokens to run, at positions `pos0..pos0 + tokens.len()`.
    pub tokens: &'a [u32],
    /// Position of the first token.
    pub pos0: usize,
    /// Block table covering every position up to `pos0 + tokens.len()`.
    pub blocks: &'a [u32],
    /// Whether this sequence's logits are wanted.
    pub want_logits: bool,
}

/// Which logits a pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last token's of each sequence that wants them.
    Last,
    /// Every token's (teacher forcing, scoring).
    All,
    /// As `Last`, but only the most likely token of each row is returned, in
    /// `State::argmax` (computed where the logits are, so they need not be read back).
    Greedy,
    /// As `Last`, but the logits stay where they were computed, for [`Model::sample`].
    Keep,
    /// No logits: every token's final hidden state (after the output norm), `dim` values
    /// per token, in `State::logits` (embeddings).
    Hidden,
    /// Every token's most likely next token, in `State::argmax` (computed where the logits
    /// are: verifying proposed tokens reads back one id a token, not a row of logits).
    GreedyAll,
}

impl<B: Backend> Model<B> {
    /// Scratch space for passes of up to `max_tokens` tokens, returning up to
    /// `max_logit_rows` rows of logits.
    pub fn new_state(
        &self,
        max_tokens: usize,
        max_logit_rows: usize,
    ) -> Result<State<B>, ModelError> {
        let c = &self.cfg;
        let m = max_tokens.max(1);
        let r = max_logit_rows.clamp(1, m);
        let b = &self.backend;
        Ok(State {
            max_tokens: m,
            max_logit_rows: r,
            x: b.act(m * c.dim)?,
            xb: b.act(m * c.dim)?,
            q: b.act(m * c.dim)?,
            k: b.act(m * c.kv_dim())?,
            v: b.act(m * c.kv_dim())?,
            att: b.act(m * c.dim)?,
            gate: b.act(m * c.ffn_dim)?,
            up: b.act(m * c.ffn_dim)?,
            last: b.act(r * c.dim)?,
            logits_dev: b.act(r * c.vocab_size)?,
            rows: Vec::with_capacity(m),
            paged: Vec::with_capacity(m),
            tokens: Vec::with_capacity(m),
            logits: Vec::with_capacity(r * c.vocab_size),
            argmax: Vec::with_capacity(r),
            logit_rows: 0,
            sampled: Vec::new(),
            sampling: false,
            id: NEXT_STATE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            breakdown: None,
        })
    }

    /// A KV pool of `n_blocks` blocks of [`KV_BLOCK`] positions, for the engine.
    pub fn new_kv_pool(&self, n_blocks: usize) -> Result<B::KvPool, ModelError> {
        self.backend.kv_pool(&self.cfg, n_blocks, KV_BLOCK)
    }

    /// Bytes one KV block takes.
    pub fn kv_block_bytes(&self) -> usize {
        self.backend.kv_block_bytes(&self.cfg, KV_BLOCK)
    }

    /// A KV cache for one sequence of up to `capacity` tokens.
    pub fn new_kv(&self, capacity: usize) -> Result<KvCache<B>, ModelError> {
        let n = capacity.div_ceil(KV_BLOCK).max(1);
        Ok(KvCache {
            pool: self.new_kv_pool(n)?,
            blocks: (0..n as u32).collect(),
            capacity,
        })
    }

    /// Runs `tokens` of one sequence at positions `pos0..`, appending to `kv`. Fills
    /// `state.logits` with the last token's logits, or every token's with `all_logits`.
    pub fn forward(
        &self,
        state: &mut State<B>,
        kv: &mut KvCache<B>,
        tokens: &[u32],
        pos0: usize,
        all_logits: bool,
    ) -> Result<(), ModelError> {
        if pos0 + tokens.len() > kv.capacity {
            return Err(ModelError::ContextFull {
                needed: pos0 + tokens.len(),
                capacity: kv.capacity,
            });
        }
        let seq = SeqInput {
            tokens,
            pos0,
            blocks: &kv.blocks,
            want_logits: true,
        };
        let mode = if all_logits {
            Logits::All
        } else {
            Logits::Last
        };
        self.forward_batch(state, &mut kv.pool, &[seq], mode)
    }

    /// One pass over several sequences at once: every weight is read once for all their
    /// tokens. Fills `state.logits` with one row per wanted row, in order.
    pub fn forward_batch(
        &self,
        state: &mut State<B>,
        pool: &mut B::KvPool,
        seqs: &[SeqInput<'_>],
        mode: Logits,
    ) -> Result<(), ModelError> {
        let c = &self.cfg;
        let s = state;
        let n: usize = seqs.iter().map(|q| q.tokens.len()).sum();
        if n == 0 {
            return Err(ModelError::Input("no tokens to run".into()));
        }
        if n > s.max_tokens {
            return Err(ModelError::Input(format!(
                "{n} tokens in one pass, more than the {} the state was made for",
                s.max_tokens
            )));
        }
        s.rows.clear();
        s.paged.clear();
        s.tokens.clear();
        for q in seqs {
            let end = q.pos0 + q.tokens.len();
            if q.tokens.is_empty()
                || end > c.context_length
                || end.div_ceil(KV_BLOCK) > q.blocks.len()
            {
                return Err(ModelError::Input(format!(
                    "a sequence of {} tokens at position {} does not fit its {} KV blocks or the context of {}",
                    q.tokens.len(),
                    q.pos0,
                    q.blocks.len(),
                    c.context_length
                )));
            }
            if let Some(&bad) = q.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::Input(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            let row0 = s.tokens.len();
            match mode {
                Logits::All | Logits::Hidden | Logits::GreedyAll => {
                    s.rows.extend(row0..row0 + q.tokens.len())
                }
                Logits::Last | Logits::Greedy | Logits::Keep if q.want_logits => {
                    s.rows.push(row0 + q.tokens.len() - 1)
                }
                Logits::Last | Logits::Greedy | Logits::Keep => {}
            }
            s.paged.push((row0, q.tokens.len(), q.pos0));
            s.tokens.extend_from_slice(q.tokens);
        }
        if s.rows.len() > s.max_logit_rows {
            return Err(ModelError::Input(format!(
                "{} rows of logits asked of a state made for {}",
                s.rows.len(),
                s.max_logit_rows
            )));
        }
        let b = &self.backend;
        // Rows of logits the caller gets (padding rows come after them, and are dropped).
        let wanted_rows = s.rows.len();
        let decoding = seqs.iter().all(|q| q.tokens.len() == 1 && q.want_logits);
        let padded = if decoding { b.decode_rows(n) } else { n };
        // Room for the padding rows (below) from the start.
        let mut paged: Vec<PagedSeq<'_>> =
            Vec::with_capacity(seqs.len() + padded.saturating_sub(n));
        paged.extend(
            s.paged
                .iter()
                .zip(seqs)
                .map(|(&(row0, n, pos0), q)| PagedSeq {
                    row0,
                    n,
                    pos0,
                    blocks: q.blocks,
                }),
        );
        // A decoding pass may be padded to a size the backend has recorded: each padding row
        // runs the last sequence's token again, at its position, as a sequence of its own (it
        // writes the same key and value to the same place, and reads the same context).
        let n = match (seqs.last(), paged.last().copied()) {
            (Some(q), Some(last))
                if decoding
                    && mode == Logits::Keep
                    && padded > n
                    && padded <= s.max_tokens
                    && padded <= s.max_logit_rows =>
            {
                for row0 in n..padded {
                    s.tokens.push(q.tokens[0]);
                    s.rows.push(row0);
                    s.paged.push((row0, 1, last.pos0));
                    paged.push(PagedSeq { row0, ..last });
                }
                padded
            }
            _ => n,
        };
        b.begin_pass(c, s.max_tokens, &s.tokens, &paged, &s.rows)?;
        let (dim, kvd) = (c.dim, c.kv_dim());
        let on = s.breakdown.is_some();
        let mut bd = s.breakdown.unwrap_or_default();
        let r = s.rows.len();
        // Decode steps (one token per sequence) are recorded once per shape and replayed.
        let key = PassKey {
            state: s.id,
            rows: n,
            logit_rows: r,
        };
        // A hidden-state pass is never recorded: it stops before the output head.
        let replayed = !on
            && mode != Logits::Hidden
            && seqs.iter().all(|q| q.tokens.len() == 1)
            && b.replay(key, pool)?;
        let mut t = std::time::Instant::now();
        if !replayed {
            b.embed(&self.tok_embd, &s.tokens, &mut s.x);
            lap(on, &mut t, &mut bd.embedding);
            for (li, layer) in self.layers.iter().enumerate() {
                let l = match layer {
                    Layer::Fused(f) => {
                        let next = match self.layers.get(li + 1) {
                            Some(Layer::Fused(g)) => Some(&**g),
                            _ => None,
                        };
                        b.fused_layer(c, f.borrowed(next), li, pool, n, &mut s.x, &mut s.att)?;
                        lap(on, &mut t, &mut bd.attention);
                        continue;
                    }
                    Layer::Split(l) => l,
                };
                b.rms_norm(&s.x, &l.attn_norm, c.rms_eps, n, dim, &mut s.xb);
                lap(on, &mut t, &mut bd.norms);
                b.matmul_many(
                    &[&l.wq, &l.wk, &l.wv],
                    &s.xb,
                    n,
                    &mut [&mut s.q, &mut s.k, &mut s.v],
                );
                if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
                    b.add_bias(&mut s.q, bq, n, dim);
                    b.add_bias(&mut s.k, bk, n, kvd);
                    b.add_bias(&mut s.v, bv, n, kvd);
                }
                lap(on, &mut t, &mut bd.attention);
                b.rope(c, &mut s.q, c.n_heads, &paged);
                b.rope(c, &mut s.k, c.n_kv_heads, &paged);
                lap(on, &mut t, &mut bd.rope);
                b.attention(c, pool, li, &s.q, &s.k, &s.v, &paged, &mut s.att);
                b.matmul(&l.wo, &s.att, n, &mut s.xb);
                b.add(&mut s.x, &s.xb, n * dim);
                lap(on, &mut t, &mut bd.attention);

                b.rms_norm(&s.x, &l.ffn_norm, c.rms_eps, n, dim, &mut s.xb);
                lap(on, &mut t, &mut bd.norms);
                b.feed_forward(
                    &l.w_gate,
                    &l.w_up,
                    &l.w_down,
                    &mut s.xb,
                    n,
                    c.ffn_dim,
                    &mut s.gate,
                    &mut s.up,
                );
                b.add(&mut s.x, &s.xb, n * dim);
                lap(on, &mut t, &mut bd.ffn);
            }
            if r > 0 {
                let head = self.output.as_ref().unwrap_or(&self.tok_embd);
                b.gather_rows(&s.x, &s.rows, dim, &mut s.last);
                lap(on, &mut t, &mut bd.output_head);
                b.rms_norm(&s.last, &self.output_norm, c.rms_eps, r, dim, &mut s.xb);
                lap(on, &mut t, &mut bd.norms);
                if mode != Logits::Hidden {
                    b.matmul(head, &s.xb, r, &mut s.logits_dev);
                }
            }
            b.end_record()?;
        }
        s.logit_rows = wanted_rows;
        if mode == Logits::Keep {
            s.logits.clear();
            s.argmax.clear();
        } else if mode == Logits::Hidden {
            s.argmax.clear();
            s.logits.resize(r * dim, 0.0);
            b.read(&s.xb, &mut s.logits);
        } else if r > 0 && matches!(mode, Logits::Greedy | Logits::GreedyAll) {
            s.logits.clear();
            b.argmax(&s.logits_dev, r, c.vocab_size, &mut s.argmax);
        } else {
            s.argmax.clear();
            s.logits.resize(r * c.vocab_size, 0.0);
            if r > 0 {
                b.read(&s.logits_dev, &mut s.logits);
            }
        }
        lap(on, &mut t, &mut bd.output_head);
        b.finish()?;
        if on {
            s.breakdown = Some(bd);
        }
        Ok(())
    }

    /// Chooses one token for each row of logits the last pass (run with [`Logits::Keep`])
    /// computed, where the logits are (see [`crate::sample`]); `rows` holds one entry per
    /// such row.
    pub fn sample(
        &self,
        state: &mut State<B>,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        self.sample_start(state, rows, adjust, masks)?;
        self.sample_wait(state, out)
    }

    /// [`Model::sample`] without waiting for the tokens, which [`Model::sample_wait`] then
    /// gives: on a device that works apart from the host, the host is free in between.
    pub fn sample_start(
        &self,
        state: &mut State<B>,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> Result<(), ModelError> {
        if rows.len() != state.logit_rows {
            return Err(ModelError::Input(format!(
                "{} sampling rows for {} rows of logits",
                rows.len(),
                state.logit_rows
            )));
        }
        if let Some(r) = rows.iter().find(|r| {
            r.adjust.0 as usize + r.adjust.1 as usize > adjust.len()
                || r.logprobs.is_some_and(|n| n as usize > MAX_TOP_LOGPROBS)
        }) {
            return Err(ModelError::Input(format!(
                "a sampling row asks for adjustments {:?} of {} or {:?} log-probabilities",
                r.adjust,
                adjust.len(),
                r.logprobs
            )));
        }
        let words = crate::sample::mask_words(self.cfg.vocab_size);
        if let Some(m) = rows
            .iter()
            .filter_map(|r| r.mask)
            .find(|&m| (m as usize + 1) * words > masks.len())
        {
            return Err(ModelError::Input(format!(
                "a sampling row asks for mask {m} of {} words ({words} words a row)",
                masks.len()
            )));
        }
        state.sampled.clear();
        state.sampling = false;
        if !rows.is_empty() {
            let logits = &mut state.logits_dev;
            let width = self.cfg.vocab_size;
            state.sampling = self
                .backend
                .sample_start(logits, width, rows, adjust, masks);
            if !state.sampling {
                self.backend
                    .sample(logits, width, rows, adjust, masks, &mut state.sampled);
            }
        }
        Ok(())
    }

    /// The tokens of [`Model::sample_start`], once the device has them; reports the first
    /// error of the pass and of the sampling.
    pub fn sample_wait(
        &self,
        state: &mut State<B>,
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        out.clear();
        if std::mem::take(&mut state.sampling) {
            self.backend.sample_wait(out);
        } else {
            out.append(&mut state.sampled);
        }
        self.backend.finish()
    }
}
