//! The decoder's weights as the model file stores them, before any backend takes them in.

use std::sync::Arc;

use kiln_formats::gguf::GgufFile;

use crate::backend::{RawTensor, TensorBytes};
use crate::config::Arch;
use crate::{ModelConfig, ModelError};

/// One transformer block's weights.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection.
    pub wq: RawTensor,
    /// Key projection.
    pub wk: RawTensor,
    /// Value projection.
    pub wv: RawTensor,
    /// Biases of q, k, v (Qwen2).
    pub bq: Option<Vec<f32>>,
    /// Key bias.
    pub bk: Option<Vec<f32>>,
    /// Value bias.
    pub bv: Option<Vec<f32>>,
    /// Attention output projection.
    pub wo: RawTensor,
    /// RMSNorm before the feed-forward block.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate projection.
    pub w_gate: RawTensor,
    /// SwiGLU up projection.
    pub w_up: RawTensor,
    /// Down projection.
    pub w_down: RawTensor,
}

/// All weights of a decoder.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding table (`vocab` rows of `dim`).
    pub tok_embd: RawTensor,
    /// Final RMSNorm.
    pub output_norm: Vec<f32>,
    /// Output head; `None` when tied to the embedding.
    pub output: Option<RawTensor>,
    /// The blocks.
    pub layers: Vec<LayerWeights>,
}

/// Where the decoder's tensors come from: a GGUF file, a Hugging Face folder, or either with
/// an adapter merged in. Names are GGUF's (`blk.0.attn_q.weight`); each source maps its own.
pub trait TensorSource {
    /// The file or folder, for error messages.
    fn describe(&self) -> String;
    /// Whether the source holds `name`.
    fn has(&self, name: &str) -> bool;
    /// A weight matrix (`rows` outputs by `cols` inputs).
    fn matrix(&self, name: &str) -> Result<RawTensor, ModelError>;
    /// A vector (norm weights, biases) as f32.
    fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError>;
}

/// A GGUF file as a [`TensorSource`]: tensors stay in the memory map.
pub struct GgufSource(pub Arc<GgufFile>);

impl TensorSource for GgufSource {
    fn describe(&self) -> String {
        self.0.path().display().to_string()
    }

    fn has(&self, name: &str) -> bool {
        self.0.has_tensor(name)
    }

    fn matrix(&self, name: &str) -> Result<RawTensor, ModelError> {
        let f = &self.0;
        let info = f.tensor(name)?;
        if info.dims.len() > 2 && info.dims[2..].iter().any(|&d| d != 1) {
            return Err(ModelError::Config(format!(
                "{}: tensor `{name}` has shape {:?}, expected a matrix",
                f.path().display(),
                info.dims
            )));
        }
        Ok(RawTensor {
            name: name.to_owned(),
            ty: info.ty,
            rows: info.n_rows(),
            cols: info.row_len(),
            data: TensorBytes::Mapped {
                file: f.clone(),
                offset: info.offset as usize,
                len: info.size as usize,
            },
        })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.0.tensor_f32(name)?)
    }
}

fn expect_shape(
    src: &dyn TensorSource,
    t: &RawTensor,
    rows: usize,
    cols: usize,
) -> Result<(), ModelError> {
    if t.rows != rows || t.cols != cols {
        return Err(ModelError::Config(format!(
            "{}: tensor `{}` is {} x {}, expected {rows} x {cols} from the model's configuration",
            src.describe(),
            t.name,
            t.rows,
            t.cols
        )));
    }
    Ok(())
}

fn vector(src: &dyn TensorSource, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let v = src.vector(name)?;
    if v.len() != len {
        return Err(ModelError::Config(format!(
            "{}: tensor `{name}` has {} values, expected {len}",
            src.describe(),
            v.len()
        )));
    }
    Ok(v)
}

impl Weights {
    /// Finds every tensor the decoder needs in a GGUF file and checks its shape.
    pub fn from_gguf(f: &Arc<GgufFile>, cfg: &ModelConfig) -> Result<Self, ModelError> {
        Self::from_source(&GgufSource(f.clone()), cfg)
    }

    /// Finds every tensor the decoder needs in `src` and checks its shape. Fused projections
    /// (`attn_qkv`, a double-height `ffn_up`) are split into views of their rows.
    pub fn from_source(src: &dyn TensorSource, cfg: &ModelConfig) -> Result<Self, ModelError> {
        let (dim, kvd, ffn) = (cfg.dim, cfg.kv_dim(), cfg.ffn_dim);
        let tok_embd = src.matrix("token_embd.weight")?;
        expect_shape(src, &tok_embd, cfg.vocab_size, dim)?;
        let output = if src.has("output.weight") {
            let o = src.matrix("output.weight")?;
            expect_shape(src, &o, cfg.vocab_size, dim)?;
            Some(o)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let (wq, wk, wv) = if cfg.arch == Arch::Phi3 && src.has(&n("attn_qkv.weight")) {
                let qkv = src.matrix(&n("attn_qkv.weight"))?;
                expect_shape(src, &qkv, dim + 2 * kvd, dim)?;
                (
                    qkv.slice_rows(&n("attn_q.weight"), 0, dim)?,
                    qkv.slice_rows(&n("attn_k.weight"), dim, kvd)?,
                    qkv.slice_rows(&n("attn_v.weight"), dim + kvd, kvd)?,
                )
            } else {
                (
                    src.matrix(&n("attn_q.weight"))?,
                    src.matrix(&n("attn_k.weight"))?,
                    src.matrix(&n("attn_v.weight"))?,
                )
            };
            expect_shape(src, &wq, dim, dim)?;
            expect_shape(src, &wk, kvd, dim)?;
            expect_shape(src, &wv, kvd, dim)?;
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                if cfg.qkv_bias {
                    Ok(Some(vector(src, &n(s), len)?))
                } else {
                    Ok(None)
                }
            };
            let wo = src.matrix(&n("attn_output.weight"))?;
            expect_shape(src, &wo, dim, dim)?;
            let (w_gate, w_up) = if src.has(&n("ffn_gate.weight")) {
                (
                    src.matrix(&n("ffn_gate.weight"))?,
                    src.matrix(&n("ffn_up.weight"))?,
                )
            } else {
                let up = src.matrix(&n("ffn_up.weight"))?;
                expect_shape(src, &up, 2 * ffn, dim)?;
                (
                    up.slice_rows(&n("ffn_gate.weight"), 0, ffn)?,
                    up.slice_rows(&n("ffn_up.weight"), ffn, ffn)?,
                )
            };
            expect_shape(src, &w_gate, ffn, dim)?;
            expect_shape(src, &w_up, ffn, dim)?;
            let w_down = src.matrix(&n("ffn_down.weight"))?;
            expect_shape(src, &w_down, dim, ffn)?;
            layers.push(LayerWeights {
                attn_norm: vector(src, &n("attn_norm.weight"), dim)?,
                wq,
                wk,
                wv,
                bq: bias("attn_q.bias", dim)?,
                bk: bias("attn_k.bias", kvd)?,
                bv: bias("attn_v.bias", kvd)?,
                wo,
                ffn_norm: vector(src, &n("ffn_norm.weight"), dim)?,
                w_gate,
                w_up,
                w_down,
            });
        }
        Ok(Weights {
            tok_embd,
            output_norm: vector(src, "output_norm.weight", dim)?,
            output,
            layers,
        })
    }

    /// Every weight matrix, for passes that transform them all (quantization, statistics).
    pub fn matrices_mut(&mut self) -> Vec<&mut RawTensor> {
        let mut v = vec![&mut self.tok_embd];
        if let Some(o) = self.output.as_mut() {
            v.push(o);
        }
        for l in &mut self.layers {
            v.extend([
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.w_gate,
                &mut l.w_up,
                &mut l.w_down,
            ]);
        }
        v
    }

    /// Bytes the weights take, matrices and vectors together.
    pub fn bytes(&self) -> usize {
        let mats = |t: &RawTensor| t.rows * t.row_bytes();
        let vecs = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, |v| v.len() * 4);
        let mut n = mats(&self.tok_embd)
            + self.output.as_ref().map_or(0, mats)
            + self.output_norm.len() * 4;
        for l in &self.layers {
            n += [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .into_iter()
                .map(mats)
                .sum::<usize>();
            n += (l.attn_norm.len() + l.ffn_norm.len()) * 4
                + vecs(&l.bq)
                + vecs(&l.bk)
                + vecs(&l.bv);
        }
        n
    }
}
