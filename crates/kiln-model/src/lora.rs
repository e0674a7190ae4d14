//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), merged into the
//! base weights at load time: `W' = W + (alpha / r) * B A` (or `alpha / sqrt(r)` with rsLoRA).
//!
//! The merge happens on the tensor as the base file stores it, so fused Phi-3 projections take
//! their adapter before they are split, and GGUF llama q/k rows (permuted by llama.cpp's
//! converter for interleaved RoPE) get the adapter's rows permuted the same way.
//!
//! Serving several adapters on one base without merging, chosen per request, needs the engine
//! and is not done here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use kiln_formats::gguf::GgmlType;
use serde_json::Value;

use crate::backend::{RawTensor, TensorBytes};
use crate::config::RopeStyle;
use crate::hf::{gguf_name, read_json};
use crate::weights::TensorSource;
use crate::{ModelConfig, ModelError};
use kiln_formats::safetensors::SafeTensors;

/// One adapted matrix: `delta = scale * B A`, B `[out, r]`, A `[r, in]`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// A, row-major `[r, cols]`.
    pub a: Vec<f32>,
    /// B, row-major `[rows, r]`.
    pub b: Vec<f32>,
    /// Rank.
    pub r: usize,
    /// Output rows of the adapted matrix.
    pub rows: usize,
    /// Input columns of the adapted matrix.
    pub cols: usize,
    /// `alpha / r` (or `alpha / sqrt(r)`).
    pub scale: f32,
}

/// A PEFT LoRA adapter read from its folder, keyed by GGUF tensor names.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The folder.
    pub dir: PathBuf,
    /// Adapted matrices by GGUF name (`blk.0.attn_q.weight`).
    pub pairs: HashMap<String, LoraPair>,
}

fn unsupported(dir: &Path, what: String) -> ModelError {
    ModelError::Unsupported(format!(
        "{}: {what}",
        dir.join("adapter_config.json").display()
    ))
}

impl Adapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir`, refusing the
    /// PEFT options whose merge is not a plain `B A` (DoRA, biases, per-module ranks...).
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let cfg_path = dir.join("adapter_config.json");
        if !cfg_path.is_file() {
            return Err(ModelError::Config(format!(
                "{}: no adapter_config.json; a LoRA adapter is a PEFT folder with adapter_config.json and adapter_model.safetensors",
                dir.display()
            )));
        }
        let c = read_json(&cfg_path)?;
        let peft_type = c.get("peft_type").and_then(Value::as_str).unwrap_or("");
        if peft_type != "LORA" {
            return Err(unsupported(
                dir,
                format!("peft_type `{peft_type}` is not supported (kiln merges LORA adapters)"),
            ));
        }
        let truthy = |k: &str| match c.get(k) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => !s.is_empty() && s != "none",
            Some(_) => true,
        };
        for key in [
            "use_dora",
            "fan_in_fan_out",
            "modules_to_save",
            "rank_pattern",
            "alpha_pattern",
            "lora_bias",
            "bias",
            "target_parameters",
            "trainable_token_indices",
            "layer_replication",
        ] {
            if truthy(key) {
                return Err(unsupported(
                    dir,
                    format!("`{key}` is set; kiln merges plain LoRA (B A) only"),
                ));
            }
        }
        let r_cfg = c
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| unsupported(dir, "`r` is not a positive integer".into()))?
            as usize;
        let alpha = c
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| unsupported(dir, "`lora_alpha` is not a number".into()))?;
        let rslora = c.get("use_rslora").and_then(Value::as_bool) == Some(true);
        let scale = if rslora {
            alpha / (r_cfg as f64).sqrt()
        } else {
            alpha / r_cfg as f64
        } as f32;

        let st_path = dir.join("adapter_model.safetensors");
        if !st_path.is_file() {
            let hint = if dir.join("adapter_model.bin").exists() {
                " (adapter_model.bin is there: kiln reads safetensors only)"
            } else {
                ""
            };
            return Err(ModelError::Config(format!(
                "{}: no adapter_model.safetensors{hint}",
                dir.display()
            )));
        }
        let st = SafeTensors::open(&st_path)?;
        let bad = |what: String| ModelError::Config(format!("{}: {what}", st_path.display()));
        // module (HF name without `.weight`) -> (A name, B name)
        let mut modules: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        for key in st.tensors().keys() {
            let k = key.strip_prefix("base_model.model.").unwrap_or(key);
            let (module, which) = if let Some((m, rest)) = k.split_once(".lora_A.") {
                (m, (rest, true))
            } else if let Some((m, rest)) = k.split_once(".lora_B.") {
                (m, (rest, false))
            } else {
                return Err(bad(format!(
                    "tensor `{key}` is not a lora_A / lora_B weight (embedding adapters, DoRA magnitudes and saved modules are not supported)"
                )));
            };
            if which.0 != "weight" && !which.0.ends_with(".weight") {
                return Err(bad(format!("tensor `{key}`: expected a `.weight`")));
            }
            let e = modules.entry(module.to_owned()).or_default();
            if which.1 {
                e.0 = Some(key.clone());
            } else {
                e.1 = Some(key.clone());
            }
        }
        let mut pairs = HashMap::new();
        for (module, (a, b)) in modules {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(bad(format!("module `{module}` lacks lora_A or lora_B")));
            };
            let name = gguf_name(&format!("{module}.weight")).ok_or_else(|| {
                bad(format!(
                    "module `{module}` is not a projection kiln knows (q/k/v/o, qkv, gate/up/down, lm_head)"
                ))
            })?;
            let (ia, ib) = (st.info(&a)?, st.info(&b)?);
            let (&[r, cols], &[rows, rb]) = (&ia.shape[..], &ib.shape[..]) else {
                return Err(bad(format!(
                    "`{a}` {:?} and `{b}` {:?} are not matrices",
                    ia.shape, ib.shape
                )));
            };
            if rb != r || r == 0 {
                return Err(bad(format!(
                    "`{a}` has rank {r} but `{b}` has {rb} columns"
                )));
            }
            if r != r_cfg {
                return Err(bad(format!(
                    "module `{module}` has rank {r}, adapter_config.json says r = {r_cfg}"
                )));
            }
            pairs.insert(
                name,
                LoraPair {
                    a: st.to_f32(&a)?,
                    b: st.to_f32(&b)?,
                    r,
                    rows,
                    cols,
                    scale,
                },
            );
        }
        if pairs.is_empty() {
            return Err(bad("no LoRA weights found".into()));
        }
        Ok(Adapter {
            dir: dir.to_path_buf(),
            pairs,
        })
    }
}

impl LoraPair {
    /// Adds `scale * B A` to `w` (row-major `[rows, cols]`); `row_of(t)` is the adapter row
    /// that lands on row `t` of `w` (identity except for permuted GGUF q/k).
    fn add_to(&self, w: &mut [f32], row_of: impl Fn(usize) -> usize) {
        for (t, wr) in w.chunks_exact_mut(self.cols).enumerate() {
            let br = &self.b[row_of(t) * self.r..(row_of(t) + 1) * self.r];
            for (k, &bk) in br.iter().enumerate() {
                let c = self.scale * bk;
                if c == 0.0 {
                    continue;
                }
                for (x, &a) in wr
                    .iter_mut()
                    .zip(&self.a[k * self.cols..(k + 1) * self.cols])
                {
                    *x += c * a;
                }
            }
        }
    }
}

/// llama.cpp's q/k row permutation for interleaved RoPE: row `h*hd + 2i + j` of the GGUF
/// matrix is row `h*hd + j*hd/2 + i` of the Hugging Face one.
fn interleaved_source_row(t: usize, head_dim: usize) -> usize {
    let (h, r) = (t / head_dim, t % head_dim);
    let (i, j) = (r / 2, r % 2);
    h * head_dim + j * (head_dim / 2) + i
}

/// A [`TensorSource`] that merges an adapter into the matrices it adapts.
pub struct LoraSource<'a> {
    base: &'a dyn TensorSource,
    adapter: &'a Adapter,
    cfg: &'a ModelConfig,
}

impl<'a> LoraSource<'a> {
    /// Wraps `base`; checks that every adapted matrix exists in it with the adapter's shape.
    pub fn new(
        base: &'a dyn TensorSource,
        adapter: &'a Adapter,
        cfg: &'a ModelConfig,
    ) -> Result<Self, ModelError> {
        for (name, p) in &adapter.pairs {
            if !base.has(name) {
                let tied = if name == "output.weight" {
                    " (the model ties its output head to the embedding; an lm_head adapter cannot be merged)"
                } else {
                    ""
                };
                return Err(ModelError::Config(format!(
                    "{}: adapts `{name}`, which {} does not have{tied}",
                    adapter.dir.display(),
                    base.describe()
                )));
            }
            let t = base.matrix(name)?;
            if (t.rows, t.cols) != (p.rows, p.cols) {
                return Err(ModelError::Config(format!(
                    "{}: the adapter for `{name}` is {} x {}, the base matrix {} x {}: was it trained on another model?",
                    adapter.dir.display(),
                    p.rows,
                    p.cols,
                    t.rows,
                    t.cols
                )));
            }
        }
        Ok(LoraSource { base, adapter, cfg })
    }
}

impl TensorSource for LoraSource<'_> {
    fn describe(&self) -> String {
        format!(
            "{} + adapter {}",
            self.base.describe(),
            self.adapter.dir.display()
        )
    }

    fn has(&self, name: &str) -> bool {
        self.base.has(name)
    }

    fn matrix(&self, name: &str) -> Result<RawTensor, ModelError> {
        let t = self.base.matrix(name)?;
        let Some(p) = self.adapter.pairs.get(name) else {
            return Ok(t);
        };
        let mut w = t.to_f32()?;
        let permute = self.cfg.rope_style == RopeStyle::Interleaved
            && (name.ends_with(".attn_q.weight") || name.ends_with(".attn_k.weight"));
        let hd = self.cfg.head_dim;
        if permute {
            p.add_to(&mut w, |r| interleaved_source_row(r, hd));
        } else {
            p.add_to(&mut w, |r| r);
        }
        // Keep the base's float type; quantized bases come back as F32 (requantize with
        // --quantize if memory matters).
        let (ty, data): (GgmlType, Vec<u8>) = match t.ty {
            GgmlType::F16 => (
                GgmlType::F16,
                w.iter()
                    .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                    .collect(),
            ),
            GgmlType::BF16 => (
                GgmlType::BF16,
                w.iter()
                    .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                    .collect(),
            ),
            _ => (
                GgmlType::F32,
                w.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        };
        Ok(RawTensor {
            name: t.name,
            ty,
            rows: t.rows,
            cols: t.cols,
            data: TensorBytes::Owned(Arc::new(data)),
        })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        self.base.vector(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_permutation_matches_llama_cpp() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2): for hd = 4 the rows of a
        // head go [0, 2, 1, 3].
        let rows: Vec<usize> = (0..8).map(|t| interleaved_source_row(t, 4)).collect();
        assert_eq!(rows, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn merge_adds_scaled_product() {
        let p = LoraPair {
            a: vec![1.0, 2.0, 3.0, 4.0],           // [r=2, cols=2]
            b: vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], // [rows=3, r=2]
            r: 2,
            rows: 3,
            cols: 2,
            scale: 0.5,
        };
        let mut w = vec![0.0; 6];
        p.add_to(&mut w, |r| r);
        assert_eq!(w, vec![0.5, 1.0, 1.5, 2.0, 2.0, 3.0]);
    }
}
