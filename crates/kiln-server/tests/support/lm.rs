//! A language model for server tests: the tiny Qwen2 fixture's tokenizer, ChatML, and an
//! engine over the given runner.

use std::sync::Arc;

use kiln_engine::{Engine, EngineConfig, EngineHandle, Runner};
use kiln_server::LoadedLm;
use kiln_tokenizer::chat::{ChatTemplate, CHATML};
use kiln_tokenizer::Tokenizer;

pub fn tiny_lm<R: Runner + 'static>(
    runner: R,
    cfg: EngineConfig,
    id: &str,
    context: usize,
) -> LoadedLm {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-qwen2/model.gguf");
    let f = kiln_formats::gguf::GgufFile::open(fixture).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    LoadedLm {
        engine: EngineHandle::spawn(Engine::new(runner, tok.clone(), cfg)),
        tokenizer: tok,
        template: ChatTemplate::new(CHATML, "", "").unwrap(),
        id: id.into(),
        context_length: context,
        load_s: 0.0,
    }
}
