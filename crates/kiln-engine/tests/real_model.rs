//! The engine on the default model: batching must not change any request's tokens.

use std::sync::mpsc;
use std::sync::Arc;

use kiln_engine::{Engine, EngineConfig, Event, ModelRunner, Request, SamplingParams};
use kiln_model::cpu::CpuBackend;
use kiln_model::loader::load_gguf;
use kiln_model::tokenizer::Tokenizer;

fn engine(max_batch_tokens: usize) -> Engine<ModelRunner<CpuBackend>> {
    let path = kiln_model::fetch::ensure_default_model(true).unwrap();
    let m = load_gguf(&path, CpuBackend::new(0)).unwrap();
    let tok = Arc::new(m.tokenizer);
    let runner = ModelRunner::new(m.model, 64 << 20, max_batch_tokens, 16).unwrap();
    Engine::new(
        runner,
        tok,
        EngineConfig {
            max_batch_tokens,
            ..Default::default()
        },
    )
}

fn requests(tok: &Tokenizer) -> Vec<Request> {
    let questions = [
        "What is 2+2?",
        "Why is the sky blue?",
        "Name three fruits.",
        "Write a haiku about rust.",
        "What is the capital of France?",
    ];
    questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let text = format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
            let params = if i.is_multiple_of(2) {
                SamplingParams::greedy(10)
            } else {
                SamplingParams {
                    temperature: 0.8,
                    top_k: 20,
                    seed: Some(7 + i as u64),
                    max_tokens: 10,
                    ..Default::default()
                }
            };
            Request {
                prompt: tok.encode(&text, true, true),
                params,
            }
        })
        .collect()
}

fn run(e: &mut Engine<ModelRunner<CpuBackend>>, reqs: Vec<Request>) -> Vec<Vec<u32>> {
    let rxs: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let (tx, rx) = mpsc::channel();
            e.submit(r, Box::new(move |ev| tx.send(ev).is_ok()))
                .unwrap();
            rx
        })
        .collect();
    e.run_to_completion().unwrap();
    rxs.into_iter()
        .map(|rx| {
            rx.try_iter()
                .filter_map(|ev| match ev {
                    Event::Token { id, .. } => Some(id),
                    Event::Failed(m) => panic!("{m}"),
                    Event::Done { .. } => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn batched_equals_alone_on_the_real_model() {
    let mut alone_engine = engine(256);
    let tok = alone_engine.tokenizer().clone();
    let alone: Vec<Vec<u32>> = requests(&tok)
        .into_iter()
        .map(|r| run(&mut alone_engine, vec![r]).remove(0))
        .collect();
    // A small token budget interleaves prefill chunks with decode steps.
    let mut batched_engine = engine(24);
    let together = run(&mut batched_engine, requests(&tok));
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(!a.is_empty());
        assert_eq!(a, b, "request {i}");
    }
    assert_eq!(batched_engine.stats().blocks_used, 0);
    // The greedy request's answer also matches single-sequence generation.
    let prompt = &requests(&tok)[0].prompt;
    let m = load_gguf(&kiln_model::fetch::default_model_path(), CpuBackend::new(0)).unwrap();
    let g = kiln_model::generate::generate(
        &m.model,
        &m.tokenizer,
        prompt,
        &kiln_model::generate::GenerateParams {
            max_tokens: 10,
            sampler: kiln_model::sampler::SamplerParams::greedy(),
        },
        |_| true,
    )
    .unwrap();
    assert_eq!(g.ids, alone[0]);
}
