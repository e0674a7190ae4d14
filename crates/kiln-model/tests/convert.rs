//! `kiln convert` against the GGUF files of the tiny fixtures, which gguf-py wrote from the same
//! Hugging Face folders the way llama.cpp's converter writes them (tests/fixtures/README.md):
//! the same tensors byte for byte (Llama's q/k rows permuted), the same shape and tokenizer
//! metadata, and a file kiln loads to the same logits.

use std::path::PathBuf;

use kiln_formats::gguf::{GgufFile, Value};
use kiln_model::convert::folder_to_gguf;

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/tiny-{arch}"))
}

fn converted(arch: &str) -> GgufFile {
    let mut calls = 0;
    let (w, report) = folder_to_gguf(&fixture(arch).join("hf"), |_, _, _| calls += 1).unwrap();
    assert!(calls > report.tensors, "progress is reported per tensor");
    assert_eq!(report.arch, arch);
    GgufFile::from_bytes(format!("{arch}-converted.gguf"), w.to_bytes()).unwrap()
}

/// Keys kiln writes that the fixtures' files lack: the vocabulary size (llama.cpp's converter
/// writes it too, for newer files) and the SentencePiece pre-tokenizer name `default`.
const EXTRA: &[&str] = &["vocab_size", "tokenizer.ggml.pre"];

#[test]
fn converted_folders_match_the_reference_gguf() {
    for arch in ["llama", "qwen2", "phi3"] {
        let ours = converted(arch);
        let reference = GgufFile::open(fixture(arch).join("model.gguf")).unwrap();
        // Tensors: the same names, shapes, types and bytes (the order is the writer's own).
        let names = |f: &GgufFile| {
            let mut v: Vec<String> = f.tensors().iter().map(|t| t.name.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&ours), names(&reference), "{arch}: tensor names");
        for r in reference.tensors() {
            let o = ours.tensor(&r.name).unwrap();
            assert_eq!((&o.dims, o.ty), (&r.dims, r.ty), "{arch}: {}", r.name);
            assert!(
                ours.tensor_data(o) == reference.tensor_data(r),
                "{arch}: {} differs",
                r.name
            );
        }
        // Metadata: every key of the reference with the same value (the name aside).
        for (k, v) in reference.metadata() {
            if k == "general.name" {
                continue;
            }
            assert_eq!(ours.get(k), Some(v), "{arch}: {k}");
        }
        for k in ours.metadata().keys() {
            assert!(
                reference.get(k).is_some() || EXTRA.iter().any(|e| k.ends_with(e)),
                "{arch}: kiln writes `{k}`, which the reference lacks"
            );
        }
        if arch != "qwen2" {
            assert_eq!(
                ours.get("tokenizer.ggml.pre"),
                Some(&Value::String("default".into()))
            );
        }
    }
}

/// What kiln reads back from a converted file tokenizes plain text as the folder does, and
/// a chat prompt as the reference GGUF does: llama.cpp's SentencePiece puts a space before
/// the text after every special token, where Phi-3's `Metaspace` (prepend_scheme `first`)
/// puts one only at the start, so for Phi-3 the two differ after `<|user|>` by design.
#[test]
fn the_converted_tokenizer_reads_back_as_the_folder_s() {
    for arch in ["llama", "qwen2", "phi3"] {
        let ours = converted(arch);
        let from_gguf = kiln_tokenizer::Tokenizer::from_gguf(&ours).unwrap();
        let dir = fixture(arch).join("hf");
        let (json, _) = kiln_model::hf::read_config(&dir).unwrap();
        let from_hf = kiln_model::hf::read_tokenizer(&dir, &json)
            .unwrap()
            .tokenizer;
        let reference: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(arch).join("reference.json")).unwrap(),
        )
        .unwrap();
        for p in reference["prompts"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            let want: Vec<u32> = p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            let special = p.get("chat").is_some();
            let add_bos = from_hf.add_bos() && !special;
            assert_eq!(
                from_hf.encode(text, add_bos, special),
                want,
                "{arch}: folder, {text:?}"
            );
            let got = from_gguf.encode(text, add_bos, special);
            if special {
                let r = GgufFile::open(fixture(arch).join("model.gguf")).unwrap();
                let r = kiln_tokenizer::Tokenizer::from_gguf(&r).unwrap();
                assert_eq!(got, r.encode(text, add_bos, special), "{arch}: {text:?}");
            } else {
                assert_eq!(got, want, "{arch}: converted, {text:?}");
            }
        }
    }
}
