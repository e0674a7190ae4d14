//! A tokenizer's definition as GGUF `tokenizer.ggml.*` metadata, as llama.cpp reads it.

use kiln_formats::gguf::{Value, ValueType};

use crate::{Kind, PreTokenizer, SpacePrefix, Spec, TokenType};

/// The metadata for `spec`. Byte-level BPE is `gpt2` with its merges and the pre-tokenizer's
/// llama.cpp name; SentencePiece-style BPE is `llama` with scores, where a token's score is
/// its merge's rank negated (SentencePiece merges the pair whose union scores best, so the
/// order of merges is kept) and 0 for tokens no merge makes.
pub(crate) fn gguf_metadata(spec: &Spec) -> Vec<(String, Value)> {
    let mut m: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| m.push((format!("tokenizer.ggml.{k}"), v));
    let strings = |v: Vec<String>| {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    };
    match spec.kind {
        Kind::ByteBpe => {
            put("model", Value::String("gpt2".into()));
            put("pre", Value::String(pre_name(spec.pre).into()));
        }
        Kind::Spm => {
            put("model", Value::String("llama".into()));
            put("pre", Value::String("default".into()));
        }
    }
    put("tokens", strings(spec.tokens.clone()));
    put(
        "token_type",
        Value::Array(
            ValueType::I32,
            spec.types.iter().map(|t| Value::I32(type_id(*t))).collect(),
        ),
    );
    match spec.kind {
        Kind::ByteBpe => put(
            "merges",
            strings(
                spec.merges
                    .iter()
                    .map(|(l, r)| format!("{l} {r}"))
                    .collect(),
            ),
        ),
        Kind::Spm => {
            let mut rank: std::collections::HashMap<String, usize> = Default::default();
            for (i, (l, r)) in spec.merges.iter().enumerate() {
                rank.entry(format!("{l}{r}")).or_insert(i);
            }
            let scores = spec
                .tokens
                .iter()
                .zip(&spec.scores)
                .map(|(t, &s)| match rank.get(t) {
                    Some(&r) => Value::F32(-(r as f32)),
                    None => Value::F32(s),
                })
                .collect();
            put("scores", Value::Array(ValueType::F32, scores));
            put(
                "add_space_prefix",
                Value::Bool(spec.space_prefix != SpacePrefix::Never),
            );
        }
    }
    if let Some(b) = spec.bos {
        put("bos_token_id", Value::U32(b));
    }
    if let Some(e) = spec.eos {
        put("eos_token_id", Value::U32(e));
    }
    if let Some(u) = spec.types.iter().position(|t| *t == TokenType::Unknown) {
        put("unknown_token_id", Value::U32(u as u32));
    }
    put("add_bos_token", Value::Bool(spec.add_bos));
    m
}

/// llama.cpp's name for a pre-tokenizer (one of those [`PreTokenizer::from_name`] reads).
fn pre_name(p: PreTokenizer) -> &'static str {
    match p {
        PreTokenizer::Gpt2 => "gpt-2",
        PreTokenizer::DigitsThenGpt2 => "smollm",
        PreTokenizer::Llama3 => "llama-bpe",
        PreTokenizer::Qwen2 => "qwen2",
    }
}

/// GGUF's token type numbers.
fn type_id(t: TokenType) -> i32 {
    match t {
        TokenType::Normal => 1,
        TokenType::Unknown => 2,
        TokenType::Control => 3,
        TokenType::UserDefined => 4,
        TokenType::Unused => 5,
        TokenType::Byte => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tokenizer;

    /// A model with more embedding rows than tokens (Qwen2's) gets unused `[PAD{id}]`
    /// entries up to its size, which read back as a vocabulary of that size.
    #[test]
    fn a_short_vocabulary_is_padded_to_the_model_s_size() {
        let json: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/tiny-qwen2/hf/tokenizer.json"
        ))
        .unwrap();
        let plain = Tokenizer::gguf_metadata_from_hf_json("t.json", &json, None, &[], 0).unwrap();
        let tokens = |m: &[(String, Value)]| match &m
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.tokens")
            .unwrap()
            .1
        {
            Value::Array(_, v) => v.clone(),
            _ => panic!("tokens are an array"),
        };
        let n = tokens(&plain).len();
        let padded =
            Tokenizer::gguf_metadata_from_hf_json("t.json", &json, None, &[], n + 5).unwrap();
        let t = tokens(&padded);
        assert_eq!(t.len(), n + 5);
        assert_eq!(t[n], Value::String(format!("[PAD{n}]")));
        let types = &padded
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.token_type")
            .unwrap()
            .1;
        let Value::Array(_, types) = types else {
            panic!("types are an array")
        };
        assert_eq!(types.len(), n + 5);
        assert_eq!(types[n + 4], Value::I32(5));
        // Read back through a GGUF file.
        let mut w = kiln_formats::gguf::GgufWriter::new();
        for (k, v) in padded {
            w = w.metadata(k, v);
        }
        let f = kiln_formats::gguf::GgufFile::from_bytes("t.gguf", w.to_bytes()).unwrap();
        let tok = Tokenizer::from_gguf(&f).unwrap();
        assert_eq!(tok.vocab_size(), n + 5);
        assert_eq!(
            tok.encode("[PAD400]", false, true),
            tok.encode("[PAD400]", false, false)
        );
    }
}
