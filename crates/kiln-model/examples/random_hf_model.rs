//! Writes a Hugging Face model folder with random weights and a real model's shape, for
//! measuring memory and speed without downloading the model.
//!
//! ```text
//! cargo run --release -p kiln-model --example random_hf_model -- OUT_DIR [f16|bf16|f32] [qwen2.5-0.5b|llama3.2-1b|smollm2-135m|smollm2-135m-narrow|tiny]
//! kiln bench --model OUT_DIR [--quantize q8_0]
//! ```
//!
//! `qwen2.5-0.5b` is Qwen2.5-0.5B-Instruct's shape: hidden 896, 24 layers, 14 heads, 2 KV
//! heads, feed-forward 4864, vocabulary 151936, tied embeddings, q/k/v biases. The tokenizer
//! is byte-level (Qwen2's split pattern) with byte tokens, filler entries up to 151643 and
//! Qwen's three special tokens; it has no merges, so text costs one token per byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_formats::safetensors::{from_f32, write, Dtype};

struct Shape {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    vocab: usize,
    tokens: usize,
}

const QWEN2_5_0_5B: Shape = Shape {
    hidden: 896,
    layers: 24,
    heads: 14,
    kv_heads: 2,
    ffn: 4864,
    vocab: 151936,
    tokens: 151643,
};

/// Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, feed-forward 8192,
/// vocabulary 128256, tied embeddings), written with the Qwen2 architecture of this file
/// (which adds q/k/v biases: 3 KiB a layer).
const LLAMA3_2_1B: Shape = Shape {
    hidden: 2048,
    layers: 16,
    heads: 32,
    kv_heads: 8,
    ffn: 8192,
    vocab: 128256,
    tokens: 128000,
};

/// SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 KV heads, feed-forward 1536,
/// vocabulary 49152, tied embeddings), also with this file's Qwen2 architecture.
const SMOLLM2_135M: Shape = Shape {
    hidden: 576,
    layers: 30,
    heads: 9,
    kv_heads: 3,
    ffn: 1536,
    vocab: 49152,
    tokens: 49149,
};

/// SmolLM2-135M's depth and vocabulary with one head of 64 (hidden 64, one KV head,
/// feed-forward 128): its layers' weights are 1/86 of SmolLM2's, so that a decode step's time
/// is what 30 layers cost beyond their bytes (docs/PERF.md, twenty-fifth session).
const SMOLLM2_135M_NARROW: Shape = Shape {
    hidden: 64,
    layers: 30,
    heads: 1,
    kv_heads: 1,
    ffn: 128,
    vocab: 49152,
    tokens: 49149,
};

const TINY: Shape = Shape {
    hidden: 256,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    ffn: 512,
    vocab: 1024,
    tokens: 1000,
};

/// xorshift32 noise, uniform in (-scale, scale).
fn noise(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn bytes_to_unicode() -> Vec<char> {
    let mut n = 0u32;
    (0..256u32)
        .map(|b| {
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
            if printable {
                char::from_u32(b).unwrap_or('?')
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap_or('?')
            }
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        return Err("usage: random_hf_model OUT_DIR [f16|bf16|f32] [qwen2.5-0.5b|llama3.2-1b|smollm2-135m|smollm2-135m-narrow|tiny]".into());
    };
    let dtype = match args.get(1).map(String::as_str).unwrap_or("f16") {
        "f16" => Dtype::F16,
        "bf16" => Dtype::BF16,
        "f32" => Dtype::F32,
        other => return Err(format!("dtype `{other}`: expected f16, bf16 or f32").into()),
    };
    let shape = match args.get(2).map(String::as_str).unwrap_or("qwen2.5-0.5b") {
        "qwen2.5-0.5b" => QWEN2_5_0_5B,
        "llama3.2-1b" => LLAMA3_2_1B,
        "smollm2-135m" => SMOLLM2_135M,
        "smollm2-135m-narrow" => SMOLLM2_135M_NARROW,
        "tiny" => TINY,
        other => {
            return Err(format!(
                "shape `{other}`: expected qwen2.5-0.5b, llama3.2-1b, smollm2-135m, smollm2-135m-narrow or tiny"
            )
            .into())
        }
    };
    std::fs::create_dir_all(&out)?;
    write_model(&out, &shape, dtype)?;
    write_tokenizer(&out, &shape)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn write_model(out: &Path, s: &Shape, dtype: Dtype) -> Result<(), Box<dyn std::error::Error>> {
    let head_dim = s.hidden / s.heads;
    let kvd = s.kv_heads * head_dim;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": s.hidden,
        "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": true,
        "use_sliding_window": false,
        "hidden_act": "silu",
        "vocab_size": s.vocab,
        "bos_token_id": s.tokens,
        "eos_token_id": s.tokens + 2,
        "torch_dtype": match dtype { Dtype::F16 => "float16", Dtype::BF16 => "bfloat16", _ => "float32" },
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;

    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut seed = 1u32;
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        seed += 1;
        let v: Vec<f32> = noise(shape.iter().product(), seed, scale)
            .into_iter()
            .map(|x| x + offset)
            .collect();
        let b = from_f32(dtype, &v).unwrap_or_default();
        tensors.push((name, shape, b));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![s.vocab, s.hidden],
        0.05,
        0.0,
    );
    add("model.norm.weight".into(), vec![s.hidden], 0.1, 1.0);
    for l in 0..s.layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        add(p("input_layernorm.weight"), vec![s.hidden], 0.1, 1.0);
        add(
            p("post_attention_layernorm.weight"),
            vec![s.hidden],
            0.1,
            1.0,
        );
        add(
            p("self_attn.q_proj.weight"),
            vec![s.hidden, s.hidden],
            0.05,
            0.0,
        );
        add(p("self_attn.q_proj.bias"), vec![s.hidden], 0.05, 0.0);
        add(p("self_attn.k_proj.weight"), vec![kvd, s.hidden], 0.05, 0.0);
        add(p("self_attn.k_proj.bias"), vec![kvd], 0.05, 0.0);
        add(p("self_attn.v_proj.weight"), vec![kvd, s.hidden], 0.05, 0.0);
        add(p("self_attn.v_proj.bias"), vec![kvd], 0.05, 0.0);
        add(
            p("self_attn.o_proj.weight"),
            vec![s.hidden, s.hidden],
            0.05,
            0.0,
        );
        add(p("mlp.gate_proj.weight"), vec![s.ffn, s.hidden], 0.05, 0.0);
        add(p("mlp.up_proj.weight"), vec![s.ffn, s.hidden], 0.05, 0.0);
        add(p("mlp.down_proj.weight"), vec![s.hidden, s.ffn], 0.03, 0.0);
    }
    let list: Vec<_> = tensors
        .iter()
        .map(|(n, sh, b)| (n.as_str(), dtype, sh.as_slice(), b.as_slice()))
        .collect();
    let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    write(&out.join("model.safetensors"), &list, &meta)?;
    Ok(())
}

fn write_tokenizer(out: &Path, s: &Shape) -> Result<(), Box<dyn std::error::Error>> {
    let mut vocab = serde_json::Map::new();
    for (i, c) in bytes_to_unicode().into_iter().enumerate() {
        vocab.insert(c.to_string(), serde_json::json!(i));
    }
    for i in 256..s.tokens {
        vocab.insert(format!("\u{120}filler{i}"), serde_json::json!(i));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": s.tokens + i, "content": t, "special": true,
            "lstrip": false, "rstrip": false, "normalized": false, "single_word": false})
        })
        .collect();
    let pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let tok = serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": false, "ignore_merges": false},
    });
    std::fs::write(out.join("tokenizer.json"), serde_json::to_string(&tok)?)?;
    let cfg = serde_json::json!({"eos_token": "<|im_end|>", "bos_token": null, "add_bos_token": false,
        "pad_token": "<|endoftext|>"});
    std::fs::write(
        out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )?;
    Ok(())
}
