//! A Hugging Face model folder as a GGUF file, written as llama.cpp's own converter writes one
//! for the architectures kiln runs (`kiln convert`, and `kiln quantize` from a folder).
//!
//! - Metadata: `general.*`, the shape under `{arch}.*`, the tokenizer under
//!   `tokenizer.ggml.*` (from `tokenizer.json`), and the chat template.
//! - Tensors under GGUF names ([`crate::hf::gguf_name`]), matrices in the folder's float type
//!   (F32, F16 or BF16), vectors (norms, biases) as F32. A tied output head is left out, as
//!   llama.cpp reads the embedding in its place.
//! - Llama's q and k rows are permuted from the Hugging Face layout (rotation pairs are
//!   (i, i + d/2)) to GGUF's (pairs (2i, 2i + 1)), since llama.cpp rotates Llama with
//!   adjacent pairs; Qwen2 and Phi-3 rotate halves in both.

use std::path::Path;

use kiln_formats::gguf::{GgmlType, GgufWriter, Value};
use kiln_tokenizer::Tokenizer;

use crate::config::Arch;
use crate::hf::{self, HfTensors};
use crate::weights::TensorSource;
use crate::{ModelConfig, ModelError};

/// What [`folder_to_gguf`] wrote.
#[derive(Debug, Clone, Default)]
pub struct ConvertReport {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data in the folder's safetensors files that were used.
    pub bytes_in: u64,
    /// Bytes of tensor data written.
    pub bytes_out: u64,
    /// The architecture, as GGUF names it.
    pub arch: &'static str,
}

/// The model in `dir` as a GGUF file in memory. `progress(done, total, name)` is called
/// before each tensor.
pub fn folder_to_gguf(
    dir: &Path,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<(GgufWriter, ConvertReport), ModelError> {
    let (json, cfg) = hf::read_config(dir)?;
    let tensors = HfTensors::open(dir)?;
    let arch = cfg.arch.name();
    if cfg.arch == Arch::Llama && cfg.rope_dim != cfg.head_dim {
        return Err(ModelError::Unsupported(format!(
            "{}: partial rotary embedding ({} of {} dimensions) on a Llama model: GGUF's Llama rotates whole heads",
            dir.display(),
            cfg.rope_dim,
            cfg.head_dim
        )));
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let mut w = GgufWriter::new()
        .metadata("general.architecture", Value::String(arch.into()))
        .metadata("general.name", Value::String(name));
    for (k, v) in shape_metadata(&cfg, &json) {
        w = w.metadata(k, v);
    }

    let files = hf::tokenizer_files(dir, &json)?;
    let tok = Tokenizer::gguf_metadata_from_hf_json(
        &files.path,
        &files.json,
        files.config.as_ref(),
        &files.eos,
        cfg.vocab_size,
    )?;
    // As llama.cpp's converter: ids the tokenizer files leave unnamed come from config.json
    // (Qwen2.5 names no BOS text, and its config says 151643).
    let mut tok = tok;
    for key in ["bos", "eos"] {
        let gguf_key = format!("tokenizer.ggml.{key}_token_id");
        let id = json.get(format!("{key}_token_id")).and_then(|v| v.as_u64());
        if let (false, Some(id)) = (tok.iter().any(|(k, _)| *k == gguf_key), id) {
            if (id as usize) < cfg.vocab_size {
                tok.push((gguf_key, Value::U32(id as u32)));
            }
        }
    }
    for (k, v) in tok {
        w = w.metadata(k, v);
    }
    if let Some(t) = hf::read_tokenizer(dir, &json)?.chat_template {
        w = w.metadata("tokenizer.chat_template", Value::String(t));
    }

    let tied = json.get("tie_word_embeddings").and_then(|v| v.as_bool()) == Some(true);
    let names: Vec<String> = order(tensors.names())
        .into_iter()
        .filter(|n| !(tied && n == "output.weight"))
        .collect();
    let mut report = ConvertReport {
        arch,
        ..Default::default()
    };
    let mut float_types = Vec::new();
    for (i, name) in names.iter().enumerate() {
        progress(i, names.len(), name);
        let matrix = !is_vector(name);
        if matrix {
            let t = tensors.matrix(name)?;
            let bytes = t.data.as_slice();
            report.bytes_in += bytes.len() as u64;
            let data = match permutation(&cfg, name) {
                Some(heads) => {
                    check_heads(name, t.rows, heads, cfg.head_dim)?;
                    permute_rows(bytes, t.rows, heads)
                }
                None => bytes.to_vec(),
            };
            float_types.push(t.ty);
            report.bytes_out += data.len() as u64;
            w = w.tensor(name.clone(), &[t.cols as u64, t.rows as u64], t.ty, data);
        } else {
            let mut v = tensors.vector(name)?;
            report.bytes_in += (v.len() * 4) as u64;
            if let Some(heads) = permutation(&cfg, name) {
                check_heads(name, v.len(), heads, cfg.head_dim)?;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                let p = permute_rows(&bytes, v.len(), heads);
                v = p
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
            }
            report.bytes_out += (v.len() * 4) as u64;
            w = w.tensor_f32(name.clone(), &[v.len() as u64], &v);
        }
        report.tensors += 1;
    }
    progress(names.len(), names.len(), "");
    // llama.cpp's file type: what most matrices are.
    let file_type = match majority(&float_types) {
        Some(GgmlType::F16) => 1,
        Some(GgmlType::BF16) => 32,
        _ => 0,
    };
    w = w.metadata("general.file_type", Value::U32(file_type));
    Ok((w, report))
}

/// The `{arch}.*` keys llama.cpp reads for the model's shape.
fn shape_metadata(cfg: &ModelConfig, json: &serde_json::Value) -> Vec<(String, Value)> {
    let a = cfg.arch.name();
    let k = |s: &str| format!("{a}.{s}");
    let u = |n: usize| Value::U32(n as u32);
    let mut m = vec![
        (k("context_length"), u(cfg.context_length)),
        (k("embedding_length"), u(cfg.dim)),
        (k("block_count"), u(cfg.n_layers)),
        (k("feed_forward_length"), u(cfg.ffn_dim)),
        (k("attention.head_count"), u(cfg.n_heads)),
        (k("attention.head_count_kv"), u(cfg.n_kv_heads)),
        (k("rope.freq_base"), Value::F32(cfg.rope_base)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_eps),
        ),
        (k("rope.dimension_count"), u(cfg.rope_dim)),
        (k("vocab_size"), u(cfg.vocab_size)),
    ];
    if cfg.arch == Arch::Phi3 {
        let original = json
            .get("original_max_position_embeddings")
            .and_then(|v| v.as_u64())
            .map_or(cfg.context_length, |v| v as usize);
        m.push((k("rope.scaling.original_context_length"), u(original)));
    }
    m
}

/// Norm weights and biases: GGUF keeps them as F32 vectors.
fn is_vector(name: &str) -> bool {
    name.ends_with(".bias") || name.ends_with("_norm.weight")
}

/// For Llama's q and k projections (weights and biases), the number of heads whose rows
/// are permuted.
fn permutation(cfg: &ModelConfig, name: &str) -> Option<usize> {
    if cfg.arch != Arch::Llama {
        return None;
    }
    let part = name.split('.').nth(2)?;
    match part {
        "attn_q" => Some(cfg.n_heads),
        "attn_k" => Some(cfg.n_kv_heads),
        _ => None,
    }
}

/// A q or k projection must have a row per value of each head (the permutation regroups
/// rows within heads): anything else is a folder whose weights do not match its config.
fn check_heads(name: &str, rows: usize, heads: usize, head_dim: usize) -> Result<(), ModelError> {
    if rows != heads * head_dim {
        return Err(ModelError::Config(format!(
            "{name}: {rows} rows, but config.json gives {heads} heads of {head_dim} values"
        )));
    }
    if !head_dim.is_multiple_of(2) {
        return Err(ModelError::Config(format!(
            "{name}: heads of {head_dim} values, an odd size, which rotary position embedding (pairs of values) cannot take"
        )));
    }
    Ok(())
}

/// Rows (of `data.len() / rows` bytes each) regrouped within each of `heads` heads: row
/// `j * d/2 + i` of a head (Hugging Face: rotation pairs `i`, `i + d/2`) goes to `2i + j`
/// (GGUF: adjacent pairs).
fn permute_rows(data: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row = data.len() / rows;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * hd + j * half + i;
                let dst = h * hd + 2 * i + j;
                out[dst * row..(dst + 1) * row].copy_from_slice(&data[src * row..(src + 1) * row]);
            }
        }
    }
    out
}

/// GGUF order: the embedding, the output norm and head, then each block's tensors in name
/// order.
fn order(mut names: Vec<String>) -> Vec<String> {
    let key = |n: &String| -> (usize, usize, String) {
        match n.strip_prefix("blk.") {
            Some(rest) => {
                let (l, r) = rest.split_once('.').unwrap_or((rest, ""));
                (1, l.parse().unwrap_or(usize::MAX), r.to_owned())
            }
            None => {
                let rank = ["token_embd.weight", "output_norm.weight", "output.weight"]
                    .iter()
                    .position(|t| t == n)
                    .unwrap_or(3);
                (0, rank, n.clone())
            }
        }
    };
    names.sort_by_key(key);
    names
}

fn majority(types: &[GgmlType]) -> Option<GgmlType> {
    let mut best: Option<(GgmlType, usize)> = None;
    for &t in types {
        let c = types.iter().filter(|&&u| u == t).count();
        if best.is_none_or(|(_, b)| c > b) {
            best = Some((t, c));
        }
    }
    best.map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_pairs_halves_into_neighbours() {
        // One head of 4 rows of one byte: HF rows [a0 a1 | b0 b1] -> GGUF [a0 b0 a1 b1].
        let hf = [10u8, 11, 20, 21];
        assert_eq!(permute_rows(&hf, 4, 1), [10, 20, 11, 21]);
        // Two heads of 4 rows of two bytes each.
        let hf: Vec<u8> = (0..16).collect();
        let g = permute_rows(&hf, 8, 2);
        assert_eq!(g, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
    }

    #[test]
    fn projections_that_do_not_match_the_heads_are_refused() {
        assert!(check_heads("blk.0.attn_q.weight", 64, 4, 16).is_ok());
        let e = check_heads("blk.0.attn_k.weight", 48, 4, 16).unwrap_err();
        assert!(
            e.to_string().contains("blk.0.attn_k.weight: 48 rows"),
            "{e}"
        );
        let e = check_heads("blk.0.attn_q.weight", 60, 4, 15).unwrap_err();
        assert!(e.to_string().contains("an odd size"), "{e}");
    }

    #[test]
    fn tensors_are_written_in_gguf_order() {
        let names = [
            "blk.10.attn_q.weight",
            "output.weight",
            "blk.2.ffn_up.weight",
            "token_embd.weight",
            "blk.2.attn_k.weight",
            "output_norm.weight",
        ];
        let got = order(names.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            got,
            [
                "token_embd.weight",
                "output_norm.weight",
                "output.weight",
                "blk.2.attn_k.weight",
                "blk.2.ffn_up.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }
}
