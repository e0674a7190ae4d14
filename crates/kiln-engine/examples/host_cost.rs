//! The engine's own time per step, without a model: a runner that returns a token per row at
//! once, N sequences of 128 tokens each (ROUNDS times), sinks that hand events to a bounded
//! channel as the server's do. `cargo run --release -p kiln-engine --example host_cost -- 256
//! [ROUNDS]` prints the engine's host time per step, what a GPU waits for between steps (the
//! engine does not yet prepare a step while the one before runs).

use std::sync::Arc;

use kiln_engine::{Engine, EngineConfig, Request, Runner, SamplingParams, Slice};
use kiln_model::sample::{Adjust, RowSampling, Sampled};
use kiln_model::ModelError;
use kiln_tokenizer::Tokenizer;

struct Instant0 {
    n_blocks: usize,
    next: u32,
}

impl Runner for Instant0 {
    fn vocab_size(&self) -> usize {
        49152
    }
    fn context_length(&self) -> usize {
        8192
    }
    fn block_size(&self) -> usize {
        kiln_model::KV_BLOCK
    }
    fn n_blocks(&self) -> usize {
        self.n_blocks
    }
    fn step(
        &mut self,
        batch: &[Slice<'_>],
        rows: &[RowSampling],
        _adjust: &[Adjust],
        _masks: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        let _ = batch;
        for _ in rows {
            // Ordinary word pieces of the default model's vocabulary, never end of text.
            self.next = 300 + (self.next + 7919) % 20000;
            out.push(Sampled::token(self.next));
        }
        Ok(())
    }
    fn step_all(&mut self, _: &[Slice<'_>], _: &mut Vec<f32>) -> Result<(), ModelError> {
        Ok(())
    }
    fn max_logit_rows(&self) -> usize {
        0
    }
    fn copy_block(&mut self, _: u32, _: u32) {}
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let path = kiln_model::fetch::ensure_default_model(true).unwrap();
    let f = kiln_formats::gguf::GgufFile::open(path).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let cfg = EngineConfig {
        max_running: n,
        max_batch_tokens: 512,
        max_queue: 4 * n,
        ..Default::default()
    };
    let runner = Instant0 {
        n_blocks: n * 12,
        next: 0,
    };
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let mut e = Engine::new(runner, tok.clone(), cfg);
    let (tx, rx) = std::sync::mpsc::sync_channel(1 << 22);
    let t = std::time::Instant::now();
    for i in 0..n * rounds {
        if i % n == 0 && i > 0 {
            e.run_to_completion().unwrap();
        }
        let prompt = tok.encode(&format!("Item {i}: once upon a time"), true, false);
        let params = SamplingParams {
            temperature: 0.7,
            seed: Some(i as u64),
            max_tokens: 128,
            ignore_eos: true,
            ..Default::default()
        };
        let tx = tx.clone();
        e.submit(
            Request::new(prompt, params),
            Box::new(move |ev| tx.try_send(ev).is_ok()),
        )
        .unwrap();
    }
    e.run_to_completion().unwrap();
    let wall = t.elapsed().as_secs_f64();
    let s = e.stats();
    let events = rx.try_iter().count();
    println!(
        "{n} sequences: {} steps, {events} events, host {:.1} us a step ({:.2} us a row), wall {:.3} s",
        s.steps,
        1e6 * s.host_seconds / s.steps as f64,
        1e6 * s.host_seconds / s.steps as f64 / n as f64,
        wall
    );
}
