//! The default model against llama.cpp's reference outputs (`tests/fixtures`, copied from the project's shared fixtures).

use std::path::PathBuf;

mod common;
use common::test_device;
use kiln_model::loader::{load_gguf, LoadedModel};
use kiln_model::Backend;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    prompt: String,
    max_new_tokens: usize,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    top5: Vec<Vec<(u32, f32)>>,
}

fn cases() -> Vec<Case> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/smollm2-135m-q4_1-golden.jsonl");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture line"))
        .collect()
}

/// Index of the first generated position whose reference top-1/top-2 margin is below 0.3.
fn first_near_tie(c: &Case) -> usize {
    c.top5
        .iter()
        .position(|t| t.len() >= 2 && t[0].1 - t[1].1 < 0.3)
        .unwrap_or(c.top5.len())
}

#[test]
fn golden_tokenization_greedy_and_logits() {
    let path = kiln_model::fetch::ensure_default_model(true).expect("default model");
    kiln_engine::with_backend!(test_device(0), b => {
        check(load_gguf(&path, b).expect("load default model"))
    })
}

fn check<B: Backend>(m: LoadedModel<B>) {
    let cases = cases();
    assert_eq!(cases.len(), 5);
    let mut worst = 0f32;
    let mut sum_err = 0f64;
    let mut n_err = 0usize;
    let mut top1_agree = 0usize;
    let mut positions = 0usize;
    for c in &cases {
        // 1. Tokenization.
        let ids = m.tokenizer.encode(&c.prompt, true, true);
        assert_eq!(ids, c.prompt_ids, "{}: prompt ids", c.name);

        // 2. Greedy continuation, compared up to the first near-tie.
        let g = greedy(&m, &ids, c.max_new_tokens);
        let upto = first_near_tie(c).min(c.greedy_ids.len());
        assert_eq!(
            &g[..upto.min(g.len())],
            &c.greedy_ids[..upto],
            "{}: greedy continuation diverges before the first near-tie at {upto}",
            c.name
        );
        assert!(g.len() >= upto, "{}: stopped early", c.name);

        // 3. Teacher-forced logits over the reference sequence.
        let mut seq = c.prompt_ids.clone();
        seq.extend_from_slice(&c.greedy_ids);
        let cap = seq.len();
        let mut kv = m.model.new_kv(cap).unwrap();
        let mut st = m.model.new_state(cap, cap).unwrap();
        m.model.forward(&mut st, &mut kv, &seq, 0, true).unwrap();
        let vocab = m.model.cfg.vocab_size;
        for (i, top) in c.top5.iter().enumerate() {
            let row = c.prompt_ids.len() - 1 + i;
            let logits = &st.logits[row * vocab..(row + 1) * vocab];
            for &(id, want) in top {
                let err = (logits[id as usize] - want).abs();
                worst = worst.max(err);
                sum_err += err as f64;
                n_err += 1;
            }
            let ours = kiln_model::sample::argmax(logits);
            positions += 1;
            if ours == top[0].0 {
                top1_agree += 1;
            } else {
                // The reference's two best within 0.3; or kiln's best among the reference's
                // five, at most 0.5 below the reference's best there, and kiln's own logits
                // putting the two within 0.3 (docs/CORRECTNESS.md).
                let margin = top[0].1 - top[1].1;
                let own = logits[ours as usize] - logits[top[0].0 as usize];
                let gap = top
                    .iter()
                    .find(|&&(id, _)| id == ours)
                    .map(|&(_, v)| top[0].1 - v);
                assert!(
                    margin < 0.3 || (gap.is_some_and(|g| g < 0.5) && own < 0.3),
                    "{} position {i}: top-1 {ours} differs from reference {} with margin {margin} \
                     (reference's gap to kiln's top-1 {gap:?}, kiln's own margin {own})",
                    c.name,
                    top[0].0
                );
            }
        }
    }
    let mean = sum_err / n_err as f64;
    let agree = top1_agree as f64 / positions as f64;
    eprintln!("teacher-forced: max |dlogit| {worst:.3}, mean {mean:.3}, top-1 agreement {agree:.3} over {positions} positions");
    // Tolerances: see docs/CORRECTNESS.md. llama.cpp quantizes activations to 8 bits for
    // Q4_1 products; an exact f32 forward differs from it by up to ~0.9 on these entries.
    assert!(worst <= 1.0, "max logit error {worst} above 1.0");
    assert!(mean <= 0.25, "mean logit error {mean} above 0.25");
    assert!(agree >= 0.90, "top-1 agreement {agree} below 0.90");
}

/// Greedy continuation of `prompt` by the model alone (one sequence, its own cache): up to
/// `max` tokens, ending after an end token.
fn greedy<B: Backend>(m: &LoadedModel<B>, prompt: &[u32], max: usize) -> Vec<u32> {
    let mut kv = m.model.new_kv(prompt.len() + max).expect("cache");
    let mut st = m.model.new_state(prompt.len(), 1).expect("state");
    m.model
        .forward(&mut st, &mut kv, prompt, 0, false)
        .expect("prefill");
    let mut ids = Vec::new();
    loop {
        let next = kiln_model::sample::argmax(&st.logits);
        ids.push(next);
        if ids.len() == max || m.tokenizer.is_eog(next) {
            return ids;
        }
        let pos = prompt.len() + ids.len() - 1;
        m.model
            .forward(&mut st, &mut kv, &[next], pos, false)
            .expect("decode");
    }
}
