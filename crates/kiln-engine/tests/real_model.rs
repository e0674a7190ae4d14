//! The engine on the default model: batching must not change any request's tokens, and a
//! scored text gets the log-probabilities of a solo teacher-forced pass.

use std::sync::mpsc;
use std::sync::Arc;

mod common;
use common::test_device;
use kiln_engine::{
    Engine, EngineConfig, Event, ModelRunner, PromptScore, Request, Runner, SamplingParams,
    ScoreRequest, Slice,
};
use kiln_model::loader::{load, LoadOptions};
use kiln_model::sample::{Adjust, RowSampling, Sampled};
use kiln_model::{Backend, ModelError};
use kiln_tokenizer::Tokenizer;

/// The model the tests run: `KILN_TEST_MODEL` (a GGUF file or a model folder, e.g. a
/// random-weight model of a larger shape on a GPU), the default model otherwise.
fn model_path() -> std::path::PathBuf {
    match std::env::var_os("KILN_TEST_MODEL") {
        Some(p) => std::path::PathBuf::from(p),
        None => kiln_model::fetch::ensure_default_model(true).unwrap(),
    }
}

/// The model at `path` on the test device as the engine's runner (a KV pool of
/// `kv_bytes`), and its tokenizer.
fn runner(
    path: &std::path::Path,
    threads: usize,
    kv_bytes: usize,
    max_batch_tokens: usize,
) -> (Box<dyn Runner>, Arc<Tokenizer>) {
    kiln_engine::with_backend!(test_device(threads), b => {
        let m = load(path, b, &LoadOptions::default()).unwrap();
        let r = ModelRunner::new(m.model, kv_bytes, max_batch_tokens, 16).unwrap();
        (Box::new(r) as Box<dyn Runner>, Arc::new(m.tokenizer))
    })
}

fn engine(max_batch_tokens: usize) -> Engine<Box<dyn Runner>> {
    let (runner, tok) = runner(&model_path(), 0, 64 << 20, max_batch_tokens);
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
            let sampled = SamplingParams {
                temperature: 0.8,
                top_k: 20,
                seed: Some(7 + i as u64),
                max_tokens: 10,
                ..Default::default()
            };
            // Every sampling option, each request its own mix.
            let params = match i {
                0 => SamplingParams::greedy(10),
                1 => SamplingParams {
                    top_k: 0,
                    top_p: 0.9,
                    min_p: 0.05,
                    ..sampled
                },
                2 => SamplingParams {
                    repetition_penalty: 1.3,
                    logit_bias: vec![(28, -100.0), (30, 2.0)],
                    logprobs: Some(3),
                    ..SamplingParams::greedy(10)
                },
                3 => SamplingParams {
                    frequency_penalty: 0.5,
                    presence_penalty: 0.3,
                    ..sampled
                },
                _ => sampled,
            };
            Request {
                prompt: tok.encode(&text, true, true),
                params,
                constraint: None,
            }
        })
        .collect()
}

fn run<R: Runner>(e: &mut Engine<R>, reqs: Vec<Request>) -> Vec<Vec<u32>> {
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
    // The greedy request's answer also matches a plain greedy loop over the model alone
    // (one sequence, its own cache, the whole prompt in one pass).
    let prompt = &requests(&tok)[0].prompt;
    let ids = kiln_engine::with_backend!(test_device(0), b => {
        let m = load(&model_path(), b, &LoadOptions::default()).unwrap();
        let mut kv = m.model.new_kv(prompt.len() + 10).unwrap();
        let mut st = m.model.new_state(prompt.len(), 1).unwrap();
        m.model.forward(&mut st, &mut kv, prompt, 0, false).unwrap();
        let mut ids = Vec::new();
        loop {
            let next = kiln_model::sample::argmax(&st.logits);
            ids.push(next);
            if ids.len() == 10 || tok.is_eog(next) {
                break;
            }
            let pos = prompt.len() + ids.len() - 1;
            m.model
                .forward(&mut st, &mut kv, &[next], pos, false)
                .unwrap();
        }
        ids
    });
    assert_eq!(ids, alone[0]);
}

/// Decoding passes padded to the sizes a backend that records its passes runs (11 sequences
/// run as 12: the last one's row copied, its results dropped) give every request the tokens
/// it gets unpadded. On the CPU backend with `with_padding`, as the CUDA backend pads.
#[test]
fn padded_decoding_passes_change_no_tokens() {
    let engine_on = |pad: bool| {
        let b = kiln_cpu::CpuBackend::new(2).with_padding(pad);
        assert_eq!(b.decode_rows(11), if pad { 12 } else { 11 });
        let m = load(&model_path(), b, &LoadOptions::default()).unwrap();
        let r = ModelRunner::new(m.model, 64 << 20, 256, 16).unwrap();
        Engine::new(
            Box::new(r) as Box<dyn Runner>,
            Arc::new(m.tokenizer),
            EngineConfig {
                max_batch_tokens: 256,
                ..Default::default()
            },
        )
    };
    let mut plain = engine_on(false);
    let tok = plain.tokenizer().clone();
    // The five requests of `requests`, then six more with other seeds: 11 decoding at once.
    let many = || {
        let mut r = requests(&tok);
        for (i, mut extra) in requests(&tok)
            .into_iter()
            .chain(requests(&tok))
            .take(6)
            .enumerate()
        {
            extra.params.seed = Some(100 + i as u64);
            extra.params.ignore_eos = true;
            r.push(extra);
        }
        r
    };
    let want = run(&mut plain, many());
    let got = run(&mut engine_on(true), many());
    assert_eq!(want.len(), 11);
    for (i, (a, b)) in want.iter().zip(&got).enumerate() {
        assert!(!a.is_empty());
        assert_eq!(a, b, "request {i}");
    }
}

/// The model runner, noting which passes each engine step ran.
struct Watched {
    inner: Box<dyn Runner>,
    /// `'s'` for an ordinary pass, `'a'` for a teacher-forced one, in call order.
    calls: Vec<char>,
}

impl Runner for Watched {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn n_blocks(&self) -> usize {
        self.inner.n_blocks()
    }
    fn step(
        &mut self,
        batch: &[Slice<'_>],
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        self.calls.push('s');
        self.inner.step(batch, rows, adjust, masks, out)
    }
    fn step_all(&mut self, batch: &[Slice<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        self.calls.push('a');
        self.inner.step_all(batch, logits)
    }
    fn max_logit_rows(&self) -> usize {
        self.inner.max_logit_rows()
    }
    fn copy_block(&mut self, src: u32, dst: u32) {
        self.inner.copy_block(src, dst)
    }
}

/// ln p(tokens[p] | tokens[..p]) for p >= from, from one solo teacher-forced pass.
fn solo_logprobs(tokens: &[u32], from: usize) -> Vec<f32> {
    let (state, vocab) = kiln_engine::with_backend!(test_device(0), b => {
        let m = load(&model_path(), b, &LoadOptions::default()).unwrap();
        let model = &m.model;
        let mut kv = model.new_kv(tokens.len()).unwrap();
        let mut state = model.new_state(tokens.len(), tokens.len()).unwrap();
        model.forward(&mut state, &mut kv, tokens, 0, true).unwrap();
        (state.logits, model.cfg.vocab_size)
    });
    (from..tokens.len())
        .map(|p| {
            let row = &state[(p - 1) * vocab..p * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
            row[tokens[p] as usize] - lse
        })
        .collect()
}

#[test]
fn scored_text_matches_a_solo_teacher_forced_pass_amid_generation() {
    let mut alone_engine = engine(256);
    let tok = alone_engine.tokenizer().clone();
    let alone: Vec<Vec<u32>> = requests(&tok)
        .into_iter()
        .map(|r| run(&mut alone_engine, vec![r]).remove(0))
        .collect();

    // A small token budget interleaves the scored chunks (16 logit rows each) with the
    // other requests' prefill and decode steps.
    let (runner, _) = runner(&model_path(), 0, 64 << 20, 24);
    assert_eq!(runner.max_logit_rows(), 16);
    let mut e = Engine::new(
        Watched {
            inner: runner,
            calls: Vec::new(),
        },
        tok.clone(),
        EngineConfig {
            max_batch_tokens: 24,
            ..Default::default()
        },
    );
    let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n<|im_start|>user\nAnd what is the capital of Italy, and why did it become the capital?<|im_end|>\n";
    let tokens = tok.encode(text, true, true);
    let from = 12;
    assert!(
        tokens.len() > from + 16,
        "the scored part spans several chunks"
    );
    let rxs: Vec<_> = requests(&tok)
        .into_iter()
        .map(|r| {
            let (tx, rx) = mpsc::channel();
            e.submit(r, Box::new(move |ev| tx.send(ev).is_ok()))
                .unwrap();
            rx
        })
        .collect();
    let (stx, srx) = mpsc::channel::<Result<PromptScore, String>>();
    for from in [from, 0] {
        let stx = stx.clone();
        let req = ScoreRequest {
            tokens: tokens.clone(),
            from,
        };
        e.submit_score(req, Box::new(move |r| drop(stx.send(r))))
            .unwrap();
    }
    let mut mixed = 0;
    loop {
        let before = e.runner().calls.len();
        if !e.step().unwrap() {
            break;
        }
        let calls = &e.runner().calls[before..];
        if calls.contains(&'s') && calls.contains(&'a') {
            mixed += 1;
        }
    }
    assert!(
        mixed > 0,
        "some step ran scored chunks next to other requests"
    );
    let together: Vec<Vec<u32>> = rxs
        .into_iter()
        .map(|rx| {
            rx.try_iter()
                .filter_map(|ev| match ev {
                    Event::Token { id, .. } => Some(id),
                    Event::Failed(m) => panic!("{m}"),
                    Event::Done { .. } => None,
                })
                .collect()
        })
        .collect();
    assert_eq!(together, alone, "scoring changes no other request's tokens");
    assert_eq!(e.stats().blocks_used, 0);

    let mut scores: Vec<PromptScore> = srx.try_iter().map(|r| r.unwrap()).collect();
    scores.sort_by_key(|s| s.from);
    assert_eq!(scores.len(), 2);
    let mut worst = 0f32;
    for s in &scores {
        let want = solo_logprobs(&tokens, s.from);
        assert_eq!(s.logprobs.len(), tokens.len() - s.from);
        for (a, b) in s.logprobs.iter().zip(&want) {
            assert!(a.is_finite() && *a <= 0.0);
            worst = worst.max((a - b).abs());
        }
    }
    // On a GPU, passes of more than 8 rows round activations to f16 for the matrix units,
    // so a token scored in a large pass differs from the same token in a small one.
    let tol = if gpu_test() { 5e-2 } else { 2e-3 };
    assert!(
        worst < tol,
        "largest difference from the solo pass: {worst}"
    );
    // The same tokens from position 12 on, in both requests.
    for (a, b) in scores[1]
        .logprobs
        .iter()
        .zip(&scores[0].logprobs[from - 1..])
    {
        assert!((a - b).abs() < tol);
    }
    eprintln!(
        "largest difference {worst:.2e}; mean surprisal from {from}: {:.3} nats",
        scores[1].mean_nll()
    );
}

fn gpu_test() -> bool {
    std::env::var("KILN_TEST_DEVICE").is_ok_and(|d| d != "cpu")
}

/// Embeddings of the tiny fixtures (safetensors folders of random weights: Qwen2, Llama,
/// Phi-3) through the engine, against transformers' final hidden states pooled by mean and by
/// the last token (tests/fixtures/embeddings.json, written by scripts/gpu/embed_reference.py),
/// with the texts chunked into small prefills beside a generating request.
#[test]
fn embeddings_match_transformers() {
    let refs: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/embeddings.json")).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for arch in ["tiny-qwen2", "tiny-llama", "tiny-phi3"] {
        let (runner, tok) = runner(&root.join(arch).join("hf"), 2, 16 << 20, 7);
        let mut e = Engine::new(
            runner,
            tok,
            EngineConfig {
                max_batch_tokens: 7,
                ..Default::default()
            },
        );
        let (tx, _rx) = mpsc::channel();
        e.submit(
            Request::new(vec![1, 2, 3], SamplingParams::greedy(20)),
            Box::new(move |ev: Event| tx.send(ev).is_ok()),
        )
        .unwrap();
        let mut slots = Vec::new();
        for r in refs[arch].as_array().unwrap() {
            let ids: Vec<u32> = serde_json::from_value(r["ids"].clone()).unwrap();
            for pooling in [kiln_engine::Pooling::Mean, kiln_engine::Pooling::Last] {
                let want: Vec<f32> = serde_json::from_value(
                    r[if pooling == kiln_engine::Pooling::Mean {
                        "mean"
                    } else {
                        "last"
                    }]
                    .clone(),
                )
                .unwrap();
                let (tx, rx) = mpsc::channel();
                e.submit_embed(
                    kiln_engine::EmbedRequest {
                        tokens: ids.clone(),
                        pooling,
                        normalize: false,
                    },
                    Box::new(move |v| tx.send(v).unwrap()),
                )
                .unwrap();
                slots.push((rx, want, pooling));
            }
        }
        e.run_to_completion().unwrap();
        for (rx, want, pooling) in slots {
            let got = rx.recv().unwrap().unwrap();
            assert_eq!(got.len(), want.len());
            let num: f32 = got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum();
            let den: f32 = want.iter().map(|b| b * b).sum();
            let rel = (num / den).sqrt();
            assert!(rel < 2e-3, "{arch} {pooling:?}: relative L2 {rel}");
        }
    }
}

/// Prompt lookup on the real model: a passage copied from the prompt, greedy, alone and beside
/// sampled requests, is token for token the plain greedy answer, and most proposals are taken.
#[test]
fn prompt_lookup_copies_a_passage_as_plain_greedy_does() {
    let mut e = engine(256);
    let tok = e.tokenizer().clone();
    let passage = "The river wound slowly through the valley, past the old mill and the stone \
                   bridge, where children gathered every summer to fish and swim. In autumn the \
                   leaves turned gold and red, and the farmers brought their harvest to the \
                   market in the town square.";
    let text = format!(
        "<|im_start|>user\nRepeat this passage exactly: {passage}<|im_end|>\n<|im_start|>assistant\n"
    );
    let prompt = tok.encode(&text, true, true);
    let greedy = |k: usize| SamplingParams {
        prompt_lookup: k,
        ..SamplingParams::greedy(60)
    };
    let plain = run(&mut e, vec![Request::new(prompt.clone(), greedy(0))]).remove(0);
    let before = e.stats();
    let alone = run(&mut e, vec![Request::new(prompt.clone(), greedy(8))]).remove(0);
    let after = e.stats();
    assert_eq!(alone, plain);
    let proposed = after.draft_tokens - before.draft_tokens;
    let taken = after.accepted_tokens - before.accepted_tokens;
    eprintln!(
        "{taken} of {proposed} proposed tokens taken, {} steps",
        after.steps - before.steps
    );
    // The default model copies the passage; another (random weights, say) may not.
    if std::env::var_os("KILN_TEST_MODEL").is_none() {
        assert!(
            taken * 2 > proposed && taken > 20,
            "{taken} of {proposed} proposed tokens taken"
        );
        assert!(
            after.steps - before.steps < 40,
            "{} steps",
            after.steps - before.steps
        );
    }
    // Beside sampled requests, in a small token budget that chunks their prompts.
    let mut small = engine(24);
    let mut reqs = requests(&tok);
    reqs.insert(1, Request::new(prompt.clone(), greedy(8)));
    let together = run(&mut small, reqs);
    assert_eq!(together[1], plain);
    assert_eq!(small.stats().blocks_used, 0);
}

/// A draft model on the real model: the default model's Q4_1 file drafts for an F16 copy of
/// it (made as `kiln quantize --type f16` makes it). Greedy and sampled answers, alone and
/// beside requests that do not speculate, are token for token the plain ones, and most
/// proposals are taken. With `KILN_TEST_MODEL`, that model drafts for itself.
#[test]
fn a_draft_model_gives_the_plain_answers_on_the_real_model() {
    let draft_path = model_path();
    let target_path = match std::env::var_os("KILN_TEST_MODEL") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let q4 = kiln_model::fetch::ensure_default_model(true).unwrap();
            let f = kiln_formats::gguf::GgufFile::open(&q4).unwrap();
            let (w, _) = kiln_model::quantize::quantize_file(
                &f,
                kiln_model::quantize::FileType::F16,
                |_, _, _| {},
            )
            .unwrap();
            let dir = std::env::temp_dir().join(format!("kiln-draft-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("f16.gguf");
            w.write_to(&out).unwrap();
            out
        }
    };
    let engine = |max_batch_tokens: usize, with_draft: bool| {
        kiln_engine::with_backend!(test_device(0), b => {
            let draft = with_draft.then(|| {
                let d = load(&draft_path, b.sibling().unwrap(), &LoadOptions::default()).unwrap();
                ModelRunner::new(d.model, 64 << 20, max_batch_tokens, 16).unwrap()
            });
            let t = load(&target_path, b, &LoadOptions::default()).unwrap();
            let runner = ModelRunner::new(t.model, 64 << 20, max_batch_tokens, 16).unwrap();
            let e = Engine::new(
                Box::new(runner) as Box<dyn Runner>,
                Arc::new(t.tokenizer),
                EngineConfig {
                    max_batch_tokens,
                    ..Default::default()
                },
            );
            match draft {
                Some(dr) => e.with_draft(Box::new(dr)).unwrap(),
                None => e,
            }
        })
    };
    let mut plain = engine(256, false);
    let tok = plain.tokenizer().clone();
    let text = "<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n";
    let prompt = tok.encode(text, true, true);
    let greedy = |k: usize| SamplingParams {
        draft_max: k,
        ..SamplingParams::greedy(48)
    };
    let sampled = |k: usize| SamplingParams {
        draft_max: k,
        temperature: 0.7,
        top_k: 40,
        top_p: 0.95,
        seed: Some(11),
        max_tokens: 48,
        ..Default::default()
    };
    let want = run(
        &mut plain,
        vec![
            Request::new(prompt.clone(), greedy(0)),
            Request::new(prompt.clone(), sampled(0)),
        ],
    );
    drop(plain);
    let mut e = engine(256, true);
    let got = run(
        &mut e,
        vec![
            Request::new(prompt.clone(), greedy(6)),
            Request::new(prompt.clone(), sampled(6)),
        ],
    );
    let st = e.stats();
    eprintln!(
        "{} of {} proposed tokens taken in {} draft passes, {} steps",
        st.accepted_tokens, st.draft_tokens, st.draft_passes, st.steps
    );
    assert_eq!(got[0], want[0], "greedy");
    // Sampled: the same tokens as long as both draw the same; on the GPU a row verified
    // among others may round its logits differently, so only the first 16 must agree.
    if gpu_test() {
        assert_eq!(got[1][..16], want[1][..16], "sampled");
    } else {
        assert_eq!(got[1], want[1], "sampled");
    }
    assert!(
        st.accepted_tokens * 2 > st.draft_tokens && st.accepted_tokens > 30,
        "{st:?}"
    );
    // Beside requests that do not speculate, in a small token budget that chunks prompts.
    let mut small = engine(24, true);
    let mut reqs = requests(&tok);
    reqs.insert(1, Request::new(prompt.clone(), greedy(6)));
    let together = run(&mut small, reqs);
    assert_eq!(together[1], want[0]);
    assert_eq!(small.stats().blocks_used, 0);
    if std::env::var_os("KILN_TEST_MODEL").is_none() {
        let _ = std::fs::remove_dir_all(target_path.parent().unwrap());
    }
}
