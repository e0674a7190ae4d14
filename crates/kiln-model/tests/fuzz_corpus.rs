//! Replays the fuzz corpora kept in `fuzz/seeds/` through the same checks the fuzz targets
//! run (`fuzz/checks/`), so that every input the fuzzer found interesting stays a test on
//! stable Rust, without cargo-fuzz.

use std::path::{Path, PathBuf};

#[path = "../../../fuzz/checks/chat_template.rs"]
mod chat_template;
#[path = "../../../fuzz/checks/safetensors_header.rs"]
mod safetensors_header;
#[path = "../../../fuzz/checks/tokenizer.rs"]
mod tokenizer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file of a target's corpus; a corpus must not be empty (that would test nothing).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root().join("fuzz/seeds").join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{} is empty", dir.display());
    out
}

fn replay(target: &str, f: impl Fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let name = path
            .file_name()
            .map(Path::new)
            .unwrap_or(&path)
            .display()
            .to_string();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&bytes)));
        assert!(r.is_ok(), "{target}: input {name} fails its check");
    }
}

#[test]
fn tokenizer_corpus() {
    let t = tokenizer::load(&root());
    replay("tokenizer", |b| tokenizer::check(&t, b));
}

#[test]
fn chat_template_corpus() {
    replay("chat_template", chat_template::check);
}

#[test]
fn safetensors_header_corpus() {
    replay("safetensors_header", safetensors_header::check);
}
