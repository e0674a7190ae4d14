//! The decoder's weights as the model file stores them, before any backend takes them in.

use std::sync::Arc;

use kiln_gguf::GgufFile;

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

fn raw(f: &Arc<GgufFile>, name: &str) -> Result<RawTensor, ModelError> {
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

fn expect_shape(f: &GgufFile, t: &RawTensor, rows: usize, cols: usize) -> Result<(), ModelError> {
    if t.rows != rows || t.cols != cols {
        return Err(ModelError::Config(format!(
            "{}: tensor `{}` is {} x {}, expected {rows} x {cols} from the model's metadata",
            f.path().display(),
            t.name,
            t.rows,
            t.cols
        )));
    }
    Ok(())
}

fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let v = f.tensor_f32(name)?;
    if v.len() != len {
        return Err(ModelError::Config(format!(
            "{}: tensor `{name}` has {} values, expected {len}",
            f.path().display(),
            v.len()
        )));
    }
    Ok(v)
}

impl Weights {
    /// Finds every tensor the decoder needs in a GGUF file and checks its shape.
    pub fn from_gguf(f: &Arc<GgufFile>, cfg: &ModelConfig) -> Result<Self, ModelError> {
        let (dim, kvd, ffn) = (cfg.dim, cfg.kv_dim(), cfg.ffn_dim);
        let tok_embd = raw(f, "token_embd.weight")?;
        expect_shape(f, &tok_embd, cfg.vocab_size, dim)?;
        let output = if f.has_tensor("output.weight") {
            let o = raw(f, "output.weight")?;
            expect_shape(f, &o, cfg.vocab_size, dim)?;
            Some(o)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let (wq, wk, wv) = if cfg.arch == Arch::Phi3 && f.has_tensor(&n("attn_qkv.weight")) {
                let qkv = raw(f, &n("attn_qkv.weight"))?;
                expect_shape(f, &qkv, dim + 2 * kvd, dim)?;
                (
                    qkv.slice_rows(&n("attn_q.weight"), 0, dim)?,
                    qkv.slice_rows(&n("attn_k.weight"), dim, kvd)?,
                    qkv.slice_rows(&n("attn_v.weight"), dim + kvd, kvd)?,
                )
            } else {
                (
                    raw(f, &n("attn_q.weight"))?,
                    raw(f, &n("attn_k.weight"))?,
                    raw(f, &n("attn_v.weight"))?,
                )
            };
            expect_shape(f, &wq, dim, dim)?;
            expect_shape(f, &wk, kvd, dim)?;
            expect_shape(f, &wv, kvd, dim)?;
            let bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                if cfg.qkv_bias {
                    Ok(Some(vector(f, &n(s), len)?))
                } else {
                    Ok(None)
                }
            };
            let wo = raw(f, &n("attn_output.weight"))?;
            expect_shape(f, &wo, dim, dim)?;
            let (w_gate, w_up) = if f.has_tensor(&n("ffn_gate.weight")) {
                (raw(f, &n("ffn_gate.weight"))?, raw(f, &n("ffn_up.weight"))?)
            } else {
                let up = raw(f, &n("ffn_up.weight"))?;
                expect_shape(f, &up, 2 * ffn, dim)?;
                (
                    up.slice_rows(&n("ffn_gate.weight"), 0, ffn)?,
                    up.slice_rows(&n("ffn_up.weight"), ffn, ffn)?,
                )
            };
            expect_shape(f, &w_gate, ffn, dim)?;
            expect_shape(f, &w_up, ffn, dim)?;
            let w_down = raw(f, &n("ffn_down.weight"))?;
            expect_shape(f, &w_down, dim, ffn)?;
            layers.push(LayerWeights {
                attn_norm: vector(f, &n("attn_norm.weight"), dim)?,
                wq,
                wk,
                wv,
                bq: bias("attn_q.bias", dim)?,
                bk: bias("attn_k.bias", kvd)?,
                bv: bias("attn_v.bias", kvd)?,
                wo,
                ffn_norm: vector(f, &n("ffn_norm.weight"), dim)?,
                w_gate,
                w_up,
                w_down,
            });
        }
        Ok(Weights {
            tok_embd,
            output_norm: vector(f, "output_norm.weight", dim)?,
            output,
            layers,
        })
    }
}
