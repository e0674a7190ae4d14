//! What the `tokenizer` fuzz target checks, shared with the corpus replay test
//! (`crates/kiln-model/tests/fuzz_corpus.rs`), which includes this file.
//!
//! Three real tokenizers (the tiny fixtures: byte-level BPE, SentencePiece by scores,
//! SentencePiece by merge ranks) encode arbitrary text with and without control tokens. A
//! panic is a bug; byte-level BPE must give the text back exactly; text tokenized as plain
//! text must hold no control token; a chat message must not add control tokens however it
//! is written.

use std::path::Path;

use kiln_tokenizer::chat::{ChatTemplate, Message, CHATML};
use kiln_tokenizer::{TokenType, Tokenizer};

/// The tokenizers under test, built once.
pub struct Tokenizers {
    /// Qwen2's byte-level BPE (GGUF).
    pub qwen2: Tokenizer,
    /// TinyLlama's SentencePiece-style BPE by scores (GGUF).
    pub llama: Tokenizer,
    /// Phi-3's SentencePiece-style BPE by merge ranks (tokenizer.json).
    pub phi3: Tokenizer,
    /// ChatML, which the Qwen2 vocabulary's control tokens fit.
    pub chatml: ChatTemplate,
}

/// Builds the tokenizers from the fixtures under `root` (the repository).
pub fn load(root: &Path) -> Tokenizers {
    let fx = root.join("tests/fixtures");
    let gguf = |arch: &str| {
        let f =
            kiln_formats::gguf::GgufFile::open(fx.join(arch).join("model.gguf")).expect("fixture");
        Tokenizer::from_gguf(&f).expect("fixture tokenizer")
    };
    let hf = fx.join("tiny-phi3/hf");
    Tokenizers {
        qwen2: gguf("tiny-qwen2"),
        llama: gguf("tiny-llama"),
        phi3: Tokenizer::from_hf_files(
            &hf.join("tokenizer.json"),
            Some(&hf.join("tokenizer_config.json")),
            &[],
        )
        .expect("fixture tokenizer"),
        chatml: ChatTemplate::new(CHATML, "", "").expect("ChatML"),
    }
}

fn controls(t: &Tokenizer, ids: &[u32]) -> Vec<u32> {
    let mut c: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&i| t.token_type(i) == Some(TokenType::Control))
        .collect();
    c.sort_unstable();
    c
}

/// Checks one input.
pub fn check(t: &Tokenizers, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for tok in [&t.qwen2, &t.llama, &t.phi3] {
        let _ = tok.encode(&text, true, true);
        let plain = tok.encode(&text, false, false);
        assert!(
            controls(tok, &plain).is_empty(),
            "plain text produced control tokens: {text:?}"
        );
        let _ = tok.decode(&plain, true);
    }
    let plain = t.qwen2.encode(&text, false, false);
    assert_eq!(
        t.qwen2.decode(&plain, true),
        text,
        "byte-level BPE round trip"
    );
    let honest = t
        .chatml
        .encode(&t.qwen2, &[Message::new("user", "x")], true)
        .expect("ChatML renders");
    if let Ok(ids) = t
        .chatml
        .encode(&t.qwen2, &[Message::new("user", text.clone())], true)
    {
        assert_eq!(
            controls(&t.qwen2, &ids),
            controls(&t.qwen2, &honest),
            "a message added control tokens: {text:?}"
        );
    }
}
