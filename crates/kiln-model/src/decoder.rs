//! The decoder: one forward pass for Llama, Qwen2 and Phi-3, written against [`Backend`].

use crate::backend::Backend;
use crate::weights::Weights;
use crate::{ModelConfig, ModelError};

struct Layer<B: Backend> {
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

/// Scratch buffers for forward passes of up to `max_tokens` tokens at once; allocated once.
pub struct State<B: Backend> {
    max_tokens: usize,
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
    /// Logits of the last forward pass (`n_logit_rows * vocab`).
    pub logits: Vec<f32>,
    all_logits: bool,
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
            layers.push(Layer {
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
            });
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

    /// Scratch space for passes of up to `max_tokens` tokens; `all_logits` makes room for
    /// every token's logits (teacher forcing, scoring) instead of the last one's.
    pub fn new_state(&self, max_tokens: usize, all_logits: bool) -> Result<State<B>, ModelError> {
        let c = &self.cfg;
        let m = max_tokens.max(1);
        let b = &self.backend;
        Ok(State {
            max_tokens: m,
            x: b.act(m * c.dim)?,
            xb: b.act(m * c.dim)?,
            q: b.act(m * c.dim)?,
            k: b.act(m * c.kv_dim())?,
            v: b.act(m * c.kv_dim())?,
            att: b.act(m * c.dim)?,
            gate: b.act(m * c.ffn_dim)?,
            up: b.act(m * c.ffn_dim)?,
            last: b.act(c.dim)?,
            logits_dev: b.act(if all_logits { m } else { 1 } * c.vocab_size)?,
            logits: Vec::new(),
            all_logits,
        })
    }

    /// A key/value cache for one sequence of up to `capacity` tokens.
    pub fn new_kv(&self, capacity: usize) -> Result<B::Kv, ModelError> {
        self.backend.kv_cache(&self.cfg, capacity)
    }

    /// Runs `tokens` at positions `pos0..`, appending to `kv`. Fills `state.logits` with the
    /// last token's logits, or with every token's when `all_logits` is set.
    pub fn forward(
        &self,
        state: &mut State<B>,
        kv: &mut B::Kv,
        kv_capacity: usize,
        tokens: &[u32],
        pos0: usize,
        all_logits: bool,
    ) -> Result<(), ModelError> {
        let c = &self.cfg;
        let n = tokens.len();
        if n == 0 {
            return Err(ModelError::Input("no tokens to run".into()));
        }
        if n > state.max_tokens {
            return Err(ModelError::Input(format!(
                "{n} tokens in one pass, more than the {} the state was made for",
                state.max_tokens
            )));
        }
        if all_logits && !state.all_logits {
            return Err(ModelError::Input(
                "every token's logits asked of a state made for the last token's only".into(),
            ));
        }
        if pos0 + n > kv_capacity {
            return Err(ModelError::ContextFull {
                needed: pos0 + n,
                capacity: kv_capacity,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let b = &self.backend;
        let (dim, kvd) = (c.dim, c.kv_dim());
        let s = state;
        b.embed(&self.tok_embd, tokens, &mut s.x);
        for (li, l) in self.layers.iter().enumerate() {
            b.rms_norm(&s.x, &l.attn_norm, c.rms_eps, n, dim, &mut s.xb);
            b.matmul(&l.wq, &s.xb, n, &mut s.q);
            b.matmul(&l.wk, &s.xb, n, &mut s.k);
            b.matmul(&l.wv, &s.xb, n, &mut s.v);
            if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
                b.add_bias(&mut s.q, bq, n, dim);
                b.add_bias(&mut s.k, bk, n, kvd);
                b.add_bias(&mut s.v, bv, n, kvd);
            }
            b.rope(c, &mut s.q, c.n_heads, pos0, n);
            b.rope(c, &mut s.k, c.n_kv_heads, pos0, n);
            b.attention(c, kv, li, &s.q, &s.k, &s.v, pos0, n, &mut s.att);
            b.matmul(&l.wo, &s.att, n, &mut s.xb);
            b.add(&mut s.x, &s.xb, n * dim);

            b.rms_norm(&s.x, &l.ffn_norm, c.rms_eps, n, dim, &mut s.xb);
            b.matmul(&l.w_gate, &s.xb, n, &mut s.gate);
            b.matmul(&l.w_up, &s.xb, n, &mut s.up);
            b.swiglu(&mut s.gate, &s.up, n * c.ffn_dim);
            b.matmul(&l.w_down, &s.gate, n, &mut s.xb);
            b.add(&mut s.x, &s.xb, n * dim);
        }
        let head = self.output.as_ref().unwrap_or(&self.tok_embd);
        let rows = if all_logits { n } else { 1 };
        if all_logits {
            b.rms_norm(&s.x, &self.output_norm, c.rms_eps, n, dim, &mut s.xb);
            b.matmul(head, &s.xb, n, &mut s.logits_dev);
        } else {
            b.copy_row(&s.x, n - 1, dim, &mut s.last);
            b.rms_norm(&s.last, &self.output_norm, c.rms_eps, 1, dim, &mut s.xb);
            b.matmul(head, &s.xb, 1, &mut s.logits_dev);
        }
        s.logits.resize(rows * c.vocab_size, 0.0);
        b.read(&s.logits_dev, &mut s.logits);
        Ok(())
    }
}
