//! The engine loop: admit requests, build one batch per step from running decodes and
//! prefill chunks, run it, sample, stream, retire.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kiln_model::sample::{Adjust, RowSampling, Sampled, Scratch};
use kiln_model::{HostWords, ModelError};
use kiln_tokenizer::{StreamDecoder, Tokenizer};
use serde::Serialize;

use crate::blocks::{BlockManager, Registered};
use crate::constraint::Constraint;
use crate::error::SubmitError;
use crate::sampling::{ParamError, RequestSampler, SamplingParams, TokenLogprob};
use crate::score::{
    token_logprob, EmbedRequest, EmbedSink, Pooled, PromptScore, ScoreRequest, ScoreSink,
};

/// Why a request stopped generating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The context window (or the KV memory budget) is full.
    ContextFull,
    /// The caller stopped it.
    Cancelled,
}

/// One sequence's part of a batched step: the model's own batch input, so a runner hands
/// the engine's batch to the model without copying it.
pub type Slice<'a> = kiln_model::SeqInput<'a>;

/// What the engine needs of a model: one batched step over a paged KV cache.
pub trait Runner: Send {
    /// Vocabulary size (width of a logits row).
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model takes.
    fn context_length(&self) -> usize;
    /// Positions per KV block.
    fn block_size(&self) -> usize;
    /// Blocks in the KV pool.
    fn n_blocks(&self) -> usize;
    /// Runs every slice and chooses one token for each slice that wants logits, in order:
    /// `rows` holds one sampling description per such slice (with `adjust` and `masks`, see
    /// [`kiln_model::sample`]); the tokens (and log-probabilities asked for) go to `out`.
    fn step(
        &mut self,
        batch: &[Slice<'_>],
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError>;
    /// Whether [`Runner::start_pass`] returns before the pass is done (a device that works
    /// apart from the host): the engine then computes the step's token masks and streams
    /// the previous step's tokens while the step runs, and calls `start_pass`,
    /// `start_sampling` and `finish` instead of `step`. Default: `false`.
    fn overlaps(&self) -> bool {
        false
    }
    /// On a runner that [`Runner::overlaps`], between [`Runner::start_pass`] and
    /// [`Runner::start_sampling`]: whether the pass has ended, asked without waiting. Once
    /// it has, a sequence whose token mask is still being computed may sit the step out
    /// (its token is chosen at the next step, with the same mask) rather than hold up the
    /// others. Default: `false` (every mask is waited for).
    fn pass_done(&self) -> bool {
        false
    }
    /// Runs `f(part, parts)` for every part on the threads that run the model's operations
    /// on the host ([`Backend::host_run`](kiln_model::backend::Backend::host_run)); by
    /// default one part, here.
    fn host_run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        f(0, 1);
    }
    /// [`Runner::step`]'s first part, for a runner that [`Runner::overlaps`]: starts the
    /// model's pass over the batch.
    fn start_pass(&mut self, batch: &[Slice<'_>]) -> Result<(), ModelError> {
        let _ = batch;
        Err(ModelError::Input(
            "this runner does not split its steps".into(),
        ))
    }
    /// The second part: starts choosing the tokens of the pass [`Runner::start_pass`]
    /// started (one row per slice that wants logits, as in [`Runner::step`]).
    fn start_sampling(
        &mut self,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> Result<(), ModelError> {
        let _ = (rows, adjust, masks);
        Err(ModelError::Input(
            "this runner does not split its steps".into(),
        ))
    }
    /// [`Runner::step`]'s last part: the tokens of the step [`Runner::start_sampling`]
    /// started.
    fn finish(&mut self, out: &mut Vec<Sampled>) -> Result<(), ModelError> {
        let _ = out;
        Err(ModelError::Input(
            "this runner does not split its steps".into(),
        ))
    }
    /// Host memory for `n` words of token masks that [`Runner::start_sampling`] uploads
    /// without a copy ([`kiln_model::Backend::host_words`]); the engine leaves the words
    /// unchanged until [`Runner::finish`]. Default: `None` (masks in ordinary memory).
    fn host_words(&self, n: usize) -> Option<Box<dyn HostWords>> {
        let _ = n;
        None
    }
    /// Runs every slice teacher-forced: appends one logits row per token of every slice, in
    /// order. The engine sends at most [`Runner::max_logit_rows`] tokens; only scoring
    /// requests use it, so a runner that cannot score keeps this default.
    fn step_all(&mut self, batch: &[Slice<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        let _ = (batch, logits);
        Err(ModelError::Input(
            "this runner returns no per-token logits, so it cannot score texts".into(),
        ))
    }
    /// Most tokens (rows of logits) one [`Runner::step_all`] takes; 0 when the runner cannot
    /// score texts.
    fn max_logit_rows(&self) -> usize {
        0
    }
    /// Runs every slice teacher-forced and appends, for every token, the most likely next
    /// token (for verifying proposed tokens). The engine sends at most
    /// [`Runner::max_logit_rows`] tokens. Default: [`Runner::step_all`] and the argmax of
    /// each row on the host.
    fn step_greedy_all(
        &mut self,
        batch: &[Slice<'_>],
        out: &mut Vec<u32>,
    ) -> Result<(), ModelError> {
        let mut logits = Vec::new();
        self.step_all(batch, &mut logits)?;
        let v = self.vocab_size().max(1);
        out.extend(logits.chunks_exact(v).map(kiln_model::sample::argmax));
        Ok(())
    }
    /// Runs every slice and appends every token's final hidden state (after the output
    /// norm; [`Runner::hidden_size`] values each), for embeddings. The engine sends at most
    /// [`Runner::max_logit_rows`] tokens. A runner that cannot keeps this default.
    fn step_hidden(&mut self, batch: &[Slice<'_>], out: &mut Vec<f32>) -> Result<(), ModelError> {
        let _ = (batch, out);
        Err(ModelError::Input(
            "this runner returns no hidden states, so it cannot embed texts".into(),
        ))
    }
    /// Values of one hidden state; 0 when the runner cannot embed texts.
    fn hidden_size(&self) -> usize {
        0
    }
    /// Copies the contents of block `src` into block `dst`.
    fn copy_block(&mut self, src: u32, dst: u32);
}

/// A runner chosen at run time (`Engine<Box<dyn Runner>>`, as the draft model is held).
impl<R: Runner + ?Sized> Runner for Box<R> {
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn context_length(&self) -> usize {
        (**self).context_length()
    }
    fn block_size(&self) -> usize {
        (**self).block_size()
    }
    fn n_blocks(&self) -> usize {
        (**self).n_blocks()
    }
    fn step(
        &mut self,
        batch: &[Slice<'_>],
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        (**self).step(batch, rows, adjust, masks, out)
    }
    fn overlaps(&self) -> bool {
        (**self).overlaps()
    }
    fn pass_done(&self) -> bool {
        (**self).pass_done()
    }
    fn host_run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        (**self).host_run(f)
    }
    fn start_pass(&mut self, batch: &[Slice<'_>]) -> Result<(), ModelError> {
        (**self).start_pass(batch)
    }
    fn start_sampling(
        &mut self,
        rows: &[RowSampling],
        adjust: &[Adjust],
        masks: &[u32],
    ) -> Result<(), ModelError> {
        (**self).start_sampling(rows, adjust, masks)
    }
    fn finish(&mut self, out: &mut Vec<Sampled>) -> Result<(), ModelError> {
        (**self).finish(out)
    }
    fn host_words(&self, n: usize) -> Option<Box<dyn HostWords>> {
        (**self).host_words(n)
    }
    fn step_all(&mut self, batch: &[Slice<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        (**self).step_all(batch, logits)
    }
    fn max_logit_rows(&self) -> usize {
        (**self).max_logit_rows()
    }
    fn step_greedy_all(
        &mut self,
        batch: &[Slice<'_>],
        out: &mut Vec<u32>,
    ) -> Result<(), ModelError> {
        (**self).step_greedy_all(batch, out)
    }
    fn step_hidden(&mut self, batch: &[Slice<'_>], out: &mut Vec<f32>) -> Result<(), ModelError> {
        (**self).step_hidden(batch, out)
    }
    fn hidden_size(&self) -> usize {
        (**self).hidden_size()
    }
    fn copy_block(&mut self, src: u32, dst: u32) {
        (**self).copy_block(src, dst)
    }
}

/// Constrained sequences a step gives each host thread computing masks: fewer are computed
/// on the engine's thread alone.
const MASKS_PER_THREAD: usize = 2;

/// Limits of the scheduler.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most tokens (decode and prefill together) in one step.
    pub max_batch_tokens: usize,
    /// Most sequences running at once.
    pub max_running: usize,
    /// Most requests waiting; more are refused.
    pub max_queue: usize,
    /// Speculative decoding (prompt lookup, a draft model) only while at most this many
    /// sequences run: with more, a step is no longer bound by reading the weights once, and
    /// proposals (and the draft's passes) would slow everyone down (0: never).
    pub max_speculative_batch: usize,
    /// For greedy requests, the draft model stops proposing at a token it gives less than
    /// this probability (the token is not proposed): a step then verifies the proposals
    /// likely to be taken, not a fixed number (0: never stops early). A sampled request's
    /// draws come with no such measure of confidence and always propose their `draft_max`.
    pub draft_p_min: f32,
    /// With a draft model and one sequence running, propose the number of tokens (at least
    /// one, at most the request's `draft_max`) that the measured costs say gives the most
    /// tokens a second ([`SpecCosts`]); off, the pace alone (as prompt lookup's) decides.
    pub draft_by_cost: bool,
    /// Beside a device ([`Runner::overlaps`]): how long, in seconds, the engine waits after
    /// a pass has ended for token masks still being computed before their sequences sit the
    /// step out (their tokens come at their next step). `None`: as long as the steps they
    /// would cost take (the last pass's time over its rows, for each such mask).
    pub late_mask_wait: Option<f64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_tokens: 256,
            max_running: 64,
            max_queue: 1024,
            max_speculative_batch: 8,
            draft_p_min: DRAFT_P_MIN,
            draft_by_cost: true,
            late_mask_wait: None,
        }
    }
}

/// [`EngineConfig::draft_p_min`]'s default.
pub const DRAFT_P_MIN: f32 = 0.0;

/// A request: prompt ids and how to sample.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (template already applied).
    pub prompt: Vec<u32>,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// What the output must be (compiled by [`crate::Grammars`] for this model); `None`:
    /// free text.
    pub constraint: Option<Box<Constraint>>,
}

impl Request {
    /// A request for free text.
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> Self {
        Request {
            prompt,
            params,
            constraint: None,
        }
    }
}

/// Token counts and latencies of a finished request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    /// Seconds from submission to the first generated token.
    pub time_to_first_token_s: f64,
    /// Seconds from submission to the end.
    pub total_s: f64,
    /// Tokens prompt lookup or the draft model proposed for it.
    pub draft_tokens: usize,
    /// Of those, tokens taken.
    pub accepted_tokens: usize,
    /// What proposed them: `prompt_lookup` or `draft` (`None`: no speculation asked).
    pub proposer: Option<&'static str>,
}

/// What a request's stream receives.
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token and the text it completes (may be empty while a character or a
    /// possible stop string is incomplete).
    Token {
        /// Token id.
        id: u32,
        /// New text.
        text: String,
        /// Log-probabilities, when asked for.
        logprob: Option<TokenLogprob>,
    },
    /// The request ended.
    Done {
        /// Why.
        reason: FinishReason,
        /// Counts and latencies.
        usage: Usage,
    },
    /// The request failed; nothing more follows.
    Failed(String),
}

/// Where a request's events go; returns `false` once nobody listens (the request is then
/// cancelled at the next step).
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// What a request is checked against before it is queued: fixed once the engine is built, so
/// that a handle can check requests on the caller's thread without waiting for the engine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest sequence the model takes.
    pub context: usize,
    /// Blocks in the KV pool.
    pub total_blocks: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Most requests waiting.
    pub max_queue: usize,
    /// Whether the engine has a draft model (for requests' `draft_max`).
    pub has_draft: bool,
}

impl Limits {
    /// Checks that `tokens` can run: not empty, inside the context and the vocabulary, within
    /// the KV budget with `extra` more positions, and that the queue (`waiting` long) has room.
    pub fn check_tokens(
        &self,
        tokens: &[u32],
        extra: usize,
        waiting: usize,
    ) -> Result<(), SubmitError> {
        let (ctx, n) = (self.context, tokens.len());
        if n == 0 {
            return Err(SubmitError::Prompt("the prompt is empty".into()));
        }
        if n >= ctx {
            return Err(SubmitError::Prompt(format!(
                "the prompt has {n} tokens; the model's context is {ctx}"
            )));
        }
        let vocab = self.vocab;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(SubmitError::Prompt(format!(
                "token id {t} is outside the vocabulary of {vocab}"
            )));
        }
        let needed = (n + extra).div_ceil(self.block_size.max(1));
        if needed > self.total_blocks {
            return Err(SubmitError::TooLarge {
                needed,
                total: self.total_blocks,
            });
        }
        if waiting >= self.max_queue {
            return Err(SubmitError::QueueFull(waiting));
        }
        Ok(())
    }

    /// Checks a generation request: its parameters, its logit bias, its prompt.
    pub fn check_request(&self, req: &Request, waiting: usize) -> Result<(), SubmitError> {
        req.params.validate()?;
        if req.params.draft_max > 0 && !self.has_draft {
            return Err(SubmitError::Param(ParamError {
                param: "draft_max",
                what: "this engine has no draft model (start it with --draft MODEL)".into(),
            }));
        }
        if let Some(&(t, _)) = req
            .params
            .logit_bias
            .iter()
            .find(|b| b.0 as usize >= self.vocab)
        {
            return Err(SubmitError::Param(ParamError {
                param: "logit_bias",
                what: format!("token id {t} is outside the vocabulary of {}", self.vocab),
            }));
        }
        self.check_tokens(&req.prompt, 1, waiting)
    }
}

/// What a scoring request has gathered so far.
struct Scoring {
    /// Position of the first scored token (at least 1).
    from: usize,
    /// Log-probabilities of the tokens from `from` on, as far as computed.
    logprobs: Vec<f32>,
    /// Where the result goes (taken when it is sent).
    done: Option<ScoreSink>,
    /// Set for an embedding: its hidden states are pooled instead of logits scored.
    embed: Option<Pooled>,
}

struct Seq {
    /// The id `submit` returned.
    id: u64,
    tokens: Vec<u32>,
    prompt_len: usize,
    computed: usize,
    table: Vec<u32>,
    /// What the prefix cache has registered of `table`.
    registered: Registered,
    sampler: RequestSampler,
    sink: Sink,
    decoder: StreamDecoder,
    held: String,
    max_len: usize,
    submitted: Instant,
    first_token: Option<f64>,
    cached: usize,
    /// Whether the prefix cache's counters have seen this request (preemption admits again).
    queried: bool,
    /// Set for a scoring request, which generates nothing.
    score: Option<Box<Scoring>>,
    /// Tokens taken into `tokens` and not yet streamed (see [`Engine::flush`]).
    unsent: Vec<(u32, Option<TokenLogprob>)>,
    /// The grammar the output follows, if any.
    constraint: Option<Box<Constraint>>,
    /// Why the constraint failed (the sequence then ends with this error).
    error: Option<String>,
    /// The task still computing the mask of a step this sequence sat out (it holds the
    /// constraint meanwhile; see `MaskTask`).
    late_mask: Option<Arc<MaskTask>>,
    /// Whether the sequence sat its last step out (it is not left behind twice in a row).
    sat_out: bool,
    /// Why the sequence ends, when streaming found it (a stop string, or a listener gone)
    /// after its next step had started; that step's token is then dropped.
    stopped: Option<FinishReason>,
    /// Tokens prompt lookup proposed for this step, appended to `tokens` while the step's
    /// pass runs and taken off before its result is read.
    drafts: Vec<u32>,
    /// How many tokens prompt lookup or the draft model proposes next, and how it backs
    /// off.
    lookup: Lookup,
    /// The draft model's block table for this sequence.
    draft_table: Vec<u32>,
    /// Positions of `tokens` whose keys and values the draft model's cache holds.
    draft_len: usize,
}

/// Prompt lookup's pace for one sequence: as many proposals as were lately taken (doubling
/// while all are), and after proposals none of which was taken, a pause that grows with
/// each such miss, so that an answer that does not repeat its text costs little.
#[derive(Debug, Clone, Copy, Default)]
struct Lookup {
    /// Most tokens to propose (0: not started, the request's `prompt_lookup`).
    cap: usize,
    /// Steps left to pause.
    pause: usize,
    /// Misses in a row.
    misses: usize,
    /// Tokens proposed, and taken, over the sequence's life, and the rounds that ended at a
    /// proposal not taken.
    proposed: usize,
    taken: usize,
    rejected: usize,
}

impl Lookup {
    /// After `d` proposals of which `taken` were taken, with `k` the request's most.
    fn update(&mut self, d: usize, taken: usize, k: usize) {
        self.proposed += d;
        self.taken += taken;
        self.rejected += usize::from(taken < d);
        if taken == d {
            self.cap = (self.cap * 2).min(k);
            self.misses = 0;
        } else {
            self.cap = (taken + 1).min(k);
            if taken == 0 {
                self.misses += 1;
                self.pause = (1 << self.misses.min(4)) - 1;
            } else {
                self.misses = 0;
            }
        }
    }

    /// The chance that a proposal is taken once those before it were: taken proposals over
    /// taken and rejected ones, with one of each assumed (so it starts at one half).
    fn acceptance(&self) -> f64 {
        (self.taken as f64 + 1.0) / ((self.taken + self.rejected) as f64 + 2.0)
    }
}

/// What the model's passes and the draft's cost, measured while one sequence runs, to choose
/// how many tokens the draft proposes. A round of k proposals costs k draft passes and a pass
/// of the model over k + 1 rows, and gives (1 - a^(k+1)) / (1 - a) tokens when each proposal
/// is taken with chance a once those before it were; plain decoding gives one token a pass
/// of one row. Where a pass of several rows costs several of one (on the 2-core CPU of
/// docs/PERF.md a pass of 9 rows of the default model's F16 copy costs 3.7 of one) or a draft
/// pass costs about a model pass (the same pair on a GPU: 1.03), few proposals or one give the
/// most tokens a second.
#[derive(Debug, Default)]
struct SpecCosts {
    /// Seconds of a pass of the model by rows (index), moving averages; 0: not seen.
    pass: Vec<f64>,
    /// Seconds of one draft pass, moving average; 0: not seen.
    draft: f64,
}

/// The weight of a new measurement in [`SpecCosts`]' averages.
const COST_EMA: f64 = 0.25;

impl SpecCosts {
    fn ema(old: f64, new: f64) -> f64 {
        if old > 0.0 {
            old + COST_EMA * (new - old)
        } else {
            new
        }
    }

    fn note_pass(&mut self, rows: usize, seconds: f64) {
        if rows == 0 || rows > 64 || seconds <= 0.0 {
            return;
        }
        if self.pass.len() <= rows {
            self.pass.resize(rows + 1, 0.0);
        }
        self.pass[rows] = Self::ema(self.pass[rows], seconds);
    }

    fn note_draft(&mut self, seconds: f64) {
        if seconds > 0.0 {
            self.draft = Self::ema(self.draft, seconds);
        }
    }

    /// The pass of one row, and the straight line (least squares) through the sizes timed as
    /// its mean point and slope: `None` until one row and another size were timed.
    fn line(&self) -> Option<(f64, f64, f64, f64)> {
        let one = *self.pass.get(1).filter(|&&t| t > 0.0)?;
        let seen = || {
            self.pass
                .iter()
                .enumerate()
                .filter(|&(_, &t)| t > 0.0)
                .map(|(n, &t)| (n as f64, t))
        };
        let (m, sx, sy) = seen().fold((0.0, 0.0, 0.0), |(m, a, b), (x, y)| (m + 1.0, a + x, b + y));
        if m < 2.0 {
            return None;
        }
        let (mx, my) = (sx / m, sy / m);
        let (sxy, sxx) = seen().fold((0.0, 0.0), |(a, b), (x, y)| {
            (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
        });
        let slope = if sxx > 0.0 { (sxy / sxx).max(0.0) } else { 0.0 };
        Some((one, mx, my, slope))
    }

    /// A pass of `rows` rows: as timed, or else read off `line` (never below one row's).
    fn pass_at(&self, rows: usize, (one, mx, my, slope): (f64, f64, f64, f64)) -> f64 {
        match self.pass.get(rows) {
            Some(&t) if t > 0.0 => t,
            _ => (my + slope * (rows as f64 - mx)).max(one),
        }
    }

    /// The number of proposals, 1 to `most`, that gives the most tokens a second at
    /// acceptance `a`; `None` until a pass of one row was timed (the pace decides). Pass
    /// sizes not yet seen are estimated from a line through those seen, so a neighbour of the
    /// best (one proposal more, then one fewer) is tried once before the best is kept.
    fn best(&self, a: f64, most: usize) -> Option<usize> {
        if most == 0 || self.pass.get(1).is_none_or(|&t| t <= 0.0) {
            return None;
        }
        // The first round proposes two, a cheap second size to draw the line through.
        let Some(k) = self.best_estimated(a, most) else {
            return Some(most.min(2));
        };
        let seen = |rows: usize| self.pass.get(rows).is_some_and(|&t| t > 0.0);
        Some(if k < most && !seen(k + 2) {
            k + 1
        } else if k > 1 && !seen(k) {
            k - 1
        } else {
            k
        })
    }

    fn best_estimated(&self, a: f64, most: usize) -> Option<usize> {
        if self.draft <= 0.0 || most == 0 {
            return None;
        }
        let line = self.line()?;
        let a = a.clamp(0.0, 0.999);
        let mut best: Option<(f64, usize)> = None;
        for k in 1..=most {
            let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            let rate = tokens / (k as f64 * self.draft + self.pass_at(k + 1, line));
            if best.is_none_or(|(r, _)| rate > r) {
                best = Some((rate, k));
            }
        }
        best.map(|(_, k)| k)
    }
}

impl Seq {
    /// A text that generates nothing: scored, or embedded.
    fn scored(id: u64, tokens: Vec<u32>, scoring: Scoring) -> Self {
        let n = tokens.len();
        Seq {
            id,
            sampler: RequestSampler::new(SamplingParams::greedy(1), 0, &[]),
            tokens,
            prompt_len: n,
            computed: 0,
            table: Vec::new(),
            registered: Registered::default(),
            sink: Box::new(|_| true),
            decoder: StreamDecoder::new(),
            held: String::new(),
            max_len: n,
            submitted: Instant::now(),
            first_token: None,
            queried: false,
            cached: 0,
            score: Some(Box::new(scoring)),
            unsent: Vec::new(),
            stopped: None,
            constraint: None,
            error: None,
            late_mask: None,
            sat_out: false,
            drafts: Vec::new(),
            lookup: Lookup::default(),
            draft_table: Vec::new(),
            draft_len: 0,
        }
    }

    /// Positions to compute: a scored text needs neither the KV nor the logits of its last
    /// token; a generating sequence needs every one.
    fn end(&self) -> usize {
        match &self.score {
            Some(s) if s.embed.is_none() => self.tokens.len() - 1,
            _ => self.tokens.len(),
        }
    }

    /// Whether a step running its next `n` tokens samples a token from the last one's
    /// logits (not scored, not verifying proposals, and reaching the sequence's end).
    fn wants_logits(&self, n: usize) -> bool {
        self.score.is_none() && self.drafts.is_empty() && self.computed + n == self.tokens.len()
    }

    /// Whether this is an embedding (every position's hidden state wanted).
    fn embeds(&self) -> bool {
        self.score.as_ref().is_some_and(|s| s.embed.is_some())
    }

    /// A scored text's first position whose logits are needed (the first scored token's
    /// predecessor); positions before it are plain context.
    fn logits_from(&self) -> Option<usize> {
        self.score.as_ref().map(|s| s.from - 1)
    }

    /// Whether the next chunk of this sequence goes to the teacher-forced pass.
    fn in_scored_part(&self) -> bool {
        self.logits_from().is_some_and(|f| self.computed >= f)
    }

    /// Tells whoever waits for this sequence that it failed.
    fn fail(&mut self, msg: &str) {
        if let Some(done) = self
            .score
            .as_mut()
            .and_then(|s| s.embed.as_mut())
            .and_then(|e| e.done.take())
        {
            return done(Err(msg.to_owned()));
        }
        match self.score.as_mut().and_then(|s| s.done.take()) {
            Some(done) => done(Err(msg.to_owned())),
            None => {
                (self.sink)(Event::Failed(msg.to_owned()));
            }
        }
    }

    /// Records the logits rows of a teacher-forced chunk of `n` tokens starting at
    /// `computed`: row `i` predicts the token at `computed + i + 1`. Positions recorded
    /// before a preemption are computed again and skipped.
    fn record_logprobs(&mut self, rows: &[f32], n: usize, vocab: usize) {
        let Some(sc) = self.score.as_mut() else {
            return;
        };
        for i in 0..n {
            let target = self.computed + i + 1;
            if target - sc.from == sc.logprobs.len() {
                let row = &rows[i * vocab..(i + 1) * vocab];
                sc.logprobs.push(token_logprob(row, self.tokens[target]));
            }
        }
    }
}

/// Live counters, for metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineStats {
    /// Requests waiting for admission.
    pub waiting: usize,
    /// Sequences running.
    pub running: usize,
    /// KV blocks in use.
    pub blocks_used: usize,
    /// KV blocks free.
    pub blocks_free: usize,
    /// Steps run.
    pub steps: u64,
    /// Sequences preempted for lack of KV blocks.
    pub preemptions: u64,
    /// Seconds spent in the model's passes (forward and sampling), summed over steps.
    pub model_seconds: f64,
    /// Seconds the engine's own work took in steps (scheduling, streaming), summed.
    pub host_seconds: f64,
    /// Of `host_seconds`, those spent streaming a step's tokens while the device ran the next
    /// step (a runner that [`Runner::overlaps`]); the rest kept the device waiting.
    pub stream_seconds: f64,
    /// Seconds host threads spent computing constrained sequences' token masks, summed over
    /// the threads (beside a device, while the pass runs).
    pub mask_seconds: f64,
    /// Token masks computed (one per constrained sequence per step).
    pub masks: u64,
    /// Beside a device: the longest single mask each step waited for, summed over steps (no
    /// step's masks end before it, whatever the threads).
    pub mask_longest_seconds: f64,
    /// Beside a device: sequences that sat a step out because their mask was still being
    /// computed when the pass ended (their token came at their next step).
    pub mask_sit_outs: u64,
    /// Beside a device: how long after the step's masks were handed to the pool the last
    /// of them started, summed over steps (the time masks wait for a free thread).
    pub mask_last_start_seconds: f64,
    /// Of `model_seconds`, on a runner that overlaps: seconds launching passes
    /// ([`Runner::start_pass`]), waiting after a launch for the step's masks, launching the
    /// sampling ([`Runner::start_sampling`], with the masks' upload), and waiting for the
    /// step's tokens ([`Runner::finish`]).
    pub launch_seconds: f64,
    /// See `launch_seconds`.
    pub mask_wait_seconds: f64,
    /// See `launch_seconds`.
    pub sampling_launch_seconds: f64,
    /// See `launch_seconds`.
    pub finish_seconds: f64,
    /// Of `host_seconds`: from a step's start to its pass's launch (streaming without a
    /// device, ending, admitting and scheduling sequences, the constraints taken out).
    pub prepare_seconds: f64,
    /// Of `host_seconds`: after a step's tokens came back (taking them, ending sequences).
    pub accept_seconds: f64,
    /// The engine thread's own processor time over `prepare_seconds` and `accept_seconds`
    /// (less than their sum when the thread waited for a core; Linux, else 0).
    pub host_cpu_seconds: f64,
    /// The engine thread's own processor time over `launch_seconds` (Linux, else 0).
    pub launch_cpu_seconds: f64,
    /// Tokens prompt lookup proposed.
    pub draft_tokens: u64,
    /// Of those, tokens the model's own choice confirmed (each saved a step).
    pub accepted_tokens: u64,
    /// Passes of the draft model (one per proposed position, all its sequences together).
    pub draft_passes: u64,
    /// Seconds spent in the draft model's passes, summed over steps (part of
    /// `model_seconds`).
    pub draft_seconds: f64,
    /// Positions in a KV block.
    pub block_size: usize,
    /// Prompt tokens looked up in the prefix cache (at each request's first admission).
    pub prefix_queried_tokens: u64,
    /// Of those, tokens whose KV the cache held.
    pub prefix_hit_tokens: u64,
}

impl EngineStats {
    /// Fraction of the KV cache's blocks in use, 0 to 1 (0 for a cache of no blocks).
    pub fn kv_cache_usage(&self) -> f64 {
        let total = self.blocks_used + self.blocks_free;
        if total == 0 {
            0.0
        } else {
            self.blocks_used as f64 / total as f64
        }
    }
}

/// The engine: owns the runner, the block pool and every sequence.
pub struct Engine<R: Runner> {
    runner: R,
    tok: Arc<Tokenizer>,
    cfg: EngineConfig,
    blocks: BlockManager,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Where request ids come from (shared with a handle, which numbers what it sends).
    next_id: Arc<AtomicU64>,
    rows: Vec<RowSampling>,
    adjust: Vec<Adjust>,
    /// Mask rows of this step's constrained sequences.
    masks: MaskRows,
    /// Each plan entry's mask row.
    mask_of: Vec<Option<u32>>,
    /// The plan entries whose sequences sit this step out (their masks were late).
    sitting: Vec<usize>,
    /// The end tokens (the mask of a failed constraint).
    eog: Arc<[u32]>,
    /// Nanoseconds host threads spent on masks beside passes, in all, and the part of it
    /// already in `stats`.
    mask_nanos: Arc<AtomicU64>,
    /// When the step running began, and the engine thread's processor time then.
    step_start: (Instant, f64),
    mask_nanos_seen: u64,
    /// How long the last pass seen ending took from its launch (how long a late mask is worth
    /// waiting for).
    pass_seconds: f64,
    sampled: Vec<Sampled>,
    score_logits: Vec<f32>,
    /// Hidden states of the step's embedded tokens.
    hidden: Vec<f32>,
    /// The model's choices after each token of the step's verified slices.
    verified: Vec<u32>,
    /// Logits of every token of the step's verified slices whose sequences sample (their
    /// tokens are chosen on the host, one row after another, as plain decoding would).
    verify_logits: Vec<f32>,
    scratch: Scratch,
    /// The draft model, when there is one.
    draft: Option<Drafter>,
    stats: EngineStats,
    plan: Vec<(usize, usize)>,
    pre: Vec<(usize, usize)>,
    done: Vec<(usize, FinishReason)>,
    /// Sequences ended whose last tokens and end are still to be streamed.
    retiring: Vec<(Seq, FinishReason)>,
}

impl<R: Runner> Engine<R> {
    /// An engine over `runner`.
    pub fn new(runner: R, tok: Arc<Tokenizer>, cfg: EngineConfig) -> Self {
        let blocks = BlockManager::new(runner.n_blocks(), runner.block_size());
        let eog: Arc<[u32]> = tok.eog_ids().into();
        Engine {
            runner,
            tok,
            cfg,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: Arc::new(AtomicU64::new(1)),
            rows: Vec::new(),
            adjust: Vec::new(),
            masks: MaskRows::default(),
            mask_of: Vec::new(),
            sitting: Vec::new(),
            eog,
            mask_nanos: Arc::default(),
            step_start: (Instant::now(), 0.0),
            mask_nanos_seen: 0,
            pass_seconds: 0.0,
            sampled: Vec::new(),
            score_logits: Vec::new(),
            hidden: Vec::new(),
            verified: Vec::new(),
            verify_logits: Vec::new(),
            scratch: Scratch::default(),
            draft: None,
            stats: EngineStats::default(),
            plan: Vec::new(),
            pre: Vec::new(),
            done: Vec::new(),
            retiring: Vec::new(),
        }
    }

    /// The same engine with a draft model for speculative decoding (requests ask for it
    /// with `draft_max`): `runner` runs a model with the same tokenizer, on its own KV
    /// cache. Its vocabulary must be the model's.
    pub fn with_draft(mut self, runner: Box<dyn Runner>) -> Result<Self, ModelError> {
        let (v, dv) = (self.runner.vocab_size(), runner.vocab_size());
        if v != dv {
            return Err(ModelError::Input(format!(
                "the draft model's vocabulary has {dv} tokens and the model's {v}: a draft model needs the model's tokenizer"
            )));
        }
        if runner.n_blocks() == 0 {
            return Err(ModelError::OutOfMemory(
                "the draft model's KV cache holds no block".into(),
            ));
        }
        self.draft = Some(Drafter {
            blocks: BlockManager::new(runner.n_blocks(), runner.block_size()),
            costs: SpecCosts::default(),
            runner,
            rows: Vec::new(),
            adjust: Vec::new(),
            sampled: Vec::new(),
        });
        Ok(self)
    }

    /// The draft model's runner, when there is one.
    pub fn draft_runner(&self) -> Option<&dyn Runner> {
        self.draft.as_ref().map(|d| d.runner.as_ref())
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tok
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Current counters.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            waiting: self.waiting.len(),
            running: self.running.len(),
            blocks_used: self.blocks.used(),
            blocks_free: self.blocks.free_count(),
            block_size: self.runner.block_size(),
            ..self.stats.clone()
        }
    }

    /// Whether anything is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty() || !self.retiring.is_empty()
    }

    /// What requests are checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            vocab: self.runner.vocab_size(),
            context: self.runner.context_length(),
            total_blocks: self.blocks.total(),
            block_size: self.runner.block_size(),
            max_queue: self.cfg.max_queue,
            has_draft: self.draft.is_some(),
        }
    }

    fn check_tokens(&self, tokens: &[u32], extra: usize) -> Result<(), SubmitError> {
        self.limits()
            .check_tokens(tokens, extra, self.waiting.len())
    }

    /// Queues a request; its events go to `sink`. Returns the request id.
    pub fn submit(&mut self, req: Request, sink: Sink) -> Result<u64, SubmitError> {
        let id = self.new_id();
        self.submit_as(id, req, sink)?;
        Ok(id)
    }

    /// A fresh request id; ids are shared with [`Engine::id_source`]'s holders.
    fn new_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// The counter request ids are taken from, for a handle that numbers requests before the
    /// engine thread sees them.
    pub fn id_source(&self) -> Arc<AtomicU64> {
        self.next_id.clone()
    }

    /// [`Engine::submit`] under an id taken from [`Engine::id_source`].
    pub fn submit_as(&mut self, id: u64, req: Request, sink: Sink) -> Result<(), SubmitError> {
        self.limits().check_request(&req, self.waiting.len())?;
        if let Some(c) = &req.constraint {
            if c.width() != self.runner.vocab_size() {
                return Err(SubmitError::Prompt(format!(
                    "the constraint was compiled for a vocabulary of {} tokens; this model has {}",
                    c.width(),
                    self.runner.vocab_size()
                )));
            }
        }
        let n = req.prompt.len();
        let max_len = (n + req.params.max_tokens).min(self.runner.context_length());
        let seed = req
            .params
            .seed
            .unwrap_or_else(|| id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.waiting.push_back(Seq {
            id,
            sampler: RequestSampler::new(req.params, seed, &req.prompt),
            tokens: req.prompt,
            prompt_len: n,
            computed: 0,
            table: Vec::new(),
            registered: Registered::default(),
            sink,
            decoder: StreamDecoder::new(),
            held: String::new(),
            max_len,
            submitted: Instant::now(),
            first_token: None,
            queried: false,
            cached: 0,
            score: None,
            unsent: Vec::new(),
            stopped: None,
            constraint: req.constraint,
            error: None,
            late_mask: None,
            sat_out: false,
            drafts: Vec::new(),
            lookup: Lookup::default(),
            draft_table: Vec::new(),
            draft_len: 0,
        });
        Ok(())
    }

    /// Queues a scoring request: the log-probability of each token of `req.tokens` from
    /// `req.from` on, given the tokens before it. Nothing is generated; the result goes to
    /// `done` once. It is batched with the other requests and leaves their results unchanged.
    /// Returns the request id.
    pub fn submit_score(&mut self, req: ScoreRequest, done: ScoreSink) -> Result<u64, SubmitError> {
        if self.runner.max_logit_rows() == 0 {
            return Err(SubmitError::Prompt(
                "this engine's runner returns no per-token logits, so it cannot score texts".into(),
            ));
        }
        self.check_tokens(&req.tokens, 0)?;
        let n = req.tokens.len();
        let from = req.from.max(1);
        if from >= n {
            return Err(SubmitError::Prompt(format!(
                "scoring from position {} leaves no token to score in a text of {n} tokens",
                req.from
            )));
        }
        let id = self.new_id();
        self.waiting.push_back(Seq::scored(
            id,
            req.tokens,
            Scoring {
                from,
                logprobs: Vec::with_capacity(n - from),
                done: Some(done),
                embed: None,
            },
        ));
        Ok(id)
    }

    /// Whether [`Engine::submit_embed`] would take `req`.
    pub fn check_embed(&self, req: &EmbedRequest) -> Result<(), SubmitError> {
        if self.runner.hidden_size() == 0 || self.runner.max_logit_rows() == 0 {
            return Err(SubmitError::Prompt(
                "this engine's runner returns no hidden states, so it cannot embed texts".into(),
            ));
        }
        if req.tokens.is_empty() {
            return Err(SubmitError::Prompt("there is no token to embed".into()));
        }
        self.check_tokens(&req.tokens, 0)
    }

    /// Queues an embedding: the text is prefilled in the engine's batches (a pass of its
    /// own returns its tokens' hidden states, so the other sequences keep theirs) and the
    /// pooled vector goes to `done` once. Returns the request id.
    pub fn submit_embed(&mut self, req: EmbedRequest, done: EmbedSink) -> Result<u64, SubmitError> {
        self.check_embed(&req)?;
        let id = self.new_id();
        let embed = Pooled::new(&req, done);
        // Hidden states from the first position on: `from` 1 makes every chunk part of the
        // separate pass, and nothing comes from the prefix cache.
        self.waiting.push_back(Seq::scored(
            id,
            req.tokens,
            Scoring {
                from: 1,
                logprobs: Vec::new(),
                done: None,
                embed: Some(embed),
            },
        ));
        Ok(id)
    }

    /// Drops a queued generation request whose client went away, so that it is never
    /// prefilled (a running one ends at its next token, when its sink refuses it). Ids of
    /// requests no longer queued are ignored.
    pub fn cancel_waiting(&mut self, id: u64) {
        self.waiting.retain(|s| s.id != id || s.score.is_some());
    }

    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some(seq) = self.waiting.front() else {
                break;
            };
            // Room for the whole prompt (or re-computation after preemption) plus one. A
            // scored text takes from the prefix cache only the context before its first
            // needed logits, and needs no room beyond its text.
            let (prefix, reserve) = match seq.logits_from() {
                Some(f) => (&seq.tokens[..f + 1], seq.end()),
                None => (&seq.tokens[..], seq.tokens.len() + 1),
            };
            let looked_up = prefix.len() as u64;
            match self.blocks.allocate(prefix, reserve) {
                Ok((table, cached)) => {
                    let Some(mut seq) = self.waiting.pop_front() else {
                        break;
                    };
                    seq.table = table;
                    seq.registered = Registered::default();
                    seq.computed = cached;
                    if seq.first_token.is_none() {
                        if !seq.queried {
                            seq.queried = true;
                            self.stats.prefix_queried_tokens += looked_up;
                            self.stats.prefix_hit_tokens += cached as u64;
                        }
                        seq.cached = cached;
                    }
                    self.running.push(seq);
                }
                Err(_) => break, // FIFO: the head waits until blocks free up
            }
        }
    }

    /// Frees a running sequence's blocks and puts it back at the head of the queue.
    fn preempt_last(&mut self) -> bool {
        let Some(mut seq) = self.running.pop() else {
            return false;
        };
        if seq.stopped.is_none() {
            seq.stopped = stream(&mut seq, &self.tok, None);
        }
        self.blocks.release(&seq.table);
        release_draft(self.draft.as_mut(), &mut seq);
        if let Some(r) = seq.stopped {
            // Its end was found while streaming: it ends now instead of waiting to run again.
            seq.table.clear();
            self.retiring.push((seq, r));
            return true;
        }
        seq.table.clear();
        seq.computed = 0;
        self.waiting.push_front(seq);
        self.stats.preemptions += 1;
        true
    }

    /// Ends a running sequence: frees its blocks and tells its listener why.
    fn retire(&mut self, idx: usize, reason: FinishReason) {
        let mut seq = self.running.remove(idx);
        self.blocks.release(&seq.table);
        release_draft(self.draft.as_mut(), &mut seq);
        if let Some(mut sc) = seq.score.take() {
            if let Some(mut e) = sc.embed.take() {
                if let Some(done) = e.done.take() {
                    done(if reason == FinishReason::Stop {
                        Ok(e.vector())
                    } else {
                        Err("the text does not fit in the KV memory budget".into())
                    });
                }
                return;
            }
            if let Some(done) = sc.done.take() {
                done(if reason == FinishReason::Stop {
                    Ok(PromptScore {
                        from: sc.from,
                        logprobs: sc.logprobs,
                        cached_tokens: seq.cached,
                        total_s: seq.submitted.elapsed().as_secs_f64(),
                    })
                } else {
                    Err("the text does not fit in the KV memory budget".into())
                });
            }
            return;
        }
        self.retiring.push((seq, reason));
    }

    /// Streams what the last step sampled: the text of every sequence's new tokens (where
    /// stop strings are looked for), then the end of the sequences retired. Runs while the
    /// next step is on the device. Returns whether there was anything to stream.
    fn flush(&mut self) -> bool {
        let mut any = false;
        for seq in self.running.iter_mut() {
            if !seq.unsent.is_empty() && seq.stopped.is_none() {
                any = true;
                seq.stopped = stream(seq, &self.tok, None);
            }
        }
        for (mut seq, reason) in self.retiring.drain(..) {
            any = true;
            if let Some(e) = seq.error.take() {
                (seq.sink)(Event::Failed(e));
                continue;
            }
            let reason = match (reason, seq.stopped) {
                (FinishReason::Cancelled, _) | (_, Some(FinishReason::Cancelled)) => continue,
                (_, Some(stop)) => stop,
                (r, None) => stream(&mut seq, &self.tok, Some(r)).unwrap_or(r),
            };
            if reason == FinishReason::Cancelled {
                continue;
            }
            let usage = Usage {
                prompt_tokens: seq.prompt_len,
                completion_tokens: seq.tokens.len() - seq.prompt_len,
                cached_tokens: seq.cached,
                time_to_first_token_s: seq.first_token.unwrap_or(0.0),
                total_s: seq.submitted.elapsed().as_secs_f64(),
                draft_tokens: seq.lookup.proposed,
                accepted_tokens: seq.lookup.taken,
                proposer: match seq.sampler.params() {
                    p if p.draft_max > 0 => Some("draft"),
                    p if p.prompt_lookup > 0 => Some("prompt_lookup"),
                    _ => None,
                },
            };
            (seq.sink)(Event::Done { reason, usage });
        }
        any
    }

    /// Retires the running sequences whose streaming found their end; says whether any.
    fn retire_stopped(&mut self) -> bool {
        let mut any = false;
        let mut i = self.running.len();
        while i > 0 {
            i -= 1;
            if let Some(r) = self.running[i].stopped {
                self.retire(i, r);
                any = true;
            }
        }
        any
    }

    /// Takes out the constraints of this step's sampling sequences (to be given back by
    /// [`Engine::restore_constraints`]) and sizes the mask rows, one per such sequence;
    /// `mask_of` gets each plan entry's row.
    fn take_constraints(&mut self, plan: &[(usize, usize)]) -> Vec<MaskJob> {
        self.mask_of.clear();
        let mut jobs = Vec::new();
        for &(idx, n) in plan {
            let s = &mut self.running[idx];
            let samples = s.score.is_none() && s.computed + n == s.tokens.len();
            let mut row = None;
            if samples {
                if let Some(task) = s.late_mask.take() {
                    // The step it sat out: its mask is held in the constraint.
                    if let Some(mut job) = task.take() {
                        row = Some(jobs.len() as u32);
                        job.idx = idx;
                        jobs.push(job);
                    }
                } else if let Some(c) = s.constraint.take() {
                    row = Some(jobs.len() as u32);
                    jobs.push(MaskJob {
                        idx,
                        constraint: c,
                        error: s.error.take(),
                    });
                }
            }
            self.mask_of.push(row);
        }
        let words = kiln_model::sample::mask_words(self.runner.vocab_size());
        // Every word of every row is written by `fill_masks`: the rows are resized, not
        // cleared (a megabyte at 64 rows of a 152k vocabulary).
        let reserve = self.cfg.max_running * words;
        self.masks.resize(jobs.len() * words, &self.runner, reserve);
        jobs
    }

    /// Gives the constraints (and what failed) back to their sequences.
    fn restore_constraints(&mut self, jobs: Vec<MaskJob>, seconds: f64) {
        self.stats.masks += jobs.len() as u64;
        self.stats.mask_seconds += seconds;
        for j in jobs {
            let s = &mut self.running[j.idx];
            s.constraint = Some(j.constraint);
            s.error = j.error;
        }
    }

    /// Mask time of the tasks beside passes since the last call, in seconds.
    fn mask_seconds_since(&mut self) -> f64 {
        let total = self.mask_nanos.load(Ordering::Relaxed);
        let new = total.saturating_sub(self.mask_nanos_seen);
        self.mask_nanos_seen = total;
        new as f64 * 1e-9
    }

    /// How many pieces the masks of `jobs` are computed in: with a device running the pass,
    /// shared out over the host's threads (each mask is one sequence's parser alone); a CPU
    /// runner's own threads hold the cores, so there one piece (and
    /// [`fill_masks_on_host_threads`] shares them out over those threads instead).
    fn mask_pieces(&self, jobs: usize) -> usize {
        if self.runner.overlaps() {
            rayon::current_num_threads()
                .min(jobs / MASKS_PER_THREAD)
                .max(1)
        } else {
            1
        }
    }

    /// Chooses this step's work: decodes first (one token each), then prefill chunks with
    /// what is left of the token budget. Fills `plan` with (sequence index, tokens).
    ///
    /// A scored text is prefilled like a prompt, except that a chunk never straddles the
    /// start of its scored part, and its scored chunks (teacher-forced, one row of logits
    /// per token) share the runner's [`Runner::max_logit_rows`] among them.
    fn plan_step(&self, plan: &mut Vec<(usize, usize)>, pre: &mut Vec<(usize, usize)>) {
        plan.clear();
        pre.clear();
        let mut budget = self.cfg.max_batch_tokens.max(1);
        let mut rows = self.runner.max_logit_rows();
        // Tokens of sequence `idx` that may run, out of `n`, given the rows left.
        let mut take = |idx: usize, n: usize| -> usize {
            if self.running[idx].in_scored_part() {
                let n = n.min(rows);
                rows -= n;
                n
            } else {
                n
            }
        };
        for (idx, s) in self.running.iter().enumerate() {
            let left = s.end() - s.computed;
            if left == 1 && s.score.is_none() {
                if budget > 0 {
                    plan.push((idx, 1));
                    budget -= 1;
                }
            } else {
                let left = match s.logits_from() {
                    Some(f) if s.computed < f => left.min(f - s.computed),
                    _ => left,
                };
                pre.push((idx, left));
            }
        }
        // Prefilling sequences, shortest remaining prompt first, so that a short request is
        // not held behind a long prompt; the oldest prefill always gets a share so that a
        // stream of short requests cannot starve it.
        if pre.len() > 1 && budget > 0 {
            let n = take(pre[0].0, pre[0].1.min((budget / 4).max(1)));
            if n > 0 {
                plan.push((pre[0].0, n));
                budget -= n;
                pre[0].1 -= n;
            }
        }
        pre.sort_by_key(|&(idx, left)| (left, idx));
        for &(idx, left) in pre.iter() {
            if budget == 0 || left == 0 {
                continue;
            }
            let n = take(idx, left.min(budget));
            if n == 0 {
                continue;
            }
            match plan.iter_mut().find(|(j, _)| *j == idx) {
                Some(p) => p.1 += n,
                None => plan.push((idx, n)),
            }
            budget -= n;
        }
    }

    /// Speculative decoding: each decoding sequence that asks for it gets tokens proposed,
    /// by [`lookup`] (prompt lookup) or by the draft model ([`Engine::draft_proposals`]),
    /// appended for this step, which then runs them in a teacher-forced pass (one row of
    /// logits each), within what is left of the token budget and the runner's rows, and
    /// never past the answer's `max_tokens` or the context.
    fn propose(&mut self, plan: &mut [(usize, usize)]) -> Result<(), ModelError> {
        let rows_max = self.runner.max_logit_rows();
        if rows_max == 0
            || !plan
                .iter()
                .any(|&(i, _)| self.running[i].sampler.params().speculative() > 0)
        {
            return Ok(());
        }
        // Every running sequence counts, prefilling ones too: a wave of new requests must not
        // wait behind the draft passes of the few that already decode.
        if self.running.len() > self.cfg.max_speculative_batch {
            return Ok(());
        }
        let lone = self.running.len() == 1;
        let mut rows: usize = plan
            .iter()
            .filter(|&&(i, _)| self.running[i].in_scored_part())
            .map(|&(_, n)| n)
            .sum();
        let used: usize = plan.iter().map(|&(_, n)| n).sum();
        let mut budget = self.cfg.max_batch_tokens.saturating_sub(used);
        // Plan entries whose proposals come from the draft model, with how many at most.
        let mut drafting = Vec::new();
        for (pi, p) in plan.iter_mut().enumerate() {
            let (idx, n) = *p;
            let seq = &mut self.running[idx];
            let params = seq.sampler.params();
            let k = params.speculative();
            if k == 0
                || n != 1
                || seq.score.is_some()
                || seq.constraint.is_some()
                || seq.late_mask.is_some()
                || seq.stopped.is_some()
                || seq.computed + 1 != seq.tokens.len()
            {
                continue;
            }
            if seq.lookup.cap == 0 {
                seq.lookup.cap = k;
            }
            if seq.lookup.pause > 0 {
                seq.lookup.pause -= 1;
                continue;
            }
            let mut k = seq.lookup.cap;
            if params.draft_max > 0 && lone && self.cfg.draft_by_cost {
                if let Some(d) = self.draft.as_ref() {
                    match d.costs.best(seq.lookup.acceptance(), params.speculative()) {
                        Some(best) => k = best,
                        // One plain step first: its cost is the measure of the others.
                        None => continue,
                    }
                }
            }
            let generated = seq.tokens.len() - seq.prompt_len;
            let room = params
                .max_tokens
                .saturating_sub(generated + 1)
                .min(seq.max_len.saturating_sub(seq.tokens.len() + 1));
            let d = k
                .min(room)
                .min(budget)
                .min(rows_max.saturating_sub(rows + 1));
            if d == 0 {
                continue;
            }
            budget -= d;
            rows += 1 + d;
            if params.draft_max > 0 {
                drafting.push((pi, d));
                continue;
            }
            let drafts = lookup(&seq.tokens, d);
            self.take_proposals(p, drafts);
        }
        if !drafting.is_empty() {
            let proposals = self.draft_proposals(plan, &drafting)?;
            for (pi, drafts) in proposals {
                self.take_proposals(&mut plan[pi], drafts);
            }
        }
        Ok(())
    }

    /// Appends `drafts` to the plan entry `p`'s sequence for this step, if its block table
    /// can hold them.
    fn take_proposals(&mut self, p: &mut (usize, usize), drafts: Vec<u32>) {
        let seq = &mut self.running[p.0];
        if drafts.is_empty()
            || self
                .blocks
                .grow(&mut seq.table, seq.computed + 1 + drafts.len())
                .is_err()
        {
            return;
        }
        self.stats.draft_tokens += drafts.len() as u64;
        p.1 = 1 + drafts.len();
        seq.tokens.extend_from_slice(&drafts);
        seq.drafts = drafts;
    }

    /// The draft model's proposals for the plan entries `drafting` (plan index, most
    /// tokens): one pass brings each sequence's draft cache up to its last token (a long
    /// catch-up, such as the prompt, spreads over steps within the token budget) and
    /// proposes a first token, then one pass per further token, every sequence that still
    /// proposes in the same pass. A sampled request's proposals are drawn with the random
    /// numbers its own sampling will use at those positions, so that a draft close to the
    /// model proposes what the model will choose.
    fn draft_proposals(
        &mut self,
        plan: &[(usize, usize)],
        drafting: &[(usize, usize)],
    ) -> Result<Vec<(usize, Vec<u32>)>, ModelError> {
        let Some(dr) = self.draft.as_mut() else {
            return Ok(Vec::new());
        };
        let p_min = self.cfg.draft_p_min;
        let t0 = Instant::now();
        let passes_before = self.stats.draft_passes;
        let lone = self.running.len() == 1;
        let ctx = dr.runner.context_length();
        let mut budget = self.cfg.max_batch_tokens.max(1);
        // Whether no sequence catches up more than a token or two (a pass as any other).
        let mut caught_up = true;
        // (sequence index, plan index, most proposals, first position fed, whether the pass
        // reaches the last token)
        let mut feed = Vec::new();
        for &(pi, d) in drafting {
            let idx = plan[pi].0;
            let seq = &mut self.running[idx];
            let len = seq.tokens.len();
            let d = d.min(ctx.saturating_sub(len));
            if d == 0 || budget == 0 {
                continue;
            }
            if dr.blocks.grow(&mut seq.draft_table, len + d - 1).is_err() {
                // The draft's cache is full: this sequence goes without proposals (and
                // starts its draft cache again) rather than holding others back.
                release_draft(Some(&mut *dr), seq);
                continue;
            }
            let from = seq.draft_len.min(len - 1);
            let take = (len - from).min(budget);
            caught_up &= take <= 2;
            budget -= take;
            feed.push((idx, pi, d, from, take, from + take == len));
        }
        let mut out: Vec<(usize, Vec<u32>)> = Vec::new();
        // (sequence index, most proposals) of the sequences proposing, parallel to `out`.
        let mut live: Vec<(usize, usize)> = Vec::new();
        {
            let running = &self.running;
            let slices: Vec<Slice<'_>> = feed
                .iter()
                .map(|&(idx, _, _, from, take, last)| Slice {
                    tokens: &running[idx].tokens[from..from + take],
                    pos0: from,
                    blocks: &running[idx].draft_table,
                    want_logits: last,
                })
                .collect();
            dr.rows.clear();
            dr.adjust.clear();
            for &(idx, ..) in feed.iter().filter(|f| f.5) {
                dr.rows
                    .push(draft_row(&running[idx], 0, p_min > 0.0, &mut dr.adjust));
            }
            dr.sampled.clear();
            if !slices.is_empty() {
                dr.runner
                    .step(&slices, &dr.rows, &dr.adjust, &[], &mut dr.sampled)?;
                self.stats.draft_passes += 1;
            }
        }
        // A proposal the draft gives less than `p_min` is not made, and ends the sequence's
        // (rows without a log-probability, sampled ones, hold NaN: never below).
        let sure = |s: &Sampled| p_min <= 0.0 || s.logprob.is_nan() || s.logprob.exp() >= p_min;
        let mut r = 0;
        for &(idx, pi, d, from, take, last) in &feed {
            self.running[idx].draft_len = from + take;
            if last {
                let s = &dr.sampled[r];
                let first = if sure(s) { vec![s.token] } else { Vec::new() };
                out.push((pi, first));
                live.push((idx, d));
                r += 1;
            }
        }
        // Further proposals, one pass each.
        for j in 1.. {
            let going: Vec<usize> = (0..out.len())
                .filter(|&i| out[i].1.len() == j && j < live[i].1)
                .filter(|&i| !self.tok.is_eog(out[i].1[j - 1]))
                .collect();
            if going.is_empty() {
                break;
            }
            {
                let running = &self.running;
                let slices: Vec<Slice<'_>> = going
                    .iter()
                    .map(|&i| {
                        let seq = &running[live[i].0];
                        Slice {
                            tokens: &out[i].1[j - 1..j],
                            pos0: seq.tokens.len() + j - 1,
                            blocks: &seq.draft_table,
                            want_logits: true,
                        }
                    })
                    .collect();
                dr.rows.clear();
                dr.adjust.clear();
                for &i in &going {
                    let row = draft_row(&running[live[i].0], j as u64, p_min > 0.0, &mut dr.adjust);
                    dr.rows.push(row);
                }
                dr.sampled.clear();
                dr.runner
                    .step(&slices, &dr.rows, &dr.adjust, &[], &mut dr.sampled)?;
                self.stats.draft_passes += 1;
            }
            for (r, &i) in going.iter().enumerate() {
                let seq = &mut self.running[live[i].0];
                seq.draft_len = seq.tokens.len() + j;
                if sure(&dr.sampled[r]) {
                    out[i].1.push(dr.sampled[r].token);
                }
            }
        }
        let spent = t0.elapsed().as_secs_f64();
        self.stats.draft_seconds += spent;
        self.stats.model_seconds += spent;
        let passes = self.stats.draft_passes - passes_before;
        if lone && caught_up && passes > 0 {
            if let Some(dr) = self.draft.as_mut() {
                dr.costs.note_draft(spent / passes as f64);
            }
        }
        Ok(out)
    }

    /// Runs one step. Returns `false` when there was nothing to do.
    pub fn step(&mut self) -> Result<bool, ModelError> {
        let t0 = Instant::now();
        self.step_start = (t0, thread_cpu_seconds());
        let before = self.stats.model_seconds;
        let r = self.step_inner();
        let total = t0.elapsed().as_secs_f64();
        self.stats.host_seconds += total - (self.stats.model_seconds - before);
        r
    }

    fn step_inner(&mut self) -> Result<bool, ModelError> {
        // Without a device that runs apart from the host, the last step's tokens are
        // streamed before this one, so that a stop string ends its sequence before it runs.
        let overlap = self.runner.overlaps();
        let mut streamed = !overlap && self.flush();
        if self.retire_stopped() && !overlap {
            self.flush();
        }
        self.admit();
        if self.running.is_empty() {
            streamed |= self.flush();
            return Ok(streamed);
        }
        let mut plan = std::mem::take(&mut self.plan);
        let mut pre = std::mem::take(&mut self.pre);
        self.plan_step(&mut plan, &mut pre);
        // Make room in the block tables; preempt the newest sequences if the pool is full.
        let mut i = 0;
        while i < plan.len() {
            let (idx, n) = plan[i];
            let need = self.running[idx].computed + n;
            let seq = &mut self.running[idx];
            if self.blocks.grow(&mut seq.table, need).is_ok() {
                i += 1;
                continue;
            }
            if self.running.len() == 1 {
                // A lone sequence has the whole pool: it has reached the memory budget.
                self.retire(0, FinishReason::ContextFull);
                plan.clear();
                break;
            }
            let victim = self.running.len() - 1;
            self.preempt_last();
            plan.retain(|&(j, _)| j != victim);
            i = 0; // growing again is harmless; removal shifted the plan
        }
        if plan.is_empty() {
            self.plan = plan;
            self.pre = pre;
            if overlap {
                self.flush();
            }
            return Ok(true);
        }
        if let Err(e) = self.propose(&mut plan) {
            // A failed draft pass fails the step's sequences, as a failed step does.
            return self.fail_step(plan, pre, e);
        }
        plan.sort_unstable_by_key(|&(idx, _)| idx);
        // A sequence whose mask was left behind last step and is still being computed waits
        // for it outside this step (it would hold up the step's launch).
        plan.retain(|&(idx, _)| {
            self.running[idx]
                .late_mask
                .as_ref()
                .is_none_or(|t| t.is_back())
        });
        if plan.is_empty() {
            self.plan = plan;
            self.pre = pre;
            if overlap {
                self.flush();
            }
            std::thread::yield_now();
            return Ok(true);
        }
        // A lone sequence's decoding pass (one row, or a verification of proposals): timed
        // below for the draft's choice of how many to propose.
        let timed_rows = match plan.as_slice() {
            [(i, n)] if self.running.len() == 1 && self.draft.is_some() => {
                let s = &self.running[*i];
                (s.computed + n == s.tokens.len() && (*n == 1 || !s.drafts.is_empty()))
                    .then_some(*n)
            }
            _ => None,
        };
        // A runner that overlaps gets the token masks computed while its pass runs, unless a
        // teacher-forced pass (which must wait for this step's sampling) follows it.
        let has_scored = plan
            .iter()
            .any(|&(i, _)| self.running[i].in_scored_part() || !self.running[i].drafts.is_empty());
        let late_masks = overlap && !has_scored;
        let mut jobs = self.take_constraints(&plan);
        let mut mask_seconds = 0.0;
        // Masks left behind (their sequences sit this step out), given to their sequences
        // once the step's slices no longer borrow them.
        let mut late_tasks: Vec<Arc<MaskTask>> = Vec::new();
        let words = kiln_model::sample::mask_words(self.runner.vocab_size());
        let eog = self.tok.clone();
        if !late_masks && !jobs.is_empty() {
            let spent = if self.runner.overlaps() || jobs.len() < 2 {
                let pieces = self.mask_pieces(jobs.len());
                fill_masks(
                    &mut jobs,
                    self.masks.get_mut(),
                    words,
                    eog.eog_ids(),
                    pieces,
                )
            } else {
                fill_masks_on_host_threads(
                    &self.runner,
                    &mut jobs,
                    self.masks.get_mut(),
                    words,
                    eog.eog_ids(),
                )
            };
            self.restore_constraints(std::mem::take(&mut jobs), spent);
        }
        // The plan entries of each pass. Scored chunks go to a teacher-forced pass of their
        // own, so the others keep one row of logits each. Each pass's slices (which borrow
        // the sequences) are made just before it runs, so that the sequences may stream their
        // tokens between passes.
        let mut batch_k: Vec<usize> = Vec::with_capacity(plan.len());
        let mut scored_k: Vec<usize> = Vec::new();
        let mut embedded_k: Vec<usize> = Vec::new();
        let mut verifying_k: Vec<usize> = Vec::new();
        let mut verifying_sampled_k: Vec<usize> = Vec::new();
        // The plan entry of each row.
        let mut sampling = Vec::with_capacity(plan.len());
        self.rows.clear();
        self.adjust.clear();
        self.sitting.clear();
        for (k, &(idx, n)) in plan.iter().enumerate() {
            let s = &self.running[idx];
            if s.wants_logits(n) {
                self.rows.push(s.sampler.row(&mut self.adjust));
                sampling.push(k);
            }
            if s.embeds() {
                embedded_k.push(k);
            } else if !s.drafts.is_empty() && s.sampler.params().plain_greedy() {
                verifying_k.push(k);
            } else if !s.drafts.is_empty() {
                verifying_sampled_k.push(k);
            } else if s.in_scored_part() {
                scored_k.push(k);
            } else {
                batch_k.push(k);
            }
        }
        let rows_of = |ks: &[usize]| -> usize { ks.iter().map(|&k| plan[k].1).sum() };
        let scored_rows = rows_of(&scored_k);
        let embedded_rows = rows_of(&embedded_k);
        let verified_rows = rows_of(&verifying_k);
        let verified_sampled_rows = rows_of(&verifying_sampled_k);
        self.verified.clear();
        self.verify_logits.clear();
        self.sampled.clear();
        self.score_logits.clear();
        self.hidden.clear();
        let mut result = Ok(());
        let t_model = Instant::now();
        let cpu_model = thread_cpu_seconds();
        self.stats.prepare_seconds += t_model.duration_since(self.step_start.0).as_secs_f64();
        self.stats.host_cpu_seconds += cpu_model - self.step_start.1;
        // A runner that overlaps gets this step started, and the previous step's tokens are
        // streamed while it runs.
        let started = overlap && !batch_k.is_empty();
        // Whether the last step's tokens were streamed during this one's pass already, and
        // how long that took (the engine's own work, not the model's).
        let (mut flushed, mut flushed_s) = (false, 0.0);
        let mut launch_s = 0.0;
        if started && jobs.is_empty() {
            result = self
                .runner
                .start_pass(&slices(&self.running, &plan, &batch_k));
            launch_s = t_model.elapsed().as_secs_f64();
            self.stats.launch_cpu_seconds += thread_cpu_seconds() - cpu_model;
        } else if started {
            // The pass is launched first (masks computed meanwhile on the host's threads slow
            // the launch down), then the masks are computed on the pool while it runs: one
            // task a mask, so that the pool's threads share out masks of unequal cost as they
            // finish, the dearest first (by what each sequence's last mask cost), so that no
            // dear one starts last. Once the pass has ended, a sequence whose mask is still
            // being computed sits the step out instead of holding up the others (see
            // `MaskTask`).
            let t_launch = Instant::now();
            let cpu_launch = thread_cpu_seconds();
            result = self
                .runner
                .start_pass(&slices(&self.running, &plan, &batch_k));
            launch_s = t_launch.elapsed().as_secs_f64();
            self.stats.launch_cpu_seconds += thread_cpu_seconds() - cpu_launch;
            let n = jobs.len();
            // One task a mask row (row i: jobs[i]). A decoding sequence's mask may be left
            // behind (its one token's pass is cheap to run again; a sampling sequence with one
            // token to run decodes), not twice in a row (so that every sequence moves on).
            let tasks: Vec<Arc<MaskTask>> = jobs
                .iter()
                .map(|j| {
                    let s = &self.running[j.idx];
                    let may_leave = s.computed + 1 == s.tokens.len() && !s.sat_out;
                    Arc::new(MaskTask::new(j.idx, may_leave))
                })
                .collect();
            let mut order: Vec<(usize, MaskJob)> = jobs.drain(..).enumerate().collect();
            order.sort_by_key(|(_, j)| std::cmp::Reverse(j.constraint.last_mask_nanos()));
            let clock = Arc::new(MaskClock::new(self.mask_nanos.clone()));
            let words = words.max(1);
            let base = self.masks.get_mut().as_mut_ptr();
            for (i, job) in order {
                // SAFETY: row i of the step's rows, `words` words, inside the buffer (it
                // holds `n * words`); see `MaskTask` for who writes it and when.
                let row = RowPtr(unsafe { base.add(i * words) }, words);
                let (task, clock, eog) = (tasks[i].clone(), clock.clone(), self.eog.clone());
                rayon::spawn(move || task.run(job, row, &clock, &eog));
            }
            // Should this thread unwind before every task is settled, none may write its row
            // after (the rows may be freed).
            let settle = SettleOnUnwind(&tasks);
            // The last step's tokens are streamed now, while the masks and the pass run (after
            // them, the streaming held up the step's end). Streaming may cut a sequence's
            // tokens at a stop string; only the decoding pass, whose slices are spent, runs
            // in a step with late masks (no scored, embedded or verifying passes follow, whose
            // slices are made after this).
            debug_assert!(
                scored_k.is_empty()
                    && embedded_k.is_empty()
                    && verifying_k.is_empty()
                    && verifying_sampled_k.is_empty()
            );
            let t_stream = Instant::now();
            self.flush();
            flushed_s = t_stream.elapsed().as_secs_f64();
            self.stats.stream_seconds += flushed_s;
            flushed = true;
            // Waiting for a mask costs every row of the step; leaving one behind costs its
            // sequence a step. So once the pass has ended, the masks that may be left and are
            // still running are waited for as long as the steps they would cost take (the
            // pass's own time over its rows, for each).
            let per_row = self.pass_seconds / self.rows.len().max(1) as f64;
            let grace = self.cfg.late_mask_wait;
            let may_sit = result.is_ok() && tasks.iter().any(|t| t.may_leave);
            let mut ended: Option<Instant> = None;
            // Whether the pass is asked about for the first time: if it has ended by then, it
            // ended during the streaming above, and its time is known only as at most this
            // (the last pass's is kept, once there is one).
            let mut first = true;
            while clock.done.load(Ordering::Acquire) < n {
                if may_sit && self.runner.pass_done() {
                    let now = Instant::now();
                    if ended.is_none() {
                        ended = Some(now);
                        if !first || self.pass_seconds == 0.0 {
                            self.pass_seconds = now.duration_since(t_launch).as_secs_f64();
                        }
                    }
                    let since = ended.map_or(0.0, |e| now.duration_since(e).as_secs_f64());
                    let left = tasks.iter().filter(|t| t.may_leave && !t.is_done()).count();
                    if left > 0 && since >= grace.unwrap_or(per_row * left as f64) {
                        break;
                    }
                }
                first = false;
                std::thread::yield_now();
            }
            // The masks that may not be left first (any that may be left and end meanwhile
            // are taken), then those that may be left and are still running are.
            for task in tasks.iter().filter(|t| !t.may_leave) {
                task.wait();
            }
            for task in tasks.iter().filter(|t| t.may_leave) {
                if !task.leave() {
                    task.wait();
                }
            }
            drop(settle);
            self.stats.mask_longest_seconds += clock.longest.load(Ordering::Relaxed) as f64 * 1e-9;
            self.stats.mask_last_start_seconds +=
                clock.last_start.load(Ordering::Relaxed) as f64 * 1e-9;
            self.stats.mask_wait_seconds += t_model.elapsed().as_secs_f64() - launch_s - flushed_s;
            // The masks taken back; a row left behind allows only the end tokens (its token
            // is not taken), and its sequence holds the task until its next step.
            let masks = self.masks.get_mut();
            for (k, entry) in self.mask_of.iter().enumerate() {
                let Some(i) = entry.map(|i| i as usize) else {
                    continue;
                };
                if tasks[i].was_left() {
                    eog_mask(&mut masks[i * words..(i + 1) * words], self.eog.as_ref());
                    self.sitting.push(k);
                    late_tasks.push(tasks[i].clone());
                } else if let Some(job) = tasks[i].take() {
                    jobs.push(job);
                }
            }
        } else if !batch_k.is_empty() {
            set_row_masks(&mut self.rows, &self.mask_of, &sampling);
            result = self.runner.step(
                &slices(&self.running, &plan, &batch_k),
                &self.rows,
                &self.adjust,
                self.masks.get(),
                &mut self.sampled,
            );
        }
        self.stats.launch_seconds += launch_s;
        let mut model_s = t_model.elapsed().as_secs_f64() - flushed_s;
        if started && result.is_ok() && !late_masks {
            set_row_masks(&mut self.rows, &self.mask_of, &sampling);
            let t = Instant::now();
            result = self
                .runner
                .start_sampling(&self.rows, &self.adjust, self.masks.get());
            let spent = t.elapsed().as_secs_f64();
            self.stats.sampling_launch_seconds += spent;
            model_s += spent;
        }
        if result.is_ok() && !scored_k.is_empty() {
            let t = Instant::now();
            let scored = slices(&self.running, &plan, &scored_k);
            result = self.runner.step_all(&scored, &mut self.score_logits);
            model_s += t.elapsed().as_secs_f64();
        }
        if result.is_ok() && !embedded_k.is_empty() {
            let t = Instant::now();
            let embedded = slices(&self.running, &plan, &embedded_k);
            result = self.runner.step_hidden(&embedded, &mut self.hidden);
            model_s += t.elapsed().as_secs_f64();
        }
        if result.is_ok() && !verifying_k.is_empty() {
            let t = Instant::now();
            let verifying = slices(&self.running, &plan, &verifying_k);
            result = self.runner.step_greedy_all(&verifying, &mut self.verified);
            model_s += t.elapsed().as_secs_f64();
        }
        if result.is_ok() && !verifying_sampled_k.is_empty() {
            let t = Instant::now();
            let verifying_sampled = slices(&self.running, &plan, &verifying_sampled_k);
            result = self
                .runner
                .step_all(&verifying_sampled, &mut self.verify_logits);
            model_s += t.elapsed().as_secs_f64();
        }
        for task in late_tasks.drain(..) {
            let s = &mut self.running[task.idx];
            s.late_mask = Some(task);
            s.sat_out = true;
            self.stats.mask_sit_outs += 1;
        }
        // With the time of masks beside the pass (those left behind count when they end).
        mask_seconds += self.mask_seconds_since();
        if !jobs.is_empty() || mask_seconds > 0.0 {
            self.restore_constraints(std::mem::take(&mut jobs), mask_seconds);
        }
        if started && result.is_ok() && late_masks {
            set_row_masks(&mut self.rows, &self.mask_of, &sampling);
            let t = Instant::now();
            result = self
                .runner
                .start_sampling(&self.rows, &self.adjust, self.masks.get());
            let spent = t.elapsed().as_secs_f64();
            self.stats.sampling_launch_seconds += spent;
            model_s += spent;
        }
        if overlap && !flushed {
            let t_stream = Instant::now();
            self.flush();
            self.stats.stream_seconds += t_stream.elapsed().as_secs_f64();
        }
        if started {
            let t_wait = Instant::now();
            let r = self.runner.finish(&mut self.sampled);
            if result.is_ok() {
                result = r;
            }
            let spent = t_wait.elapsed().as_secs_f64();
            self.stats.finish_seconds += spent;
            model_s += spent;
        }
        self.stats.model_seconds += model_s;
        let accept_start = (Instant::now(), thread_cpu_seconds());
        if let (Some(n), Some(dr), true) = (timed_rows, self.draft.as_mut(), result.is_ok()) {
            dr.costs.note_pass(n, model_s);
        }
        let vocab = self.runner.vocab_size();
        if result.is_ok() && self.sampled.len() != self.rows.len() {
            result = Err(ModelError::Input(format!(
                "the runner returned {} tokens for {} sequences",
                self.sampled.len(),
                self.rows.len()
            )));
        }
        if result.is_ok() && self.score_logits.len() != scored_rows * vocab {
            result = Err(ModelError::Input(format!(
                "the runner returned {} values of logits for {scored_rows} scored tokens of vocabulary {vocab}",
                self.score_logits.len()
            )));
        }
        let dim = self.runner.hidden_size();
        if result.is_ok() && self.hidden.len() != embedded_rows * dim {
            result = Err(ModelError::Input(format!(
                "the runner returned {} hidden values for {embedded_rows} tokens of width {dim}",
                self.hidden.len()
            )));
        }
        if result.is_ok() && self.verified.len() != verified_rows {
            result = Err(ModelError::Input(format!(
                "the runner returned {} choices for {verified_rows} verified tokens",
                self.verified.len()
            )));
        }
        if result.is_ok() && self.verify_logits.len() != verified_sampled_rows * vocab {
            result = Err(ModelError::Input(format!(
                "the runner returned {} values of logits for {verified_sampled_rows} verified tokens of vocabulary {vocab}",
                self.verify_logits.len()
            )));
        }
        if let Err(e) = result {
            return self.fail_step(plan, pre, e);
        }
        self.stats.steps += 1;
        let mut row = 0;
        let mut score_row = 0;
        let mut hidden_row = 0;
        let mut verified_row = 0;
        let mut verified_logit_row = 0;
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        let mut sitting = self.sitting.iter().copied().peekable();
        for (k, &(idx, n)) in plan.iter().enumerate() {
            let seq = &mut self.running[idx];
            if sitting.next_if_eq(&k).is_some() {
                // Its mask was late: the same position runs again at its next step, and
                // this step's choice (made with a mask of the end tokens) is dropped.
                row += 1;
                if let Some(reason) = seq.stopped {
                    done.push((idx, reason));
                }
                continue;
            }
            if seq.computed + n > seq.tokens.len() {
                // Streamed during this step (beside a device), its text met a stop string
                // among several tokens taken at the last step, and the tokens after it,
                // those this step ran among them, were cut: the step's results for it are
                // dropped (its rows passed over) and it ends.
                if !seq.drafts.is_empty() && seq.sampler.params().plain_greedy() {
                    verified_row += n;
                } else if !seq.drafts.is_empty() {
                    verified_logit_row += n;
                } else if sampling.binary_search(&k).is_ok() {
                    row += 1;
                }
                seq.drafts.clear();
                done.push((idx, seq.stopped.unwrap_or(FinishReason::Stop)));
                continue;
            }
            if let Some(e) = seq.score.as_mut().and_then(|s| s.embed.as_mut()) {
                let rows = &self.hidden[hidden_row * dim..(hidden_row + n) * dim];
                hidden_row += n;
                e.record(rows, seq.computed, n, dim);
            } else if seq.in_scored_part() {
                let rows = &self.score_logits[score_row * vocab..(score_row + n) * vocab];
                score_row += n;
                seq.record_logprobs(rows, n, vocab);
            } else if !seq.drafts.is_empty() {
                let choices = if seq.sampler.params().plain_greedy() {
                    verified_row += n;
                    Choices::Greedy(&self.verified[verified_row - n..verified_row])
                } else {
                    verified_logit_row += n;
                    Choices::Logits(
                        &mut self.verify_logits
                            [(verified_logit_row - n) * vocab..verified_logit_row * vocab],
                        vocab,
                    )
                };
                // The step's adjustments are spent: their vector is reused for the rows'.
                let (matched, reason) =
                    verify(seq, &self.tok, choices, &mut self.adjust, &mut self.scratch);
                self.stats.accepted_tokens += matched as u64;
                self.blocks
                    .register(&seq.table, &seq.tokens, seq.computed, &mut seq.registered);
                if let Some(reason) = reason {
                    done.push((idx, reason));
                }
                continue;
            }
            seq.computed += n;
            self.blocks
                .register(&seq.table, &seq.tokens, seq.computed, &mut seq.registered);
            if seq.score.is_some() {
                if seq.computed == seq.end() {
                    done.push((idx, FinishReason::Stop));
                }
                continue;
            }
            if seq.computed != seq.tokens.len() {
                continue; // a prefill chunk that does not reach the prompt's end
            }
            let sampled = &self.sampled[row];
            row += 1;
            if seq.error.is_some() {
                done.push((idx, FinishReason::Stop));
                continue;
            }
            if let Some(reason) = seq.stopped.or_else(|| accept(seq, &self.tok, sampled)) {
                done.push((idx, reason));
            }
        }
        for &(idx, reason) in done.iter().rev() {
            self.retire(idx, reason);
        }
        self.done = done;
        self.plan = plan;
        self.pre = pre;
        self.stats.accept_seconds += accept_start.0.elapsed().as_secs_f64();
        self.stats.host_cpu_seconds += thread_cpu_seconds() - accept_start.1;
        Ok(true)
    }

    /// Fails every sequence of the step `plan` with `e` and frees their blocks (the plan's
    /// and `pre`'s vectors are kept for the next step).
    fn fail_step(
        &mut self,
        mut plan: Vec<(usize, usize)>,
        pre: Vec<(usize, usize)>,
        e: ModelError,
    ) -> Result<bool, ModelError> {
        let msg = e.to_string();
        plan.sort_unstable_by_key(|&(idx, _)| idx);
        plan.dedup_by_key(|p| p.0);
        for &(idx, _) in plan.iter().rev() {
            let mut s = self.running.remove(idx);
            self.blocks.release(&s.table);
            release_draft(self.draft.as_mut(), &mut s);
            s.fail(&msg);
        }
        self.plan = plan;
        self.pre = pre;
        Err(e)
    }

    /// Runs steps until nothing is left.
    pub fn run_to_completion(&mut self) -> Result<(), ModelError> {
        while self.step()? {}
        Ok(())
    }
}

/// The draft model of speculative decoding: its runner, the blocks of its own KV cache,
/// and its step's rows.
struct Drafter {
    runner: Box<dyn Runner>,
    blocks: BlockManager,
    costs: SpecCosts,
    rows: Vec<RowSampling>,
    adjust: Vec<Adjust>,
    sampled: Vec<Sampled>,
}

/// Gives back a sequence's blocks in the draft model's cache (its draft starts again).
fn release_draft(draft: Option<&mut Drafter>, seq: &mut Seq) {
    if let Some(d) = draft {
        d.blocks.release(&seq.draft_table);
    }
    seq.draft_table.clear();
    seq.draft_len = 0;
}

/// How the draft model chooses its `j`-th proposal for `seq`: greedy for a plain greedy
/// request; otherwise the request's own row, with the random numbers its sampling will
/// draw `j` tokens on (penalties as they stand before the proposals).
fn draft_row(seq: &Seq, j: u64, logprob: bool, adjust: &mut Vec<Adjust>) -> RowSampling {
    if seq.sampler.params().plain_greedy() {
        // The chosen token's probability (for `draft_p_min`), no alternatives.
        return RowSampling {
            logprobs: logprob.then_some(0),
            ..RowSampling::GREEDY
        };
    }
    let mut row = seq.sampler.row(adjust);
    row.counter += j;
    row.logprobs = None;
    row.mask = None;
    row
}

/// The rows of a step's token masks: in the runner's host memory where it has some
/// ([`Runner::host_words`], uploaded without a copy), else in a vector. Every word of the
/// rows in use is written by [`fill_masks`] before it is read.
#[derive(Default)]
struct MaskRows {
    host: Option<Box<dyn HostWords>>,
    vec: Vec<u32>,
    len: usize,
}

impl MaskRows {
    /// Rows of `n` words in all; memory from `runner`, when it has to grow, for at least
    /// `reserve` words, so that it seldom does.
    fn resize<R: Runner>(&mut self, n: usize, runner: &R, reserve: usize) {
        self.len = n;
        let fits = match &self.host {
            Some(h) => h.words().len() >= n,
            None => self.vec.len() >= n,
        };
        if fits {
            return;
        }
        self.host = runner.host_words(n.max(reserve));
        if self.host.is_none() {
            self.vec.resize(n, 0);
        }
    }

    fn get(&self) -> &[u32] {
        match &self.host {
            Some(h) => &h.words()[..self.len],
            None => &self.vec[..self.len],
        }
    }

    fn get_mut(&mut self) -> &mut [u32] {
        match &mut self.host {
            Some(h) => &mut h.words_mut()[..self.len],
            None => &mut self.vec[..self.len],
        }
    }
}

/// A constrained sequence's part of a step's masks: its constraint, out of the sequence
/// while the mask is computed.
struct MaskJob {
    /// The sequence's index in `running`.
    idx: usize,
    constraint: Box<Constraint>,
    /// Why the constraint failed, if it did.
    error: Option<String>,
}

/// A mask computed on the pool's threads beside the pass ([`Engine::step`] on a runner that
/// overlaps), which may outlive its step. Its task computes the mask, then writes its row
/// only if the engine still waits for it (`RUNNING` to `WRITING`, then `DONE`); once the
/// pass has ended the engine may leave it behind instead (`RUNNING` to `LATE`): its
/// sequence then sits the step out and holds the task, whose job (the constraint, its mask
/// held inside) comes back (`BACK`) for the sequence's next step. So a row is written only
/// while the engine waits for it, and never after the engine has read the rows.
struct MaskTask {
    /// The sequence's index in `running` in the step that made the task.
    idx: usize,
    /// Whether the engine may leave it behind (its sequence then sits the step out).
    may_leave: bool,
    state: std::sync::atomic::AtomicU8,
    job: std::sync::Mutex<Option<MaskJob>>,
}

const TASK_RUNNING: u8 = 0;
const TASK_WRITING: u8 = 1;
const TASK_DONE: u8 = 2;
const TASK_LATE: u8 = 3;
const TASK_BACK: u8 = 4;

/// One step's clock for its [`MaskTask`]s: when they were handed to the pool, how many have
/// written their rows, the longest and the last start; and the engine's total of mask time.
struct MaskClock {
    handed: Instant,
    done: std::sync::atomic::AtomicUsize,
    longest: AtomicU64,
    last_start: AtomicU64,
    total: Arc<AtomicU64>,
}

impl MaskClock {
    fn new(total: Arc<AtomicU64>) -> Self {
        MaskClock {
            handed: Instant::now(),
            done: Default::default(),
            longest: AtomicU64::new(0),
            last_start: AtomicU64::new(0),
            total,
        }
    }
}

/// A task's mask row: `.1` words from `.0`.
struct RowPtr(*mut u32, usize);

// SAFETY: the row is written by one task only, while the engine waits for it (MaskTask).
unsafe impl Send for RowPtr {}

impl MaskTask {
    fn new(idx: usize, may_leave: bool) -> Self {
        MaskTask {
            idx,
            may_leave,
            state: std::sync::atomic::AtomicU8::new(TASK_RUNNING),
            job: std::sync::Mutex::new(None),
        }
    }

    /// The task's body, on a pool thread.
    fn run(&self, mut job: MaskJob, row: RowPtr, clock: &MaskClock, eog: &[u32]) {
        let start = clock.handed.elapsed().as_nanos() as u64;
        clock.last_start.fetch_max(start, Ordering::Relaxed);
        let t = Instant::now();
        // A parser that panics fails its sequence, not the process (a panic on the pool's
        // threads aborts it).
        let computed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compute_job(&mut job)));
        if computed.is_err() {
            job.error = Some("the output constraint failed: its parser panicked".into());
        }
        let spent = t.elapsed().as_nanos() as u64;
        clock.total.fetch_add(spent, Ordering::Relaxed);
        let state = &self.state;
        if state
            .compare_exchange(
                TASK_RUNNING,
                TASK_WRITING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            clock.longest.fetch_max(spent, Ordering::Relaxed);
            // SAFETY: the engine waits for this task (it did not mark it late, which it
            // cannot now) and reads no row before the task is done; the buffer outlives the
            // wait, and no other task has this row.
            let mask = unsafe { std::slice::from_raw_parts_mut(row.0, row.1) };
            write_job_mask(&job, mask, eog);
            *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
            state.store(TASK_DONE, Ordering::Release);
            clock.done.fetch_add(1, Ordering::Release);
        } else {
            *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
            state.store(TASK_BACK, Ordering::Release);
        }
    }

    /// Marks a task still computing as left behind; `false` if it has begun writing its row
    /// (or is done).
    fn leave(&self) -> bool {
        self.state
            .compare_exchange(TASK_RUNNING, TASK_LATE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Waits until the task is done (its row written) or back (left behind, now finished).
    fn wait(&self) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s == TASK_DONE || s == TASK_BACK {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Whether a task left behind has ended (its job is back).
    fn is_back(&self) -> bool {
        self.state.load(Ordering::Acquire) == TASK_BACK
    }

    /// Whether the engine left the task behind (it may have ended since).
    fn was_left(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), TASK_LATE | TASK_BACK)
    }

    /// Whether the task has written its row.
    fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == TASK_DONE
    }

    /// Leaves the task if it is still computing, else waits until it is not writing: after
    /// this it writes nothing more.
    fn settle(&self) {
        while !self.leave() && self.state.load(Ordering::Acquire) == TASK_WRITING {
            std::thread::yield_now();
        }
    }

    /// The job, once the task has given it back.
    fn take(&self) -> Option<MaskJob> {
        self.wait();
        self.job.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Settles every task of a step (see [`MaskTask::settle`]) if the engine's thread unwinds
/// while they run.
struct SettleOnUnwind<'a>(&'a [Arc<MaskTask>]);

impl Drop for SettleOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for task in self.0 {
                task.settle();
            }
        }
    }
}

/// Computes a job's mask (held in its constraint); a constraint that fails records why.
fn compute_job(j: &mut MaskJob) {
    if j.error.is_none() {
        if let Err(e) = j.constraint.compute() {
            j.error = Some(format!("the output constraint failed: {e}"));
        }
    }
}

/// Writes a computed job's mask: its constraint's, or only the end tokens if it failed.
fn write_job_mask(j: &MaskJob, mask: &mut [u32], eog: &[u32]) {
    if j.error.is_none() {
        j.constraint.write_mask(mask);
    } else {
        eog_mask(mask, eog);
    }
}

/// A mask that allows only the tokens `eog`.
fn eog_mask(mask: &mut [u32], eog: &[u32]) {
    mask.fill(0);
    for &t in eog {
        if let Some(w) = mask.get_mut(t as usize / 32) {
            *w |= 1 << (t % 32);
        }
    }
}

/// Fills the mask rows of `jobs` (row `i` of `masks`, `words` words a row), in `pieces`
/// pieces on the current rayon pool (1: here). A constraint that fails allows only the end
/// tokens `eog`, and its sequence ends with the error after the step. Returns the seconds
/// spent, summed over the threads.
fn fill_masks(
    jobs: &mut [MaskJob],
    masks: &mut [u32],
    words: usize,
    eog: &[u32],
    pieces: usize,
) -> f64 {
    // Each mask is timed as it is computed; the pieces add those up.
    let run = |jobs: &mut [MaskJob], masks: &mut [u32]| -> f64 {
        let mut nanos = 0u64;
        for (j, mask) in jobs.iter_mut().zip(masks.chunks_mut(words.max(1))) {
            let t = Instant::now();
            compute_job(j);
            nanos += t.elapsed().as_nanos() as u64;
            write_job_mask(j, mask, eog);
        }
        nanos as f64 * 1e-9
    };
    if pieces <= 1 {
        return run(jobs, masks);
    }
    let per = jobs.len().div_ceil(pieces);
    let spent = std::sync::Mutex::new(0.0);
    rayon::scope(|sc| {
        for (part, m) in jobs
            .chunks_mut(per)
            .zip(masks.chunks_mut(per * words.max(1)))
        {
            let spent = &spent;
            sc.spawn(move |_| {
                let s = run(part, m);
                *spent.lock().unwrap_or_else(|e| e.into_inner()) += s;
            });
        }
    });
    spent.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Fills the mask rows of `jobs` (as [`fill_masks`]) on the threads that run the runner's
/// model on the host ([`Runner::host_run`]: a CPU backend's pool, which would otherwise wait
/// between passes while one thread computed every mask): each thread takes the next mask
/// not yet taken, the dearest first (by what each sequence's last mask cost). Returns the
/// seconds spent, summed over the threads.
fn fill_masks_on_host_threads<R: Runner + ?Sized>(
    runner: &R,
    jobs: &mut [MaskJob],
    masks: &mut [u32],
    words: usize,
    eog: &[u32],
) -> f64 {
    let mut parts: Vec<(&mut [MaskJob], &mut [u32])> = jobs
        .chunks_mut(1)
        .zip(masks.chunks_mut(words.max(1)))
        .collect();
    parts.sort_by_key(|(j, _)| {
        std::cmp::Reverse(j.first().map_or(0, |j| j.constraint.last_mask_nanos()))
    });
    let parts: Vec<std::sync::Mutex<(&mut [MaskJob], &mut [u32])>> =
        parts.into_iter().map(std::sync::Mutex::new).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let nanos = AtomicU64::new(0);
    runner.host_run(&|_, _| {
        while let Some(part) = parts.get(next.fetch_add(1, Ordering::Relaxed)) {
            // Each part is taken by one thread only: the lock is never waited on.
            let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
            let (j, m) = &mut *part;
            let spent = fill_masks(j, m, words, eog, 1);
            nanos.fetch_add((spent * 1e9) as u64, Ordering::Relaxed);
        }
    });
    nanos.into_inner() as f64 * 1e-9
}

/// Gives each sampling row its mask (`sampling`: the plan entry of each row, `mask_of`:
/// each plan entry's mask row).
fn set_row_masks(rows: &mut [RowSampling], mask_of: &[Option<u32>], sampling: &[usize]) {
    for (row, &k) in rows.iter_mut().zip(sampling) {
        row.mask = mask_of.get(k).copied().flatten();
    }
}

/// Takes the token sampled for `seq` into its tokens (it is streamed by [`stream`] later)
/// and says whether the sequence ends with it: at an end-of-generation token, at its token
/// limit or at the context's end. Stop strings are found when streaming.
/// The tokens prompt lookup proposes after `tokens`: the `k` that followed the latest
/// earlier occurrence of the text's last 3 tokens (or, failing that, 2: a single token
/// recurs too often to predict what follows it).
fn lookup(tokens: &[u32], k: usize) -> Vec<u32> {
    let len = tokens.len();
    for n in (2..=3usize).rev() {
        if len <= n {
            continue;
        }
        let tail = &tokens[len - n..];
        // Latest first: the answer so far is the likeliest to repeat itself.
        if let Some(j) = (0..len - n).rev().find(|&j| &tokens[j..j + n] == tail) {
            // What followed, read on into the proposal itself where the text ends: a text
            // that repeats with a short period goes on repeating.
            let from = j + n;
            let mut out: Vec<u32> = Vec::with_capacity(k);
            for i in 0..k {
                let at = from + i;
                out.push(if at < len { tokens[at] } else { out[at - len] });
            }
            return out;
        }
    }
    Vec::new()
}

/// The model's verdict on a step's proposals for one sequence.
enum Choices<'a> {
    /// The most likely token after the last token and after each proposal (a plain greedy
    /// request, chosen where the logits are).
    Greedy(&'a [u32]),
    /// The rows of logits after each of them (`vocab` values a row), sampled here, in place.
    Logits(&'a mut [f32], usize),
}

/// Reads a verified step: the model's choice after the sequence's last token and after each
/// proposed token. Takes the model's choices while they agree with the proposals, then its
/// first disagreeing choice (or the one after every proposal), as plain decoding would
/// have taken them one step at a time: a sampled row is sampled with the request's
/// penalties and random stream as they stand after the tokens before it. Returns how many
/// proposals were taken and why the sequence ends, if it does.
fn verify(
    seq: &mut Seq,
    tok: &Tokenizer,
    mut choices: Choices<'_>,
    adjust: &mut Vec<Adjust>,
    scratch: &mut Scratch,
) -> (usize, Option<FinishReason>) {
    let drafts = std::mem::take(&mut seq.drafts);
    seq.tokens.truncate(seq.tokens.len() - drafts.len());
    let most = seq.sampler.params().speculative();
    if let Some(r) = seq.stopped {
        seq.lookup.update(drafts.len(), 0, most);
        return (0, Some(r));
    }
    let mut matched = 0;
    let mut reason = None;
    for i in 0..=drafts.len() {
        let sampled = match &mut choices {
            Choices::Greedy(c) => Sampled::token(c[i]),
            Choices::Logits(l, v) => {
                adjust.clear();
                let r = seq.sampler.row(adjust);
                let row = &mut l[i * *v..(i + 1) * *v];
                kiln_model::sample::sample_row(row, &r, None, adjust, scratch)
            }
        };
        // The KV of the token before this choice is now computed (the last token's, or
        // the proposal before it, which agreed).
        seq.computed += 1;
        reason = accept(seq, tok, &sampled);
        let agrees = i < drafts.len() && sampled.token == drafts[i];
        if agrees {
            matched += 1;
        }
        if reason.is_some() || !agrees {
            break;
        }
    }
    seq.lookup.update(drafts.len(), matched, most);
    // The draft's cache holds what agreed (the rest is written again).
    seq.draft_len = seq.draft_len.min(seq.computed);
    (matched, reason)
}

fn accept(seq: &mut Seq, tok: &Tokenizer, sampled: &Sampled) -> Option<FinishReason> {
    let id = sampled.token;
    seq.sat_out = false;
    seq.sampler.record(id);
    let logprob = seq
        .sampler
        .params()
        .logprobs
        .map(|_| TokenLogprob::from_sampled(sampled));
    seq.tokens.push(id);
    seq.unsent.push((id, logprob));
    if seq.first_token.is_none() {
        seq.first_token = Some(seq.submitted.elapsed().as_secs_f64());
    }
    let params = seq.sampler.params();
    let generated = seq.tokens.len() - seq.prompt_len;
    let eog = tok.is_eog(id) && !params.ignore_eos;
    if let (false, Some(c)) = (eog, seq.constraint.as_mut()) {
        c.push(id);
    }
    let params = seq.sampler.params();
    if eog {
        Some(FinishReason::Stop)
    } else if generated >= params.max_tokens {
        Some(FinishReason::Length)
    } else if seq.tokens.len() >= seq.max_len {
        Some(FinishReason::ContextFull)
    } else {
        None
    }
}

/// Streams the tokens [`accept`] took: their text, held back while it could still begin a
/// stop string. `end`: the sequence ends with its last token (the rest of its text goes
/// out with it). Returns `Stop` when a stop string ends the text (tokens after it are
/// dropped) and `Cancelled` when nobody listens any more.
fn stream(seq: &mut Seq, tok: &Tokenizer, end: Option<FinishReason>) -> Option<FinishReason> {
    let mut unsent = std::mem::take(&mut seq.unsent);
    let last = unsent.len().saturating_sub(1);
    let mut reason = None;
    for (i, (id, logprob)) in unsent.drain(..).enumerate() {
        let params = seq.sampler.params();
        let eog = tok.is_eog(id) && !params.ignore_eos;
        let mut text = if eog {
            String::new()
        } else {
            seq.decoder.push(tok, id)
        };
        if !params.stop.is_empty() {
            seq.held.push_str(&text);
            text.clear();
            if let Some(cut) = params
                .stop
                .iter()
                .filter_map(|s| seq.held.find(s.as_str()))
                .min()
            {
                seq.held.truncate(cut);
                text = std::mem::take(&mut seq.held);
                reason = Some(FinishReason::Stop);
            } else {
                // Hold back the longest tail that could still begin a stop string.
                let keep = params
                    .stop
                    .iter()
                    .map(|s| longest_prefix_suffix(&seq.held, s))
                    .max()
                    .unwrap_or(0);
                let emit = seq.held.len() - keep;
                text = seq.held[..emit].to_owned();
                seq.held.drain(..emit);
            }
        }
        if reason.is_none() && i == last && end.is_some() {
            text.push_str(&seq.decoder.finish());
            text.push_str(&std::mem::take(&mut seq.held));
        }
        if !(seq.sink)(Event::Token { id, text, logprob }) {
            return Some(FinishReason::Cancelled);
        }
        if reason.is_some() {
            // Tokens after the stop string are not part of the answer, nor are proposals
            // this step runs after them (the step then ends the sequence).
            let drop = last - i + seq.drafts.len();
            seq.tokens.truncate(seq.tokens.len() - drop);
            break;
        }
    }
    unsent.clear();
    seq.unsent = unsent;
    reason
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k)
                && stop
                    .as_bytes()
                    .starts_with(&text.as_bytes()[text.len() - k..])
        })
        .unwrap_or(0)
}

impl<R: Runner> Drop for Engine<R> {
    fn drop(&mut self) {
        self.flush();
        for mut s in self.running.drain(..).chain(self.waiting.drain(..)) {
            s.fail("the engine shut down");
        }
    }
}

/// The slices of the plan entries `ks` (indices into `plan`) for a pass.
fn slices<'a>(running: &'a [Seq], plan: &[(usize, usize)], ks: &[usize]) -> Vec<Slice<'a>> {
    ks.iter()
        .map(|&k| {
            let (idx, n) = plan[k];
            let s = &running[idx];
            Slice {
                tokens: &s.tokens[s.computed..s.computed + n],
                pos0: s.computed,
                blocks: &s.table,
                want_logits: s.wants_logits(n),
            }
        })
        .collect()
}

/// The calling thread's processor time in seconds (0 where it cannot be read).
fn thread_cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid pointer to a timespec the call fills.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Costs in plain steps: a pass of n rows 1 + c (n - 1), a draft pass d.
    fn costs(c: f64, d: f64, sizes: &[usize]) -> SpecCosts {
        let mut s = SpecCosts::default();
        for &n in sizes {
            s.note_pass(n, 1.0 + c * (n as f64 - 1.0));
        }
        s.note_draft(d);
        s
    }

    #[test]
    fn proposals_follow_what_passes_and_drafts_cost() {
        let all: Vec<usize> = (1..=17).collect();
        // Nothing timed yet, or no pass of one row: the pace decides.
        assert_eq!(SpecCosts::default().best(0.9, 8), None);
        assert_eq!(costs(0.3, 0.4, &[9]).best(0.9, 8), None);
        // One row timed only: a first probe of two.
        assert_eq!(costs(0.3, 0.4, &[1]).best(0.9, 8), Some(2));
        // Verifying costs about one pass whatever its rows (a device bound by bytes): all
        // eight at a high acceptance.
        assert_eq!(costs(0.0, 0.1, &all).best(0.95, 8), Some(8));
        // Passes of several rows dear (the CPU's arithmetic), a draft at 0.36: few.
        let k = costs(0.34, 0.36, &all).best(0.93, 8).unwrap();
        assert!((2..=3).contains(&k), "{k}");
        // A draft as dear as the model (a GPU bound by launches): one, the least.
        assert_eq!(costs(0.0, 1.0, &all).best(0.9, 8), Some(1));
        // A low acceptance: one.
        assert_eq!(costs(0.1, 0.3, &all).best(0.2, 8), Some(1));
        // Never more than asked.
        assert_eq!(costs(0.0, 0.01, &all).best(0.99, 3), Some(3));
        // Sizes not seen next to the best are tried once: the line through 1 and 9 rows puts
        // the best at a size not yet timed, and a neighbour of it comes first.
        let line = costs(0.34, 0.36, &[1, 9]);
        let k = line.best(0.93, 8).unwrap();
        assert!(k < 8, "{k}");
    }

    #[test]
    fn stop_prefix_holdback() {
        assert_eq!(longest_prefix_suffix("hello wor", "world"), 3);
        assert_eq!(longest_prefix_suffix("hello", "xyz"), 0);
        assert_eq!(longest_prefix_suffix("ab", "abc"), 2);
    }

    #[test]
    fn seq_ids_are_unique() {
        // Engine ids are tested end to end in tests/engine.rs.
        assert_ne!(
            1u64.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            2u64.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
    }
}
