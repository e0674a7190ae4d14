//! The engine end to end over a runner whose outputs depend only on what each sequence's
//! block table holds: any mix-up of blocks between sequences changes the tokens.

use std::sync::{Arc, Mutex};

use kiln_engine::FinishReason;
use kiln_engine::{
    EmbedRequest, Engine, EngineConfig, Event, Pooling, PromptScore, Request, Runner,
    SamplingParams, ScoreRequest, Slice, SubmitError,
};
use kiln_model::sample::{Adjust, RowSampling, Sampled};
use kiln_model::ModelError;
use kiln_tokenizer::Tokenizer;

/// A stand-in model: the "KV" of a position is the token written there; the logits of a
/// position hash every KV entry visible through the block table.
struct MockRunner {
    vocab: usize,
    block_size: usize,
    slots: Vec<Option<u32>>,
    ctx: usize,
    /// Rows of logits a teacher-forced pass may return (0: cannot score).
    logit_rows: usize,
    /// Most tokens seen in one teacher-forced pass.
    most_rows: usize,
    /// Split steps (`start`, then `finish`), as a GPU runner does.
    overlap: bool,
    /// Says a started pass has ended as soon as it is asked (the engine may then leave
    /// late masks behind), where a GPU runner says so once its stream is idle.
    pass_done: bool,
    /// The tokens of a started step.
    started: Option<Vec<Sampled>>,
    /// The logits of a started pass, not yet sampled.
    passed: Option<Vec<f32>>,
    /// Logits from the last token alone (a bigram model, whose greedy answers soon repeat
    /// themselves), instead of from every token before.
    bigram: bool,
    /// Nonzero: a model close to the unperturbed one, whose most likely token differs after
    /// about one context in three (a draft model).
    perturb: u64,
    /// Gives the engine host words for its masks (as a GPU runner does, page-locked there),
    /// counting the calls.
    host_words: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// The masks of a started sampling, where they lie and what they held: a runner that
    /// uploads host words as they are needs them unchanged until `finish`.
    sampled_masks: Option<(usize, Vec<u32>)>,
    /// Runs host work on this many threads of its own (as a CPU runner runs it on its pool),
    /// counting the calls that had work for several; 0: on the caller's thread.
    host_threads: usize,
    host_runs: Arc<std::sync::atomic::AtomicUsize>,
}

/// Host words in ordinary memory, for the mock.
struct VecWords(Vec<u32>);

impl kiln_model::HostWords for VecWords {
    fn words(&self) -> &[u32] {
        &self.0
    }
    fn words_mut(&mut self) -> &mut [u32] {
        &mut self.0
    }
}

/// The mock's logits after the token prefix whose running hash is `h`.
fn mock_row(vocab: usize, h: u64, row: &mut Vec<f32>) {
    row.clear();
    row.resize(vocab, 0.0);
    for k in 0..6 {
        let id = 100 + ((h >> (k * 9)) % 3000) as usize;
        row[id] += 6.0 - k as f32;
    }
}

fn hash_step(h: u64, v: u32) -> u64 {
    (h ^ (v as u64 + 1)).wrapping_mul(0x100000001b3)
}

const HASH0: u64 = 0xcbf29ce484222325;

impl MockRunner {
    fn new(vocab: usize, n_blocks: usize, block_size: usize) -> Self {
        MockRunner {
            vocab,
            block_size,
            slots: vec![None; n_blocks * block_size],
            ctx: 4096,
            logit_rows: 5,
            most_rows: 0,
            overlap: false,
            pass_done: false,
            started: None,
            passed: None,
            bigram: false,
            perturb: 0,
            host_threads: 0,
            host_runs: Arc::default(),
            host_words: None,
            sampled_masks: None,
        }
    }
    /// The row of logits after the context whose hash is `h`.
    fn row(&self, h: u64, row: &mut Vec<f32>) {
        mock_row(self.vocab, h, row);
        let g = hash_step(h, self.perturb as u32);
        if self.perturb != 0 && g.is_multiple_of(3) {
            row[100 + (g >> 7) as usize % 3000] += 6.5;
        }
    }
    /// The hash the logits after positions `..end` come from.
    fn ctx(&self, s: &Slice<'_>, end: usize) -> u64 {
        if self.bigram {
            hash_step(HASH0, self.kv(s, end - 1))
        } else {
            (0..end).fold(HASH0, |h, p| hash_step(h, self.kv(s, p)))
        }
    }
    fn overlapping(vocab: usize, n_blocks: usize, block_size: usize) -> Self {
        MockRunner {
            overlap: true,
            ..Self::new(vocab, n_blocks, block_size)
        }
    }
    fn slot(&self, blocks: &[u32], pos: usize) -> usize {
        blocks[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
    /// Writes the batch's KV and gives one row of logits per slice that wants them.
    fn pass(&mut self, batch: &[Slice<'_>]) -> Vec<f32> {
        let mut row = Vec::new();
        let mut logits = Vec::new();
        for s in batch {
            self.write(s);
            if s.want_logits {
                let h = self.ctx(s, s.pos0 + s.tokens.len());
                self.row(h, &mut row);
                logits.extend_from_slice(&row);
            }
        }
        logits
    }
    fn write(&mut self, s: &Slice<'_>) {
        for (i, &t) in s.tokens.iter().enumerate() {
            let k = self.slot(s.blocks, s.pos0 + i);
            self.slots[k] = Some(t);
        }
    }
    fn kv(&self, s: &Slice<'_>, p: usize) -> u32 {
        self.slots[self.slot(s.blocks, p)].expect("KV read before written")
    }
}

impl Runner for MockRunner {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn context_length(&self) -> usize {
        self.ctx
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn n_blocks(&self) -> usize {
        self.slots.len() / self.block_size
    }
    fn step(
        &mut self,
        batch: &[Slice<'_>],
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        let mut logits = self.pass(batch);
        let mut scratch = kiln_model::sample::Scratch::default();
        kiln_model::sample::sample_rows(
            &mut logits,
            self.vocab,
            rows,
            adjust,
            masks,
            out,
            &mut scratch,
        );
        Ok(())
    }
    fn overlaps(&self) -> bool {
        self.overlap
    }
    fn pass_done(&self) -> bool {
        assert!(
            self.passed.is_some(),
            "pass_done asked with no pass started"
        );
        self.pass_done
    }
    fn host_run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.host_threads;
        if n == 0 {
            return f(0, 1);
        }
        self.host_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::scope(|sc| {
            for i in 0..n {
                sc.spawn(move || f(i, n));
            }
        });
    }
    fn start_pass(&mut self, batch: &[Slice<'_>]) -> Result<(), ModelError> {
        assert!(
            self.overlap,
            "start_pass called on a runner that does not overlap"
        );
        assert!(
            self.started.is_none() && self.passed.is_none(),
            "a step started before the last finished"
        );
        self.passed = Some(self.pass(batch));
        Ok(())
    }
    fn start_sampling(
        &mut self,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> Result<(), ModelError> {
        let mut logits = self.passed.take().expect("sampling without a pass");
        let mut out = Vec::new();
        let mut scratch = kiln_model::sample::Scratch::default();
        kiln_model::sample::sample_rows(
            &mut logits,
            self.vocab,
            rows,
            adjust,
            masks,
            &mut out,
            &mut scratch,
        );
        self.started = Some(out);
        if self.host_words.is_some() && !masks.is_empty() {
            self.sampled_masks = Some((masks.as_ptr() as usize, masks.to_vec()));
        }
        Ok(())
    }
    fn finish(&mut self, out: &mut Vec<Sampled>) -> Result<(), ModelError> {
        *out = self.started.take().expect("finish without start");
        if let Some((at, was)) = self.sampled_masks.take() {
            // SAFETY: the engine's host words (from `host_words`) are alive and not written
            // while it waits here; if it had written them the comparison fails, which is
            // what it checks.
            let now = unsafe { std::slice::from_raw_parts(at as *const u32, was.len()) };
            assert!(
                now == was,
                "the masks changed between start_sampling and finish"
            );
        }
        Ok(())
    }
    fn host_words(&self, n: usize) -> Option<Box<dyn kiln_model::HostWords>> {
        let calls = self.host_words.as_ref()?;
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Box::new(VecWords(vec![0; n])))
    }
    fn step_all(&mut self, batch: &[Slice<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        let n: usize = batch.iter().map(|s| s.tokens.len()).sum();
        assert!(
            n <= self.logit_rows,
            "{n} rows asked of {}",
            self.logit_rows
        );
        self.most_rows = self.most_rows.max(n);
        let mut row = Vec::new();
        for s in batch {
            self.write(s);
            for p in s.pos0..s.pos0 + s.tokens.len() {
                self.row(self.ctx(s, p + 1), &mut row);
                logits.extend_from_slice(&row);
            }
        }
        Ok(())
    }
    fn max_logit_rows(&self) -> usize {
        self.logit_rows
    }
    fn step_hidden(&mut self, batch: &[Slice<'_>], out: &mut Vec<f32>) -> Result<(), ModelError> {
        let n: usize = batch.iter().map(|s| s.tokens.len()).sum();
        assert!(
            n <= self.logit_rows,
            "{n} rows asked of {}",
            self.logit_rows
        );
        self.most_rows = self.most_rows.max(n);
        for s in batch {
            self.write(s);
            let mut h = (0..s.pos0).fold(HASH0, |h, p| hash_step(h, self.kv(s, p)));
            for p in s.pos0..s.pos0 + s.tokens.len() {
                h = hash_step(h, self.kv(s, p));
                out.extend_from_slice(&mock_hidden(h, p));
            }
        }
        Ok(())
    }
    fn hidden_size(&self) -> usize {
        MOCK_DIM
    }
    fn copy_block(&mut self, src: u32, dst: u32) {
        let bs = self.block_size;
        for i in 0..bs {
            self.slots[dst as usize * bs + i] = self.slots[src as usize * bs + i];
        }
    }
}

fn tokenizer() -> Arc<Tokenizer> {
    let path = kiln_model::fetch::ensure_default_model(true).unwrap();
    let f = kiln_formats::gguf::GgufFile::open(path).unwrap();
    Arc::new(Tokenizer::from_gguf(&f).unwrap())
}

#[derive(Default, Clone, Debug, PartialEq)]
struct Collected {
    ids: Vec<u32>,
    text: String,
    done: Option<FinishReason>,
    failed: Option<String>,
    /// Generated tokens, as the end reports them.
    completion: Option<usize>,
}

fn sink(out: Arc<Mutex<Collected>>, stop_after: Option<usize>) -> kiln_engine::Sink {
    Box::new(move |e| {
        let mut c = out.lock().unwrap();
        match e {
            Event::Token { id, text, .. } => {
                c.ids.push(id);
                c.text.push_str(&text);
                return stop_after.is_none_or(|n| c.ids.len() < n);
            }
            Event::Done { reason, usage } => {
                c.done = Some(reason);
                c.completion = Some(usage.completion_tokens);
            }
            Event::Failed(m) => c.failed = Some(m),
        }
        true
    })
}

fn prompts() -> Vec<Vec<u32>> {
    let shared: Vec<u32> = (200..240).collect();
    (0..8)
        .map(|i| {
            let mut p = if i % 2 == 0 { shared.clone() } else { vec![] };
            p.extend((0..(5 + i * 7)).map(|k| 300 + (k * 13 + i * 101) as u32 % 900));
            p
        })
        .collect()
}

fn params(i: usize) -> SamplingParams {
    if i.is_multiple_of(2) {
        SamplingParams::greedy(24)
    } else {
        SamplingParams {
            temperature: 0.9,
            top_k: 4,
            seed: Some(1000 + i as u64),
            max_tokens: 24,
            ..Default::default()
        }
    }
}

fn run_alone(tok: &Arc<Tokenizer>, prompt: &[u32], p: SamplingParams) -> Collected {
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 64, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let out = Arc::new(Mutex::new(Collected::default()));
    e.submit(
        Request {
            prompt: prompt.to_vec(),
            params: p,
            constraint: None,
        },
        sink(out.clone(), None),
    )
    .unwrap();
    e.run_to_completion().unwrap();
    let c = out.lock().unwrap().clone();
    c
}

#[test]
fn batched_outputs_equal_solo_outputs() {
    let tok = tokenizer();
    let ps = prompts();
    let solo: Vec<Collected> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| run_alone(&tok, p, params(i)))
        .collect();
    // Small batches force chunked prefill and interleaving; a small pool forces preemption.
    for (n_blocks, max_batch_tokens) in [(64, 256), (64, 7), (12, 32)] {
        let mut e = Engine::new(
            MockRunner::new(tok.vocab_size(), n_blocks, 16),
            tok.clone(),
            EngineConfig {
                max_batch_tokens,
                ..Default::default()
            },
        );
        let outs: Vec<_> = (0..ps.len())
            .map(|_| Arc::new(Mutex::new(Collected::default())))
            .collect();
        for (i, p) in ps.iter().enumerate() {
            e.submit(
                Request {
                    prompt: p.clone(),
                    params: params(i),
                    constraint: None,
                },
                sink(outs[i].clone(), None),
            )
            .unwrap();
        }
        e.run_to_completion().unwrap();
        for (i, o) in outs.iter().enumerate() {
            let o = o.lock().unwrap();
            assert_eq!(
                o.ids, solo[i].ids,
                "request {i} with {n_blocks} blocks, batch {max_batch_tokens}"
            );
            assert_eq!(o.done, Some(FinishReason::Length));
        }
        let st = e.stats();
        assert_eq!(st.blocks_used, 0, "every block returned");
        if n_blocks == 12 {
            assert!(
                st.preemptions > 0,
                "the small pool should have forced preemption"
            );
        }
    }
}

#[test]
fn cancellation_frees_blocks_at_the_next_step() {
    let tok = tokenizer();
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 32, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let out = Arc::new(Mutex::new(Collected::default()));
    e.submit(
        Request {
            prompt: (200..260).collect(),
            params: SamplingParams::greedy(100),
            constraint: None,
        },
        sink(out.clone(), Some(3)),
    )
    .unwrap();
    e.step().unwrap();
    assert!(e.stats().blocks_used > 0);
    e.run_to_completion().unwrap();
    assert_eq!(out.lock().unwrap().ids.len(), 3);
    assert_eq!(e.stats().blocks_used, 0);
    assert_eq!(e.stats().running, 0);
}

#[test]
fn flood_within_budget_never_crashes() {
    let tok = tokenizer();
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 10, 16),
        tok.clone(),
        EngineConfig {
            max_queue: 50,
            ..Default::default()
        },
    );
    let mut accepted = Vec::new();
    let (mut too_large, mut queue_full) = (0, 0);
    for i in 0..200usize {
        let len = if i % 10 == 0 { 400 } else { 10 + i % 30 };
        let prompt: Vec<u32> = (0..len)
            .map(|k| 200 + (k as u32 * 7 + i as u32) % 500)
            .collect();
        let out = Arc::new(Mutex::new(Collected::default()));
        match e.submit(
            Request {
                prompt,
                params: SamplingParams::greedy(20),
                constraint: None,
            },
            sink(out.clone(), None),
        ) {
            Ok(_) => accepted.push(out),
            Err(SubmitError::TooLarge { .. }) => too_large += 1,
            Err(SubmitError::QueueFull(_)) => queue_full += 1,
            Err(other) => panic!("unexpected refusal {other}"),
        }
    }
    assert!(too_large > 0 && queue_full > 0);
    e.run_to_completion().unwrap();
    for o in &accepted {
        let o = o.lock().unwrap();
        assert!(o.failed.is_none(), "{:?}", o.failed);
        assert!(o.done.is_some(), "every accepted request finishes");
    }
    assert_eq!(e.stats().blocks_used, 0);
}

#[test]
fn stop_strings_cut_the_text() {
    let tok = tokenizer();
    let p: Vec<u32> = (200..230).collect();
    let full = run_alone(&tok, &p, SamplingParams::greedy(24));
    assert!(full.text.len() > 8, "{:?}", full.text);
    // Stop at a piece from the middle of the text.
    let start = full
        .text
        .char_indices()
        .nth(full.text.chars().count() / 2)
        .unwrap()
        .0;
    let stop: String = full.text[start..].chars().take(3).collect();
    let cut = run_alone(
        &tok,
        &p,
        SamplingParams {
            stop: vec![stop.clone()],
            ..SamplingParams::greedy(24)
        },
    );
    assert_eq!(cut.done, Some(FinishReason::Stop));
    let expect = &full.text[..full.text.find(&stop).unwrap()];
    assert_eq!(cut.text, expect);
}

/// A stop string found among several tokens taken at once (proposals that prompt lookup got
/// accepted), while the sequence runs its next token beside others on a runner that
/// overlaps: the text is cut at the stop string, the sequence ends, and the other sequences of
/// the step keep their own tokens (the cut sequence's row is not taken for theirs).
#[test]
fn stop_strings_in_accepted_proposals_cut_the_text_beside_others() {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    // Prompts that end where they began: the bigram mock's greedy chain from a token, then
    // that token again, so that the answer repeats the prompt and prompt lookup's proposals
    // are taken, several a step.
    let chain = |a: u32| {
        let mut p = vec![a];
        let mut row = Vec::new();
        while p.len() < 40 {
            mock_row(vocab, hash_step(HASH0, *p.last().unwrap()), &mut row);
            let next = kiln_model::sample::argmax(&row);
            p.push(next);
        }
        p.push(a);
        p
    };
    let ps: Vec<Vec<u32>> = (0..6).map(|i| chain(150 + 37 * i)).collect();
    let taken = std::sync::atomic::AtomicUsize::new(0);
    let greedy = |k: usize, stop: Vec<String>| SamplingParams {
        prompt_lookup: k,
        stop,
        ..SamplingParams::greedy(40)
    };
    // The first request runs `ahead` steps alone; the others' prompts then take the step's
    // token budget in chunks, so that its proposals stop (no budget left) right after
    // steps that took several of them.
    let run = |runner: MockRunner, reqs: Vec<(Vec<u32>, SamplingParams)>, ahead: usize| {
        let cfg = EngineConfig {
            max_batch_tokens: 16,
            ..Default::default()
        };
        let mut e = Engine::new(runner, tok.clone(), cfg);
        let mut outs = Vec::new();
        for (k, (p, sp)) in reqs.into_iter().enumerate() {
            let out = Arc::new(Mutex::new(Collected::default()));
            e.submit(Request::new(p, sp), sink(out.clone(), None))
                .unwrap();
            outs.push(out);
            if k == 0 {
                for _ in 0..ahead {
                    e.step().unwrap();
                }
            }
        }
        e.run_to_completion().unwrap();
        taken.fetch_add(
            e.stats().accepted_tokens as usize,
            std::sync::atomic::Ordering::Relaxed,
        );
        assert_eq!(e.stats().blocks_used, 0);
        outs.iter()
            .map(|o| o.lock().unwrap().clone())
            .collect::<Vec<_>>()
    };
    let bigram = |mut r: MockRunner| {
        r.bigram = true;
        r
    };
    // Each prompt's plain answer, alone.
    let full: Vec<Collected> = ps
        .iter()
        .map(|p| {
            run(
                bigram(MockRunner::new(vocab, 64, 16)),
                vec![(p.clone(), greedy(0, vec![]))],
                0,
            )
            .remove(0)
        })
        .collect();
    let mut cuts = 0;
    for (i, f) in full.iter().enumerate() {
        let chars: Vec<(usize, char)> = f.text.char_indices().collect();
        for at in (4..chars.len().saturating_sub(2)).step_by(5) {
            let stop: String = f.text[chars[at].0..].chars().take(2).collect();
            // The prompt with the stop string (speculating) first, then the others (plain).
            let order: Vec<usize> = std::iter::once(i)
                .chain((0..ps.len()).filter(|&j| j != i))
                .collect();
            let reqs: Vec<(Vec<u32>, SamplingParams)> = order
                .iter()
                .map(|&j| {
                    let sp = if j == i {
                        greedy(4, vec![stop.clone()])
                    } else {
                        greedy(0, vec![])
                    };
                    (ps[j].clone(), sp)
                })
                .collect();
            let mut r = bigram(MockRunner::overlapping(vocab, 256, 16));
            r.logit_rows = 64;
            let got = run(r, reqs, at % 7);
            for (&j, g) in order.iter().zip(&got) {
                assert!(g.failed.is_none(), "{:?}", g.failed);
                if j == i {
                    let want = &f.text[..f.text.find(&stop).unwrap()];
                    assert_eq!(g.text, want, "prompt {i}, stop {stop:?}");
                    assert_eq!(g.done, Some(FinishReason::Stop));
                    // The end counts the tokens streamed, not proposals in flight.
                    assert_eq!(g.completion, Some(g.ids.len()), "prompt {i}, stop {stop:?}");
                    cuts += 1;
                } else {
                    assert_eq!(
                        g.ids, full[j].ids,
                        "prompt {j} beside prompt {i} cut at {stop:?}"
                    );
                }
            }
        }
    }
    assert!(cuts > 10, "{cuts} cuts");
    let taken = taken.into_inner();
    assert!(taken > 100, "{taken} proposed tokens taken");
}

#[test]
fn bad_requests_are_refused_by_name() {
    let tok = tokenizer();
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 8, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let out = Arc::new(Mutex::new(Collected::default()));
    let r = |prompt: Vec<u32>, params| Request::new(prompt, params);
    let err = e
        .submit(
            r(vec![], SamplingParams::default()),
            sink(out.clone(), None),
        )
        .unwrap_err();
    assert!(err.to_string().contains("empty"));
    let err = e
        .submit(
            r(vec![1, 999_999], SamplingParams::default()),
            sink(out.clone(), None),
        )
        .unwrap_err();
    assert!(err.to_string().contains("999999"));
    let err = e
        .submit(
            r(
                vec![5],
                SamplingParams {
                    top_p: 2.0,
                    ..Default::default()
                },
            ),
            sink(out.clone(), None),
        )
        .unwrap_err();
    assert!(err.to_string().contains("top_p"));
    let err = e
        .submit(r(vec![5; 200], SamplingParams::default()), sink(out, None))
        .unwrap_err();
    assert!(matches!(err, SubmitError::TooLarge { .. }));
}

#[test]
fn handle_serves_concurrent_callers() {
    let tok = tokenizer();
    let e = Engine::new(
        MockRunner::new(tok.vocab_size(), 64, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let h = kiln_engine::EngineHandle::spawn(e);
    let ps = prompts();
    let solo: Vec<Collected> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| run_alone(&tok, p, params(i)))
        .collect();
    let threads: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let h = h.clone();
            let p = p.clone();
            std::thread::spawn(move || {
                let (tx, rx) = std::sync::mpsc::channel();
                h.submit(
                    Request {
                        prompt: p,
                        params: params(i),
                        constraint: None,
                    },
                    Box::new(move |e| tx.send(e).is_ok()),
                )
                .unwrap();
                let mut ids = Vec::new();
                for e in rx {
                    match e {
                        Event::Token { id, .. } => ids.push(id),
                        Event::Done { .. } => break,
                        Event::Failed(m) => panic!("{m}"),
                    }
                }
                ids
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), solo[i].ids, "request {i}");
    }
    h.shutdown();
    assert_eq!(h.stats().blocks_used, 0);
}

/// Callers submitting at the same moment against a queue of one: each is either refused at
/// `submit` (a 429 in the server) or served to the end, never accepted and then refused by
/// the engine thread (which the server could only report as a failed request, a 500).
#[test]
fn a_full_queue_refuses_at_submit_never_after() {
    let tok = tokenizer();
    let e = Engine::new(
        MockRunner::new(tok.vocab_size(), 64, 16),
        tok.clone(),
        EngineConfig {
            max_running: 1,
            max_queue: 1,
            ..Default::default()
        },
    );
    let h = kiln_engine::EngineHandle::spawn(e);
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..40u32 {
        let gate = Arc::new(std::sync::Barrier::new(6));
        let threads: Vec<_> = (0..6u32)
            .map(|i| {
                let (h, gate) = (h.clone(), gate.clone());
                std::thread::spawn(move || {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let prompt: Vec<u32> = (0..12).map(|k| 200 + k + i + round).collect();
                    gate.wait();
                    let r = h.submit(
                        Request {
                            prompt,
                            params: SamplingParams::greedy(8),
                            constraint: None,
                        },
                        Box::new(move |e| tx.send(e).is_ok()),
                    );
                    match r {
                        Err(SubmitError::QueueFull(_)) => false,
                        Err(other) => panic!("unexpected refusal {other}"),
                        Ok(_) => {
                            for e in rx {
                                match e {
                                    Event::Done { .. } => return true,
                                    Event::Failed(m) => panic!("accepted, then failed: {m}"),
                                    Event::Token { .. } => {}
                                }
                            }
                            panic!("accepted, then dropped without an end");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            if t.join().expect("a caller failed") {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} served, {refused} refused"
    );
    h.shutdown();
}

#[test]
fn a_lone_sequence_at_the_budget_ends_cleanly() {
    let tok = tokenizer();
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 2, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let out = Arc::new(Mutex::new(Collected::default()));
    e.submit(
        Request {
            prompt: (200..210).collect(),
            params: SamplingParams::greedy(100),
            constraint: None,
        },
        sink(out.clone(), None),
    )
    .unwrap();
    e.run_to_completion().unwrap();
    let o = out.lock().unwrap();
    assert_eq!(o.done, Some(FinishReason::ContextFull));
    assert!(o.failed.is_none());
    assert_eq!(
        o.ids.len(),
        32 - 10 + 1,
        "fills the pool, the last token needs no KV slot"
    );
    assert_eq!(e.stats().blocks_used, 0);
}

/// What the mock gives as ln p(tokens[p] | tokens[..p]) for p >= from, computed directly.
fn expected_logprobs(vocab: usize, tokens: &[u32], from: usize) -> Vec<f32> {
    let mut row = Vec::new();
    let mut h = HASH0;
    let mut out = Vec::new();
    for p in 1..tokens.len() {
        h = hash_step(h, tokens[p - 1]);
        if p >= from {
            mock_row(vocab, h, &mut row);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
            out.push(row[tokens[p] as usize] - lse);
        }
    }
    out
}

const MOCK_DIM: usize = 3;

/// The mock's hidden state at position `p`, whose context hashes to `h`.
fn mock_hidden(h: u64, p: usize) -> [f32; MOCK_DIM] {
    [(h % 1000) as f32, p as f32, 1.0]
}

/// The embedding the mock should give, computed directly.
fn expected_embedding(tokens: &[u32], pooling: Pooling) -> Vec<f32> {
    let mut h = HASH0;
    let rows: Vec<[f32; MOCK_DIM]> = tokens
        .iter()
        .enumerate()
        .map(|(p, &t)| {
            h = hash_step(h, t);
            mock_hidden(h, p)
        })
        .collect();
    match pooling {
        Pooling::Last => rows.last().unwrap().to_vec(),
        Pooling::Mean => (0..MOCK_DIM)
            .map(|d| (rows.iter().map(|r| f64::from(r[d])).sum::<f64>() / rows.len() as f64) as f32)
            .collect(),
    }
}

type EmbedSlot = Arc<Mutex<Option<Result<Vec<f32>, String>>>>;

/// Greedy answers with prompt lookup, on a mock whose answers repeat (bigram) or not, with
/// other requests beside them, chunked prefills, few rows, a small pool that preempts, and a
/// runner that overlaps: always the tokens of plain greedy decoding alone, and on the
/// repeating mock in fewer steps.
#[test]
fn prompt_lookup_gives_the_plain_greedy_answer_in_fewer_steps() {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let ps = prompts();
    let greedy = |k: usize| SamplingParams {
        prompt_lookup: k,
        ..SamplingParams::greedy(60)
    };
    for bigram in [true, false] {
        let plain = |p: &[u32]| {
            let mut r = MockRunner::new(vocab, 64, 16);
            r.bigram = bigram;
            let mut e = Engine::new(r, tok.clone(), EngineConfig::default());
            let out = Arc::new(Mutex::new(Collected::default()));
            e.submit(Request::new(p.to_vec(), greedy(0)), sink(out.clone(), None))
                .unwrap();
            e.run_to_completion().unwrap();
            let c = out.lock().unwrap().clone();
            (c, e.stats().steps)
        };
        let solo: Vec<(Collected, u64)> = ps.iter().map(|p| plain(p)).collect();
        for (n_blocks, max_batch_tokens, rows, overlap) in [
            (64, 256, 64, false),
            (64, 7, 3, false),
            (14, 32, 9, false),
            (64, 256, 64, true),
        ] {
            let mut r = if overlap {
                MockRunner::overlapping(vocab, n_blocks, 16)
            } else {
                MockRunner::new(vocab, n_blocks, 16)
            };
            r.bigram = bigram;
            r.logit_rows = rows;
            let mut e = Engine::new(
                r,
                tok.clone(),
                EngineConfig {
                    max_batch_tokens,
                    ..Default::default()
                },
            );
            let outs: Vec<_> = ps
                .iter()
                .map(|_| Arc::new(Mutex::new(Collected::default())))
                .collect();
            for (i, p) in ps.iter().enumerate() {
                // Every other request speculates; the rest sample beside them.
                let params = if i % 2 == 0 { greedy(8) } else { params(i) };
                e.submit(Request::new(p.clone(), params), sink(outs[i].clone(), None))
                    .unwrap();
            }
            e.run_to_completion().unwrap();
            let label = format!("bigram {bigram}, {n_blocks} blocks, batch {max_batch_tokens}, {rows} rows, overlap {overlap}");
            for (i, o) in outs.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
                let o = o.lock().unwrap();
                assert_eq!(o.ids, solo[i].0.ids, "request {i}, {label}");
                assert_eq!(o.done, solo[i].0.done, "request {i}, {label}");
            }
            let st = e.stats();
            assert_eq!(st.blocks_used, 0, "{label}");
            assert!(st.accepted_tokens <= st.draft_tokens);
            if bigram && rows == 64 {
                assert!(st.accepted_tokens > 10, "{label}: {st:?}");
            }
        }
        // Alone, a long repeating answer takes far fewer steps.
        if bigram {
            let long = |k: usize| {
                let mut r = MockRunner::new(vocab, 64, 16);
                r.bigram = true;
                let mut e = Engine::new(r, tok.clone(), EngineConfig::default());
                let out = Arc::new(Mutex::new(Collected::default()));
                let p = SamplingParams {
                    prompt_lookup: k,
                    ..SamplingParams::greedy(400)
                };
                e.submit(Request::new(ps[0].clone(), p), sink(out.clone(), None))
                    .unwrap();
                e.run_to_completion().unwrap();
                let ids = out.lock().unwrap().ids.clone();
                (ids, e.stats().steps)
            };
            let (a, plain_steps) = long(0);
            let (b, steps) = long(8);
            assert_eq!(a, b);
            assert!(
                steps * 2 < plain_steps,
                "{steps} steps against {plain_steps}"
            );
        }
    }
    // Too many proposals a step: refused by name.
    let bad = SamplingParams {
        prompt_lookup: 17,
        ..SamplingParams::default()
    };
    assert_eq!(bad.validate().unwrap_err().param, "prompt_lookup");
}

/// `draft_p_min`: a greedy request's draft stops at a token it is less sure of, so fewer
/// tokens are proposed the higher the bar, none at 1 (no token is certain), and the answers
/// stay the plain ones; a sampled request's proposals do not depend on it.
#[test]
fn a_draft_stops_proposing_where_it_is_unsure() {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let ps = prompts();
    let with = |i: usize| SamplingParams {
        draft_max: 6,
        max_tokens: 40,
        ..params(i)
    };
    let solo: Vec<Collected> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            run_alone(
                &tok,
                p,
                SamplingParams {
                    draft_max: 0,
                    ..with(i)
                },
            )
        })
        .collect();
    // Tokens proposed for the greedy requests (even), then for the sampled ones (odd).
    let proposed = |p_min: f32| {
        [0usize, 1].map(|parity| {
            let mut d = MockRunner::new(vocab, 64, 16);
            d.perturb = 7;
            let mut e = Engine::new(
                MockRunner::new(vocab, 64, 16),
                tok.clone(),
                EngineConfig {
                    draft_p_min: p_min,
                    // The counts are compared between runs: proposals sized by the measured
                    // costs would follow the mock's timings.
                    draft_by_cost: false,
                    ..Default::default()
                },
            )
            .with_draft(Box::new(d))
            .unwrap();
            let mine: Vec<usize> = (0..ps.len()).filter(|i| i % 2 == parity).collect();
            let outs: Vec<_> = mine
                .iter()
                .map(|_| Arc::new(Mutex::new(Collected::default())))
                .collect();
            for (&i, o) in mine.iter().zip(&outs) {
                e.submit(Request::new(ps[i].clone(), with(i)), sink(o.clone(), None))
                    .unwrap();
            }
            e.run_to_completion().unwrap();
            for (&i, o) in mine.iter().zip(&outs) {
                assert_eq!(
                    o.lock().unwrap().ids,
                    solo[i].ids,
                    "request {i}, p_min {p_min}"
                );
            }
            e.stats().draft_tokens
        })
    };
    let [g0, s0] = proposed(0.0);
    let [g_mid, s_mid] = proposed(0.01);
    let [g1, s1] = proposed(1.0);
    // (The mock's logits are flat: its most likely token holds about 1%.)
    eprintln!(
        "greedy proposals at p_min 0 / 0.01 / 1: {g0} / {g_mid} / {g1}; sampled {s0} / {s_mid} / {s1}"
    );
    assert!(g0 > g_mid && g_mid > g1 && g1 == 0, "{g0} / {g_mid} / {g1}");
    assert!(s0 > 0 && s0 == s_mid && s0 == s1, "{s0} / {s_mid} / {s1}");
}

/// A draft model proposes and the model verifies: every answer, greedy or sampled with its
/// seed, is the one plain decoding gives alone. With a draft equal to the model (every
/// proposal taken), one close to it, and one that hardly agrees (a bigram mock); beside
/// requests that do not speculate, with chunked prefills, few rows, a small pool that
/// preempts, a draft cache too small for everyone, and a runner that overlaps.
#[test]
fn a_draft_model_gives_the_plain_answer_greedy_or_sampled() {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let ps = prompts();
    let with = |i: usize, draft_max: usize| SamplingParams {
        draft_max,
        max_tokens: 40,
        // Penalties on some sampled requests: verification applies them as plain
        // decoding does, after each token taken.
        repetition_penalty: if i % 4 == 3 { 1.3 } else { 1.0 },
        ..params(i)
    };
    let solo: Vec<Collected> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| run_alone(&tok, p, with(i, 0)))
        .collect();
    for (name, perturb, bigram) in [("same", 0, false), ("close", 7, false), ("bigram", 0, true)] {
        for (n_blocks, draft_blocks, max_batch_tokens, rows, overlap) in [
            (64, 64, 256, 64, false),
            (64, 64, 7, 3, false),
            (14, 14, 32, 9, false),
            (64, 6, 256, 64, false),
            (64, 64, 256, 64, true),
        ] {
            let mut r = if overlap {
                MockRunner::overlapping(vocab, n_blocks, 16)
            } else {
                MockRunner::new(vocab, n_blocks, 16)
            };
            r.logit_rows = rows;
            let mut d = MockRunner::new(vocab, draft_blocks, 16);
            d.perturb = perturb;
            d.bigram = bigram;
            let mut e = Engine::new(
                r,
                tok.clone(),
                EngineConfig {
                    max_batch_tokens,
                    ..Default::default()
                },
            )
            .with_draft(Box::new(d))
            .unwrap();
            let outs: Vec<_> = ps
                .iter()
                .map(|_| Arc::new(Mutex::new(Collected::default())))
                .collect();
            for (i, p) in ps.iter().enumerate() {
                // Two requests in three speculate (greedy and sampled); the rest do not.
                let k = if i % 3 == 2 { 0 } else { 6 };
                e.submit(
                    Request::new(p.clone(), with(i, k)),
                    sink(outs[i].clone(), None),
                )
                .unwrap();
            }
            e.run_to_completion().unwrap();
            let label = format!("draft {name}, {n_blocks}/{draft_blocks} blocks, batch {max_batch_tokens}, {rows} rows, overlap {overlap}");
            for (i, o) in outs.iter().enumerate() {
                let o = o.lock().unwrap();
                assert_eq!(o.ids, solo[i].ids, "request {i}, {label}");
                assert_eq!(o.done, solo[i].done, "request {i}, {label}");
            }
            let st = e.stats();
            assert_eq!(st.blocks_used, 0, "{label}");
            assert!(st.accepted_tokens <= st.draft_tokens, "{label}");
            if rows == 64 && draft_blocks == 64 {
                assert!(st.draft_tokens > 40, "{label}: {st:?}");
                assert!(st.draft_passes > 0, "{label}: {st:?}");
                match name {
                    // The penalised requests' drafts miss now and then.
                    "same" => assert!(
                        st.accepted_tokens * 10 >= st.draft_tokens * 9,
                        "{label}: {st:?}"
                    ),
                    "close" => {
                        assert!(st.accepted_tokens * 4 >= st.draft_tokens, "{label}: {st:?}")
                    }
                    _ => {}
                }
            }
        }
    }
    // While more sequences than `max_speculative_batch` run, nothing is proposed: with at
    // most 3, the 8 requests speculate only once few are left.
    for (most, none) in [(0, true), (3, false)] {
        let mut e = Engine::new(
            MockRunner::new(vocab, 64, 16),
            tok.clone(),
            EngineConfig {
                max_speculative_batch: most,
                ..Default::default()
            },
        )
        .with_draft(Box::new(MockRunner::new(vocab, 64, 16)))
        .unwrap();
        let outs: Vec<_> = ps
            .iter()
            .map(|_| Arc::new(Mutex::new(Collected::default())))
            .collect();
        let mut proposed_with = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            // Answers of different lengths, so that fewer and fewer run.
            let params = SamplingParams {
                max_tokens: 4 + 5 * i,
                ..with(i, 6)
            };
            e.submit(Request::new(p.clone(), params), sink(outs[i].clone(), None))
                .unwrap();
        }
        while e.step().unwrap() {
            let st = e.stats();
            proposed_with.push((st.running, st.draft_tokens));
        }
        for (i, o) in outs.iter().enumerate() {
            let want = &solo[i].ids[..solo[i].ids.len().min(4 + 5 * i)];
            assert_eq!(o.lock().unwrap().ids, want, "request {i}");
        }
        let st = e.stats();
        assert_eq!(st.draft_tokens == 0, none, "{st:?}");
        // No proposal while more than `most` ran.
        let mut last = 0;
        for &(running, drafted) in &proposed_with {
            if running > most.max(3) {
                assert_eq!(drafted, last, "{proposed_with:?}");
            }
            last = drafted;
        }
    }
    // A draft's vocabulary must be the model's; without a draft, `draft_max` is refused.
    let e = Engine::new(
        MockRunner::new(vocab, 8, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let err = e
        .with_draft(Box::new(MockRunner::new(vocab + 1, 8, 16)))
        .err()
        .expect("a draft of another vocabulary is refused");
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let mut e = Engine::new(
        MockRunner::new(vocab, 8, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let out = Arc::new(Mutex::new(Collected::default()));
    match e.submit(Request::new(ps[0].clone(), with(0, 4)), sink(out, None)) {
        Err(SubmitError::Param(p)) => assert_eq!(p.param, "draft_max"),
        other => panic!("{other:?}"),
    }
    let both = SamplingParams {
        draft_max: 4,
        prompt_lookup: 4,
        ..SamplingParams::greedy(8)
    };
    assert_eq!(both.validate().unwrap_err().param, "draft_max");
}

#[test]
fn embeddings_pool_every_position_and_leave_others_alone() {
    let tok = tokenizer();
    let ps = prompts();
    let solo: Vec<Collected> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| run_alone(&tok, p, params(i)))
        .collect();
    let texts: Vec<(Vec<u32>, Pooling)> = vec![
        ((300..360).collect(), Pooling::Mean),
        ((200..245).collect(), Pooling::Last),
        (vec![7], Pooling::Mean),
        ((700..717).collect(), Pooling::Mean),
    ];
    // Chunked by a small batch or few rows; preempted by a small pool.
    for (n_blocks, max_batch_tokens, rows) in [(64, 256, 64), (64, 7, 3), (14, 32, 5)] {
        let mut runner = MockRunner::new(tok.vocab_size(), n_blocks, 16);
        runner.logit_rows = rows;
        let mut e = Engine::new(
            runner,
            tok.clone(),
            EngineConfig {
                max_batch_tokens,
                ..Default::default()
            },
        );
        let outs: Vec<_> = (0..ps.len())
            .map(|_| Arc::new(Mutex::new(Collected::default())))
            .collect();
        let got: Vec<EmbedSlot> = texts.iter().map(|_| Default::default()).collect();
        for (i, p) in ps.iter().enumerate() {
            e.submit(
                Request::new(p.clone(), params(i)),
                sink(outs[i].clone(), None),
            )
            .unwrap();
            if let Some((t, pooling)) = texts.get(i) {
                let slot = got[i].clone();
                let req = EmbedRequest {
                    tokens: t.clone(),
                    pooling: *pooling,
                    normalize: false,
                };
                e.submit_embed(req, Box::new(move |r| *slot.lock().unwrap() = Some(r)))
                    .unwrap();
            }
        }
        e.run_to_completion().unwrap();
        let label = format!("{n_blocks} blocks, batch {max_batch_tokens}, {rows} rows");
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(o.lock().unwrap().ids, solo[i].ids, "request {i}, {label}");
        }
        for (i, (t, pooling)) in texts.iter().enumerate() {
            let v = got[i].lock().unwrap().take().expect("a result").unwrap();
            assert_eq!(v, expected_embedding(t, *pooling), "text {i}, {label}");
        }
        assert!(e.runner().most_rows <= rows);
        assert_eq!(e.stats().blocks_used, 0, "every block returned ({label})");
    }
    // Normalized: unit length, same direction.
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 16, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let slot: EmbedSlot = Default::default();
    let s2 = slot.clone();
    let t: Vec<u32> = (40..60).collect();
    let req = EmbedRequest {
        tokens: t.clone(),
        pooling: Pooling::Mean,
        normalize: true,
    };
    e.submit_embed(req, Box::new(move |r| *s2.lock().unwrap() = Some(r)))
        .unwrap();
    e.run_to_completion().unwrap();
    let v = slot.lock().unwrap().take().unwrap().unwrap();
    let raw = expected_embedding(&t, Pooling::Mean);
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (a, b) in v.iter().zip(&raw) {
        assert!((a - b / norm).abs() < 1e-6);
    }
    // Refused: nothing to embed, or a token outside the vocabulary.
    for tokens in [vec![], vec![u32::MAX]] {
        let req = EmbedRequest {
            tokens,
            pooling: Pooling::Mean,
            normalize: true,
        };
        assert!(e.submit_embed(req, Box::new(|_| {})).is_err());
    }
}

type ScoreSlot = Arc<Mutex<Option<Result<PromptScore, String>>>>;

fn score_sink(slot: ScoreSlot) -> kiln_engine::ScoreSink {
    Box::new(move |r| *slot.lock().unwrap() = Some(r))
}

#[test]
fn scored_texts_match_direct_logits_and_leave_others_alone() {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let ps = prompts();
    let solo: Vec<Collected> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| run_alone(&tok, p, params(i)))
        .collect();
    // Texts to score: sharing the generating prompts' prefix or not, scored from the start,
    // from inside the shared prefix, or only their tail.
    let shared: Vec<u32> = (200..240).collect();
    let texts: Vec<(Vec<u32>, usize)> = vec![
        ((300..360).collect(), 0),
        ([shared.clone(), (500..530).collect()].concat(), 40),
        ([shared.clone(), (600..610).collect()].concat(), 17),
        ((700..703).collect(), 2),
    ];
    // Small batches and few logit rows chunk the scored parts; a small pool preempts.
    for (n_blocks, max_batch_tokens, rows) in [(64, 256, 64), (64, 7, 3), (14, 32, 5)] {
        let mut runner = MockRunner::new(vocab, n_blocks, 16);
        runner.logit_rows = rows;
        let mut e = Engine::new(
            runner,
            tok.clone(),
            EngineConfig {
                max_batch_tokens,
                ..Default::default()
            },
        );
        let outs: Vec<_> = (0..ps.len())
            .map(|_| Arc::new(Mutex::new(Collected::default())))
            .collect();
        let scores: Vec<ScoreSlot> = texts.iter().map(|_| Default::default()).collect();
        for (i, p) in ps.iter().enumerate() {
            e.submit(
                Request {
                    prompt: p.clone(),
                    params: params(i),
                    constraint: None,
                },
                sink(outs[i].clone(), None),
            )
            .unwrap();
            if let Some((t, from)) = texts.get(i) {
                let req = ScoreRequest {
                    tokens: t.clone(),
                    from: *from,
                };
                e.submit_score(req, score_sink(scores[i].clone())).unwrap();
            }
        }
        e.run_to_completion().unwrap();
        let label = format!("{n_blocks} blocks, batch {max_batch_tokens}, {rows} rows");
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(
                outs[i].lock().unwrap().ids,
                solo[i].ids,
                "request {i}, {label}"
            );
            assert!(o.lock().unwrap().failed.is_none());
        }
        for (i, (t, from)) in texts.iter().enumerate() {
            let got = scores[i].lock().unwrap().take().expect("a result").unwrap();
            assert_eq!(got.from, (*from).max(1));
            let want = expected_logprobs(vocab, t, *from);
            assert_eq!(got.logprobs.len(), t.len() - got.from, "text {i}, {label}");
            for (a, b) in got.logprobs.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "text {i}, {label}: {a} vs {b}");
            }
        }
        assert!(e.runner().most_rows <= rows && e.runner().most_rows > 0);
        let st = e.stats();
        assert_eq!(st.blocks_used, 0, "every block returned ({label})");
        if n_blocks == 14 {
            assert!(
                st.preemptions > 0,
                "the small pool should have forced preemption"
            );
        }
        // The shared prefix is cached now: a scored text reuses it up to its scored part.
        let t = [shared.clone(), (800..820).collect()].concat();
        let slot: ScoreSlot = Default::default();
        e.submit_score(
            ScoreRequest {
                tokens: t.clone(),
                from: 36,
            },
            score_sink(slot.clone()),
        )
        .unwrap();
        e.run_to_completion().unwrap();
        let got = slot.lock().unwrap().take().unwrap().unwrap();
        assert_eq!(
            got.cached_tokens, 32,
            "two whole blocks before position 35 ({label})"
        );
        assert_eq!(got.logprobs, expected_logprobs(vocab, &t, 36));
    }
}

#[test]
fn scoring_requests_are_checked() {
    let tok = tokenizer();
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 8, 16),
        tok.clone(),
        EngineConfig::default(),
    );
    let slot: ScoreSlot = Default::default();
    let req = |tokens: Vec<u32>, from| ScoreRequest { tokens, from };
    let err = e
        .submit_score(req(vec![5, 6, 7], 3), score_sink(slot.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("no token to score"), "{err}");
    let err = e
        .submit_score(req(vec![5], 0), score_sink(slot.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("no token to score"), "{err}");
    let err = e
        .submit_score(req(vec![], 0), score_sink(slot.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = e
        .submit_score(req(vec![5, 999_999], 1), score_sink(slot.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("999999"), "{err}");
    let err = e
        .submit_score(req(vec![5; 200], 1), score_sink(slot.clone()))
        .unwrap_err();
    assert!(matches!(err, SubmitError::TooLarge { .. }), "{err}");
    // A runner without per-token logits refuses scoring with a reason, not a panic.
    let mut runner = MockRunner::new(tok.vocab_size(), 8, 16);
    runner.logit_rows = 0;
    let mut e = Engine::new(runner, tok.clone(), EngineConfig::default());
    let err = e
        .submit_score(req(vec![5, 6, 7], 1), score_sink(slot.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("cannot score"), "{err}");
    assert!(
        slot.lock().unwrap().is_none(),
        "refused requests get no result"
    );
}

#[test]
fn handle_scores_and_shutdown_fails_pending_scores() {
    let tok = tokenizer();
    let vocab = tok.vocab_size();
    let h = kiln_engine::EngineHandle::spawn(Engine::new(
        MockRunner::new(vocab, 64, 16),
        tok.clone(),
        EngineConfig::default(),
    ));
    let t: Vec<u32> = (300..340).collect();
    let got = h
        .score(ScoreRequest {
            tokens: t.clone(),
            from: 10,
        })
        .unwrap();
    assert_eq!(got.logprobs, expected_logprobs(vocab, &t, 10));
    assert!(got.mean_nll() > 0.0);
    h.shutdown();
    let err = h.score(ScoreRequest { tokens: t, from: 1 }).unwrap_err();
    assert!(err.to_string().contains("shut down"), "{err}");
}

#[test]
fn a_cancelled_queued_request_is_never_prefilled() {
    let tok = tokenizer();
    let mut e = Engine::new(
        MockRunner::new(tok.vocab_size(), 64, 16),
        tok.clone(),
        EngineConfig {
            max_running: 1,
            ..EngineConfig::default()
        },
    );
    let (a, b, c) = (
        Arc::new(Mutex::new(Collected::default())),
        Arc::new(Mutex::new(Collected::default())),
        Arc::new(Mutex::new(Collected::default())),
    );
    let params = SamplingParams::greedy(4);
    let submit = |e: &mut Engine<MockRunner>, p: Vec<u32>, out: &Arc<Mutex<Collected>>| {
        e.submit(
            Request {
                prompt: p,
                params: params.clone(),
                constraint: None,
            },
            sink(out.clone(), None),
        )
        .unwrap()
    };
    submit(&mut e, (300..320).collect(), &a);
    let queued = submit(&mut e, (400..440).collect(), &b);
    submit(&mut e, (500..510).collect(), &c);
    e.step().unwrap();
    assert_eq!(e.stats().waiting, 2);
    e.cancel_waiting(queued);
    assert_eq!(e.stats().waiting, 1);
    e.run_to_completion().unwrap();
    // The cancelled one never ran: no token, no end; the others finished.
    let b = b.lock().unwrap().clone();
    assert!(b.ids.is_empty() && b.done.is_none(), "{:?}", b.ids);
    assert_eq!(a.lock().unwrap().done, Some(FinishReason::Length));
    assert_eq!(c.lock().unwrap().done, Some(FinishReason::Length));
    // An id that is no longer queued is ignored.
    e.cancel_waiting(queued);
}

/// A runner that overlaps (the engine streams a step's tokens while the next one runs, as
/// on a GPU) gives every request the same tokens, text and end as one that does not: stop
/// strings, token limits, end-of-text, listeners that leave, preemption and chunked prefill.
#[test]
fn overlapped_steps_stream_the_same_events() {
    let tok = tokenizer();
    let ps = prompts();
    // The stop strings: pieces of the greedy answers, so that some requests stop early.
    let stops: Vec<String> = ps
        .iter()
        .map(|p| {
            let full = run_alone(&tok, p, SamplingParams::greedy(24));
            let chars: Vec<char> = full.text.chars().collect();
            chars[chars.len() / 3..chars.len() / 3 + 2].iter().collect()
        })
        .collect();
    let case = |i: usize| -> (SamplingParams, Option<usize>) {
        let mut p = params(i);
        match i % 4 {
            0 => p.stop = vec![stops[i].clone()],
            1 => p.max_tokens = 1 + i,
            2 => return (p, Some(2 + i)), // the listener leaves after a few tokens
            _ => p.stop = vec!["\u{1}never".into(), stops[i].clone()],
        }
        (p, None)
    };
    for (n_blocks, max_batch_tokens) in [(64, 256), (64, 7), (12, 32)] {
        let mut results = Vec::new();
        for overlap in [false, true] {
            let runner = if overlap {
                MockRunner::overlapping(tok.vocab_size(), n_blocks, 16)
            } else {
                MockRunner::new(tok.vocab_size(), n_blocks, 16)
            };
            let cfg = EngineConfig {
                max_batch_tokens,
                ..Default::default()
            };
            let mut e = Engine::new(runner, tok.clone(), cfg);
            let outs: Vec<_> = (0..ps.len())
                .map(|_| Arc::new(Mutex::new(Collected::default())))
                .collect();
            for (i, p) in ps.iter().enumerate() {
                let (params, stop_after) = case(i);
                let req = Request {
                    prompt: p.clone(),
                    params,
                    constraint: None,
                };
                e.submit(req, sink(outs[i].clone(), stop_after)).unwrap();
            }
            e.run_to_completion().unwrap();
            assert!(!e.has_work());
            assert_eq!(e.stats().blocks_used, 0, "every block returned");
            let got: Vec<Collected> = outs.iter().map(|o| o.lock().unwrap().clone()).collect();
            results.push(got);
        }
        let stopped = results[0]
            .iter()
            .filter(|c| c.done == Some(FinishReason::Stop))
            .count();
        assert!(stopped >= 2, "some requests end at their stop string");
        for (i, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
            assert_eq!(
                a, b,
                "request {i}, {n_blocks} blocks, batch {max_batch_tokens}"
            );
        }
    }
}

/// A model of arbitrary logits, constrained, writes only what its grammar allows: every
/// constrained answer is JSON of its schema (or matches its regular expression) and ends
/// by itself, through preemption and beside free requests, whose tokens the constrained
/// rows in their batch leave unchanged.
#[test]
fn constrained_answers_follow_their_grammar_whatever_the_logits() {
    use kiln_engine::{Grammar, Grammars};
    use serde_json::{json, Value};
    let tok = tokenizer();
    let grammars = Grammars::new(tok.clone(), tok.vocab_size()).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
            "ok": {"type": "boolean"}
        },
        "required": ["name", "age", "tags", "ok"],
        "additionalProperties": false
    });
    let free_prompt: Vec<u32> = (300..340).collect();
    let free = run_alone(&tok, &free_prompt, params(1));
    // Plain steps, the same with the masks shared out over the runner's own threads (a CPU
    // runner's pool), steps whose masks are computed while the pass runs (a device's), the
    // same with the masks in the runner's host words (taken once, for the most rows the
    // engine runs), a small pool that preempts, and passes that end at once (so that the
    // sequences whose masks are late sit steps out), also with host words and preemption.
    let mut plain_texts: Option<Vec<String>> = None;
    let mut overlap_texts: Option<Vec<String>> = None;
    for (n_blocks, max_batch_tokens, overlap, host, threads, sit) in [
        (64, 256, false, false, 0, false),
        (64, 256, false, false, 3, false),
        (64, 256, true, false, 0, false),
        (64, 256, true, true, 0, false),
        (10, 16, true, false, 0, false),
        (64, 256, true, false, 0, true),
        (64, 256, true, true, 0, true),
        (10, 16, true, false, 0, true),
    ] {
        let mut runner = if overlap {
            MockRunner::overlapping(tok.vocab_size(), n_blocks, 16)
        } else {
            MockRunner::new(tok.vocab_size(), n_blocks, 16)
        };
        runner.pass_done = sit;
        runner.host_threads = threads;
        let host_runs = runner.host_runs.clone();
        let host_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        if host {
            runner.host_words = Some(host_calls.clone());
        }
        let mut e = Engine::new(
            runner,
            tok.clone(),
            EngineConfig {
                max_batch_tokens,
                // Passes that end at once, masks that are not waited for: every step whose
                // masks are still being computed once the pass is launched leaves them.
                late_mask_wait: sit.then_some(0.0),
                ..Default::default()
            },
        );
        let mut outs = Vec::new();
        for i in 0..6u64 {
            let g = if i % 3 == 2 {
                Grammar::Regex(r"(yes|no), [0-9]{1,3}".into())
            } else {
                Grammar::JsonSchema(schema.clone())
            };
            let out = Arc::new(Mutex::new(Collected::default()));
            let req = Request {
                prompt: (400 + i as u32..430).collect(),
                params: SamplingParams {
                    temperature: 1.0,
                    top_k: 0,
                    seed: Some(i),
                    max_tokens: 400,
                    ..Default::default()
                },
                constraint: Some(Box::new(grammars.compile(&g).unwrap())),
            };
            e.submit(req, sink(out.clone(), None)).unwrap();
            outs.push((g, out));
        }
        let free_out = Arc::new(Mutex::new(Collected::default()));
        e.submit(
            Request::new(free_prompt.clone(), params(1)),
            sink(free_out.clone(), None),
        )
        .unwrap();
        e.run_to_completion().unwrap();
        assert_eq!(*free_out.lock().unwrap(), free, "the free request changed");
        let calls = host_calls.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            calls,
            usize::from(host),
            "host words asked for {calls} times"
        );
        let runs = host_runs.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            runs > 0,
            threads > 0,
            "{runs} steps' masks on the runner's threads"
        );
        let texts: Vec<String> = outs
            .iter()
            .map(|(_, o)| o.lock().unwrap().text.clone())
            .collect();
        let sat_out = e.stats().mask_sit_outs;
        assert_eq!(sat_out > 0, sit, "{sat_out} steps sat out");
        match &plain_texts {
            // The same seeds, the same masks, on whatever threads: the same answers.
            Some(t) if !overlap => assert_eq!(&texts, t, "masks on {threads} threads"),
            Some(_) => {}
            None => plain_texts = Some(texts.clone()),
        }
        if overlap && n_blocks == 64 {
            // A sequence that sat a step out chose its token at the next step, with the same
            // mask and random numbers: the same answers.
            match &overlap_texts {
                Some(t) => assert_eq!(&texts, t, "sat out: {sat_out}"),
                None => overlap_texts = Some(texts),
            }
        }
        for (g, out) in outs {
            let o = out.lock().unwrap();
            assert_eq!(o.failed, None);
            assert_eq!(o.done, Some(FinishReason::Stop), "{:?}", o.text);
            match g {
                Grammar::JsonSchema(_) => {
                    let v: Value = serde_json::from_str(&o.text)
                        .unwrap_or_else(|e| panic!("{e}: {:?}", o.text));
                    let m = v.as_object().unwrap();
                    assert_eq!(m.len(), 4, "{}", o.text);
                    assert!(m["name"].as_str().unwrap().chars().count() <= 12);
                    assert!((0..=120).contains(&m["age"].as_i64().unwrap()));
                    let tags = m["tags"].as_array().unwrap();
                    assert!(tags.len() <= 3);
                    assert!(tags
                        .iter()
                        .all(|t| ["red", "green", "blue"].contains(&t.as_str().unwrap())));
                    assert!(m["ok"].is_boolean());
                }
                _ => {
                    let (word, num) = o.text.split_once(", ").expect(&o.text);
                    assert!(word == "yes" || word == "no", "{}", o.text);
                    assert!((1..=3).contains(&num.len()), "{}", o.text);
                    assert!(num.bytes().all(|b| b.is_ascii_digit()), "{}", o.text);
                }
            }
        }
    }
}

/// Grammars that cannot be used are refused when compiled, with what is wrong.
#[test]
fn bad_grammars_are_refused_with_the_reason() {
    use kiln_engine::{Grammar, Grammars};
    use serde_json::json;
    let tok = tokenizer();
    let grammars = Grammars::new(tok.clone(), tok.vocab_size()).unwrap();
    for (g, says) in [
        (
            Grammar::JsonSchema(json!({"type": "frobnicate"})),
            "frobnicate",
        ),
        (Grammar::JsonSchema(json!(17)), "object or a boolean"),
        (
            Grammar::JsonSchema(json!({"$ref": "#/$defs/missing"})),
            "missing",
        ),
        (Grammar::Regex("(unclosed".into()), ""),
        (
            Grammar::Lark("start: undefined_rule".into()),
            "undefined_rule",
        ),
    ] {
        let e = grammars.compile(&g).expect_err(&format!("{g:?}"));
        assert!(e.0.contains(says), "{g:?}: {e}");
        assert!(e.0.len() < 600, "{e}");
    }
}
