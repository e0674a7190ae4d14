//! The small interface a compute backend implements; the decoder is written once against it.

use std::sync::Arc;

use kiln_formats::gguf::{GgmlType, GgufFile};

use crate::sample::{Adjust, RowSampling, Sampled};
use crate::{ModelConfig, ModelError};

/// Where a weight tensor's bytes live.
#[derive(Clone)]
pub enum TensorBytes {
    /// A range of a memory-mapped model file: used in place, never copied.
    Mapped {
        /// The open file.
        file: Arc<GgufFile>,
        /// Byte offset of the range.
        offset: usize,
        /// Byte length of the range.
        len: usize,
    },
    /// Bytes held in memory (converted or generated weights).
    Owned(Arc<Vec<u8>>),
    /// A range of some other shared buffer (a memory-mapped safetensors file): used in place.
    Shared {
        /// The buffer.
        buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
        /// Byte offset of the range.
        offset: usize,
        /// Byte length of the range.
        len: usize,
    },
}

impl TensorBytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            TensorBytes::Mapped { file, offset, len } => {
                let info_bytes = file.bytes();
                &info_bytes[*offset..*offset + *len]
            }
            TensorBytes::Owned(v) => v,
            TensorBytes::Shared { buf, offset, len } => {
                let b: &[u8] = (**buf).as_ref();
                &b[*offset..*offset + *len]
            }
        }
    }
}

/// A 2-D weight matrix (`rows` outputs by `cols` inputs) in one of the ggml block formats.
#[derive(Clone)]
pub struct RawTensor {
    /// Name, for error messages.
    pub name: String,
    /// Block format.
    pub ty: GgmlType,
    /// Number of rows (outputs).
    pub rows: usize,
    /// Row length (inputs).
    pub cols: usize,
    /// The data, `rows * ty.bytes_for(cols)` bytes.
    pub data: TensorBytes,
}

impl std::fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} [{} x {}]",
            self.name,
            self.ty.name(),
            self.rows,
            self.cols
        )
    }
}

impl RawTensor {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.ty.bytes_for(self.cols)
    }

    /// Rows `start..start + n` as a tensor of their own (used to split fused projections).
    pub fn slice_rows(&self, name: &str, start: usize, n: usize) -> Result<RawTensor, ModelError> {
        if start + n > self.rows {
            return Err(ModelError::Config(format!(
                "tensor `{}` has {} rows, cannot take rows {start}..{}",
                self.name,
                self.rows,
                start + n
            )));
        }
        let rb = self.row_bytes();
        let data = match &self.data {
            TensorBytes::Mapped { file, offset, .. } => TensorBytes::Mapped {
                file: file.clone(),
                offset: offset + start * rb,
                len: n * rb,
            },
            TensorBytes::Owned(v) => {
                TensorBytes::Owned(Arc::new(v[start * rb..(start + n) * rb].to_vec()))
            }
            TensorBytes::Shared { buf, offset, .. } => TensorBytes::Shared {
                buf: buf.clone(),
                offset: offset + start * rb,
                len: n * rb,
            },
        };
        Ok(RawTensor {
            name: name.to_owned(),
            ty: self.ty,
            rows: n,
            cols: self.cols,
            data,
        })
    }

    /// The whole tensor decoded to f32, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>, ModelError> {
        let mut out = vec![0f32; self.rows * self.cols];
        kiln_formats::gguf::quant::dequantize(self.ty, self.data.as_slice(), &mut out)
            .map_err(|e| ModelError::Unsupported(format!("tensor `{}`: {e}", self.name)))?;
        Ok(out)
    }
}

/// The size a backend that records passes pads a decoding pass of `rows` sequences to (see
/// [`Backend::decode_rows`]): up to 8 as they are (the sizes whose speed single users and
/// small batches see), then rounded up to a multiple of an eighth of the next power of two
/// (9 to 16 by 2, to 32 by 4, to 64 by 8, ...): fewer than a quarter more rows, and four
/// sizes for each doubling.
pub fn padded_decode_rows(rows: usize) -> usize {
    if rows <= 8 {
        return rows;
    }
    let step = rows.next_power_of_two() / 8;
    rows.div_ceil(step) * step
}

/// One sequence's rows in a batched pass, for attention over the paged KV pool.
#[derive(Debug, Clone, Copy)]
pub struct PagedSeq<'a> {
    /// First row of this sequence in the batch's activations.
    pub row0: usize,
    /// Number of rows (tokens) of this sequence in the batch.
    pub n: usize,
    /// Position of the first of those tokens.
    pub pos0: usize,
    /// Block table: position `p` lives in block `blocks[p / block_size]`.
    pub blocks: &'a [u32],
}

/// Host memory from [`Backend::host_words`]: words a backend uploads without a copy.
pub trait HostWords: Send {
    /// The words.
    fn words(&self) -> &[u32];
    /// The words, to write.
    fn words_mut(&mut self) -> &mut [u32];
}

/// A compute backend: owns its buffers and kernels. The decoder calls these operations in
/// order and never looks inside the buffers.
///
/// Activations are row-major `[n_tokens, width]` buffers of f32 values. The KV cache is a
/// pool of fixed-size blocks shared by every sequence; sequences address it through block
/// tables.
///
/// The methods come in five groups, in this order below: the device; memory (weights,
/// activations, the KV pool); the operations of a layer; choosing tokens; the pass (metadata,
/// recorded passes, errors) and fused layers. A new backend writes the first three groups
/// (18 methods); the last two have defaults that do the work on the host or do nothing, and
/// a backend overrides them only for its own speed (the CUDA backend samples on the device,
/// replays CUDA graphs and runs whole layers fused).
pub trait Backend: Send + Sync + Sized + 'static {
    /// An activation buffer.
    type Act: Send;
    /// A weight matrix.
    type Mat: Send + Sync;
    /// A pool of KV blocks (every layer's keys and values).
    type KvPool: Send;

    // ---- The device -----------------------------------------------------------------------------

    /// A short description (device, threads, features), for logs and benchmarks.
    fn describe(&self) -> String;
    /// A second backend on the same device for another model run in turn with this one's
    /// (a draft model): on the CPU the same threads, on a GPU the same GPU.
    fn sibling(&self) -> Result<Self, ModelError>;
    /// What the device's own memory holds, on a device with memory apart from the host's
    /// (a GPU holds an uploaded copy of the weights); `None` where the weights are read in
    /// place from the file's mapping (the CPU).
    fn memory(&self) -> Option<DeviceMemory> {
        None
    }
    // ---- Memory: weights, activations, the KV pool ----------------------------------------------

    /// Takes a weight matrix into the backend's own layout (in place where it can).
    fn matrix(&self, t: RawTensor) -> Result<Self::Mat, ModelError>;
    /// An activation buffer holding `data` (norm weights, biases).
    fn vector(&self, data: &[f32]) -> Result<Self::Act, ModelError>;
    /// A zeroed activation buffer of `len` values.
    fn act(&self, len: usize) -> Result<Self::Act, ModelError>;
    /// A KV pool of `n_blocks` blocks of `block_size` positions.
    fn kv_pool(
        &self,
        cfg: &ModelConfig,
        n_blocks: usize,
        block_size: usize,
    ) -> Result<Self::KvPool, ModelError>;
    /// Bytes one KV block takes (all layers, keys and values).
    fn kv_block_bytes(&self, cfg: &ModelConfig, block_size: usize) -> usize;

    // ---- The operations of a layer --------------------------------------------------------------

    /// `out[t] = table[tokens[t]]`.
    fn embed(&self, table: &Self::Mat, tokens: &[u32], out: &mut Self::Act);
    /// `out[t] = x[t] / rms(x[t]) * w` over rows of width `dim`.
    fn rms_norm(
        &self,
        x: &Self::Act,
        w: &Self::Act,
        eps: f32,
        n: usize,
        dim: usize,
        out: &mut Self::Act,
    );
    /// `out[t] = W x[t]` for `n` rows of `x`.
    fn matmul(&self, w: &Self::Mat, x: &Self::Act, n: usize, out: &mut Self::Act);
    /// [`Backend::matmul`] of several matrices with the same input (`outs[i] = ws[i] x`): a
    /// backend may prepare the input once and run them as one piece of work.
    fn matmul_many(&self, ws: &[&Self::Mat], x: &Self::Act, n: usize, outs: &mut [&mut Self::Act]) {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, n, out);
        }
    }
    /// `x[t] += b` for `n` rows of width `b.len()`.
    fn add_bias(&self, x: &mut Self::Act, b: &Self::Act, n: usize, width: usize);
    /// Rotary position embedding of the rows of each sequence, `heads` heads per row.
    fn rope(&self, cfg: &ModelConfig, x: &mut Self::Act, heads: usize, seqs: &[PagedSeq<'_>]);
    /// Writes each row's `k`, `v` into layer `layer` of the pool at its position, then
    /// writes causal grouped-query attention of `q` over the sequence's positions
    /// `0..=pos` into `out`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        cfg: &ModelConfig,
        pool: &mut Self::KvPool,
        layer: usize,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        seqs: &[PagedSeq<'_>],
        out: &mut Self::Act,
    );
    /// Copies block `src` of the pool into block `dst`, every layer.
    fn copy_kv_block(&self, pool: &mut Self::KvPool, src: u32, dst: u32);
    /// `gate = silu(gate) * up` elementwise over `len` values.
    fn swiglu(&self, gate: &mut Self::Act, up: &Self::Act, len: usize);
    /// The feed-forward block's first half for `n` rows of `x`: `gate = w_gate x`,
    /// `up = w_up x`, then `gate = silu(gate) * up` (`w_gate` and `w_up` of `ffn` rows each).
    /// A backend may run it as one piece of work.
    #[allow(clippy::too_many_arguments)]
    fn matmul_swiglu(
        &self,
        w_gate: &Self::Mat,
        w_up: &Self::Mat,
        x: &Self::Act,
        n: usize,
        ffn: usize,
        gate: &mut Self::Act,
        up: &mut Self::Act,
    ) {
        self.matmul_many(&[w_gate, w_up], x, n, &mut [&mut *gate, &mut *up]);
        self.swiglu(gate, up, n * ffn);
    }
    /// The whole feed-forward block for `n` rows of `x`: [`Backend::matmul_swiglu`] into
    /// `gate` (and `up`), then `x = w_down gate` (`w_down` of `ffn` columns): the block's
    /// output takes its input's place. A backend may run it as fewer pieces of work.
    #[allow(clippy::too_many_arguments)]
    fn feed_forward(
        &self,
        w_gate: &Self::Mat,
        w_up: &Self::Mat,
        w_down: &Self::Mat,
        x: &mut Self::Act,
        n: usize,
        ffn: usize,
        gate: &mut Self::Act,
        up: &mut Self::Act,
    ) {
        self.matmul_swiglu(w_gate, w_up, x, n, ffn, gate, up);
        self.matmul(w_down, gate, n, x);
    }
    /// `x += y` over `len` values.
    fn add(&self, x: &mut Self::Act, y: &Self::Act, len: usize);
    /// `out[i] = x[rows[i]]` for rows of width `width`.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize], width: usize, out: &mut Self::Act);
    /// Reads the first `out.len()` values back to the host.
    fn read(&self, x: &Self::Act, out: &mut [f32]);

    // ---- Choosing tokens (defaults: on the host, from logits read back) -------------------------

    /// The index of the largest value of each of `rows` rows of width `width` (the lowest
    /// index among equals): greedy decoding without reading the logits back.
    fn argmax(&self, x: &Self::Act, rows: usize, width: usize, out: &mut Vec<u32>) {
        let mut v = vec![0f32; rows * width];
        self.read(x, &mut v);
        out.clear();
        out.extend(v.chunks_exact(width.max(1)).map(|r| {
            let mut best = 0;
            for (i, &x) in r.iter().enumerate() {
                if x > r[best] {
                    best = i;
                }
            }
            best as u32
        }));
    }

    /// Chooses one token per row of `logits` (`rows.len()` rows of `width` values) where the
    /// logits are, following [`crate::sample`]; only the results come back to the host. The
    /// adjustments of row `i` are `adjust[rows[i].adjust]`, its mask row `rows[i].mask` of `masks`
    /// ([`crate::sample::mask_row`]); both may be applied to `logits` in
    /// place. This default reads the logits back and samples on the host.
    fn sample(
        &self,
        logits: &mut Self::Act,
        width: usize,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) {
        let mut v = vec![0f32; rows.len() * width];
        self.read(logits, &mut v);
        let mut s = crate::sample::Scratch::default();
        crate::sample::sample_rows(&mut v, width, rows, adjust, masks, out, &mut s);
    }

    /// Whether operations return before the device has done them (a GPU's stream), so that
    /// the host can prepare other work while a pass runs.
    fn asynchronous(&self) -> bool {
        false
    }

    /// On a backend that is [`Backend::asynchronous`]: whether the device has done all the
    /// work given to it so far, asked without waiting. `false` when it cannot tell (the
    /// default): the caller then waits for whatever it waits for as if it had not.
    fn work_done(&self) -> bool {
        false
    }

    /// Runs `f(part, parts)` for every part `0..parts` on the threads that run this
    /// backend's operations on the host, and returns when all are done (host work between
    /// passes, such as the output constraints' masks: a CPU backend's threads hold the
    /// cores, so work beside them would only take turns with them). `parts` is the backend's
    /// choice, 1 by default (here, on the caller's thread).
    fn host_run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        f(0, 1);
    }

    /// [`Backend::sample`] in two halves, for a device that works apart from the host: this
    /// half starts it and returns `true`, and [`Backend::sample_wait`] gives the tokens once
    /// the device has them, so that the host can do other work meanwhile. `false` (this
    /// default): nothing was started, and the caller uses `sample`.
    fn sample_start(
        &self,
        logits: &mut Self::Act,
        width: usize,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> bool {
        let _ = (logits, width, rows, adjust, masks);
        false
    }

    /// The tokens (and log-probabilities asked for) of the sampling that
    /// [`Backend::sample_start`] started, waiting for the device as needed.
    fn sample_wait(&self, out: &mut Vec<Sampled>) {
        out.clear();
    }

    /// `n` words of host memory that [`Backend::sample_start`] reads token masks from without
    /// copying them first (page-locked memory, which a GPU's copy engine reads while the host
    /// goes on): masks written there by the host's threads go to the device as they are. The
    /// words must then stay unchanged from `sample_start` until [`Backend::sample_wait`]
    /// returns. `None` (this default): a device that has no such memory; any memory works.
    fn host_words(&self, n: usize) -> Option<Box<dyn HostWords>> {
        let _ = n;
        None
    }

    // ---- The pass and fused layers (defaults: nothing recorded, nothing fused) ------------------

    /// Called once at the start of every pass with the whole batch: a backend that keeps
    /// the pass's metadata (token ids, positions, block tables, rows wanted for logits) on
    /// its device uploads it here, and its operations may then read that copy instead of
    /// their host-side arguments. `max_tokens` is the state's capacity.
    fn begin_pass(
        &self,
        _cfg: &ModelConfig,
        _max_tokens: usize,
        _tokens: &[u32],
        _seqs: &[PagedSeq<'_>],
        _rows: &[usize],
    ) -> Result<(), ModelError> {
        Ok(())
    }

    /// How many rows a decoding pass of `rows` sequences (one token each, every row's logits
    /// kept for sampling) runs: a backend that records passes may run a few more, copies of
    /// the last sequence's row whose results are dropped, so that passes of nearby sizes
    /// replay one recording (a batch whose size changes step to step, as sequences end and
    /// sit steps out, would otherwise run unrecorded passes and record new ones). Default:
    /// `rows`.
    fn decode_rows(&self, rows: usize) -> usize {
        rows
    }

    /// A backend that records passes (CUDA graphs) replays the one recorded under `key` and
    /// returns `true`; the decoder then skips the operations of the pass body. Otherwise it
    /// may start recording under `key` and returns `false`; the decoder runs the body and
    /// calls [`Backend::end_record`].
    fn replay(&self, _key: PassKey, _pool: &Self::KvPool) -> Result<bool, ModelError> {
        Ok(false)
    }

    /// Ends the recording started by [`Backend::replay`] (if any) and runs what was recorded.
    fn end_record(&self) -> Result<(), ModelError> {
        Ok(())
    }

    /// Reports the first error of an operation since the last call (operations of an
    /// asynchronous device cannot return one).
    fn finish(&self) -> Result<(), ModelError> {
        Ok(())
    }

    /// Several weight matrices of the same row length stacked by rows into one (q|k|v,
    /// gate|up), with an optional bias for every row, for backends with fused layers. `None`:
    /// this backend runs the parts separately.
    fn stack(
        &self,
        _name: &str,
        _parts: &[&RawTensor],
        _bias: Option<&[f32]>,
    ) -> Result<Option<Self::Mat>, ModelError> {
        Ok(None)
    }

    /// One whole decoder layer over the pass's `n` rows of `x` (updated in place) with the
    /// stacked weights of [`Backend::stack`]; `att` is scratch of `n * dim` values. Only
    /// called on a backend whose `stack` returned matrices.
    #[allow(clippy::too_many_arguments)]
    fn fused_layer(
        &self,
        _cfg: &ModelConfig,
        _l: FusedRef<'_, Self>,
        _layer: usize,
        _pool: &mut Self::KvPool,
        _n: usize,
        _x: &mut Self::Act,
        _att: &mut Self::Act,
    ) -> Result<(), ModelError> {
        Err(ModelError::Unsupported(format!(
            "{} has no fused layers",
            self.describe()
        )))
    }
}

/// Memory of a device apart from the host's (see [`Backend::memory`]), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// What the model's weights take there.
    pub weights: usize,
    /// In use on the device now (by every process), when the device tells.
    pub in_use: Option<usize>,
    /// The device's total, when it tells.
    pub total: Option<usize>,
}

/// What identifies a recorded pass (with the KV pool it ran on): the state and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PassKey {
    /// The state's identity (unique in the process).
    pub state: u64,
    /// Rows (tokens) in the pass.
    pub rows: usize,
    /// Rows of logits.
    pub logit_rows: usize,
}

/// A decoder layer's stacked weights, borrowed (what [`Backend::fused_layer`] takes).
pub struct FusedRef<'a, B: Backend> {
    /// Attention RMSNorm weights.
    pub attn_norm: &'a B::Act,
    /// q, k and v projections stacked (with their biases).
    pub qkv: &'a B::Mat,
    /// Attention output projection.
    pub wo: &'a B::Mat,
    /// FFN RMSNorm weights.
    pub ffn_norm: &'a B::Act,
    /// Gate and up projections stacked.
    pub gate_up: &'a B::Mat,
    /// Down projection.
    pub down: &'a B::Mat,
    /// The next layer's attention RMSNorm weights, when the next layer is fused too (its
    /// first product takes this layer's output: a backend may prepare it while writing it).
    pub next_norm: Option<&'a B::Act>,
}

impl<B: Backend> FusedLayer<B> {
    /// The layer, borrowed, with the layer after it (if fused).
    pub fn borrowed<'a>(&'a self, next: Option<&'a FusedLayer<B>>) -> FusedRef<'a, B> {
        FusedRef {
            attn_norm: &self.attn_norm,
            qkv: &self.qkv,
            wo: &self.wo,
            ffn_norm: &self.ffn_norm,
            gate_up: &self.gate_up,
            down: &self.down,
            next_norm: next.map(|n| &n.attn_norm),
        }
    }
}

/// A decoder layer's weights in stacked form (see [`Backend::stack`]).
pub struct FusedLayer<B: Backend> {
    /// Attention RMSNorm weights.
    pub attn_norm: B::Act,
    /// q, k and v projections stacked (with their biases).
    pub qkv: B::Mat,
    /// Attention output projection.
    pub wo: B::Mat,
    /// FFN RMSNorm weights.
    pub ffn_norm: B::Act,
    /// Gate and up projections stacked.
    pub gate_up: B::Mat,
    /// Down projection.
    pub down: B::Mat,
}

#[cfg(test)]
mod padding {
    use super::padded_decode_rows;

    #[test]
    fn decoding_passes_pad_to_a_few_sizes() {
        let mut sizes = std::collections::BTreeSet::new();
        for rows in 1..=64 {
            let p = padded_decode_rows(rows);
            assert!(
                p >= rows && 4 * (p - rows) < rows,
                "{rows} rows padded to {p}"
            );
            assert_eq!(padded_decode_rows(p), p, "{p} rows are padded again");
            sizes.insert(p);
        }
        assert!((1..=8).all(|r| padded_decode_rows(r) == r));
        assert_eq!(sizes.len(), 20, "{sizes:?}");
        assert_eq!(padded_decode_rows(65), 80);
        assert_eq!(padded_decode_rows(200), 224);
    }
}
