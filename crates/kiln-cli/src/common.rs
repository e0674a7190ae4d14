//! Options and steps shared by the subcommands.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kiln_engine::device::{DevOptions, Device, DeviceKind, DeviceOptions, GpuWeights};
use kiln_model::loader::{LoadOptions, LoadedModel};
use kiln_model::quantize::QuantType;
use kiln_model::{Backend, ModelConfig};
use std::sync::Arc;

use kiln_engine::{
    EngineBuilder, EngineConfig, EngineHandle, Event, FinishReason, Request, SamplingParams, Usage,
};
use kiln_server::LoadedLm;

/// Which model and how to run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face model folder (config.json, *.safetensors, tokenizer.json),
    /// a Hub repo id such as Qwen/Qwen2.5-0.5B-Instruct[@REVISION], or OWNER/NAME/FILE.gguf for
    /// one GGUF file of a repo (taken from the Hugging Face cache, downloaded into it when
    /// missing) [default: SmolLM2-135M-Instruct Q4_1, fetched if missing].
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) to merge
    /// into the model's weights at load time.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Quantize F32/F16/BF16 weights on load: q8_0 or q4_k (rows shorter than 256 values,
    /// or not a multiple of 256, get q8_0).
    #[arg(long, value_parser = parse_quant)]
    pub quantize: Option<QuantType>,
    /// CPU threads (0: one per core, and fewer while other programs take cores and fewer
    /// run faster).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Where to run: cpu, cuda or cuda:N (a build with `--features cuda`) [default: cpu, or
    /// a refinement profile's `device`].
    #[arg(long, value_parser = DeviceKind::parse)]
    pub device: Option<DeviceKind>,
    /// KV cache values: f16 (default) or f32 (twice the memory, no rounding; CPU only).
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv_dtype: kiln_cpu::KvDtype,
    /// On a GPU, how the weight matrices are held: f16 (converted on upload, the fastest
    /// kernels today); quantized (Q4_0, Q4_1, Q4_K and Q8_0 kept in the file's format and
    /// read in place: less memory); q8 or q4 (as quantized, with float matrices quantized to
    /// Q8_0 or Q4_K on load, as --quantize q8_0|q4_k does).
    #[arg(long, default_value = "f16", value_parser = GpuWeights::parse)]
    pub gpu_weights: GpuWeights,
    /// Switches for developers comparing paths, NAME=VALUE, repeatable: cpu-isa=scalar|avx2|
    /// avx512|neon|neon-dot, cpu-exact=1, cpu-pad=1, cuda-fused=0, cuda-graphs=0, cuda-pdl=0, cuda-mvt=0, cuda-fa=0,
    /// cuda-mv-plain=1, cuda-mv1d=0|1, cuda-mvpf=0|1, cuda-mvpre=2|4, cuda-gqa=0|1|all, cuda-qx=0,
    /// cuda-qks=1|2|4|8, cuda-qwide=0, cuda-mvq=0|1|all, cuda-mvts=memory|cluster|none,
    /// cuda-mvtks=1|2|4|8.
    #[arg(long = "dev", value_name = "NAME=VALUE", hide = true, value_parser = parse_dev)]
    pub dev: Vec<String>,
    /// A Jinja chat template file to use instead of the model's own (as transformers
    /// renders them: `messages`, `tools`, `add_generation_prompt`, `bos_token`, `eos_token`).
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// A draft model for speculative decoding: a smaller or more quantized model with the
    /// same tokenizer (a GGUF file, a folder or a Hub repo id), run on the same device. It
    /// proposes up to --draft-max tokens a step, which the model verifies in one pass; the
    /// answer is the one plain decoding gives (sampled: with the same seed).
    #[arg(long)]
    pub draft: Option<String>,
    /// With --draft: most tokens the draft model proposes a step, 1 to 16 (requests to
    /// `kiln serve` may set their own `draft_max`; 0 turns it off).
    #[arg(long, default_value_t = 8, requires = "draft", value_parser = parse_draft_max)]
    pub draft_max: usize,
    /// With --draft, for greedy requests: the draft model stops proposing at a token it gives
    /// less than this probability, 0 to 1 (0: it always proposes --draft-max tokens, or a
    /// request's draft_max).
    #[arg(long, default_value_t = kiln_engine::engine::DRAFT_P_MIN, requires = "draft", value_parser = parse_p_min)]
    pub draft_p_min: f32,
}

impl ModelArgs {
    /// Requests' `draft_max`: --draft-max with a draft model, 0 without.
    pub fn draft_max(&self) -> usize {
        if self.draft.is_some() {
            self.draft_max
        } else {
            0
        }
    }

    /// The type float matrices are quantized to on load: `--quantize`, or what
    /// `--gpu-weights q8|q4` implies (the two must agree when both are given).
    pub fn quantize_on_load(&self) -> anyhow::Result<Option<QuantType>> {
        match (self.quantize, self.gpu_weights.quantize_on_load()) {
            (Some(a), Some(b)) if a != b => anyhow::bail!(
                "--quantize {} and --gpu-weights {} ask for different types; give one",
                a.ggml().name(),
                self.gpu_weights.name()
            ),
            (a, b) => Ok(a.or(b)),
        }
    }

    /// The device asked for (the CPU when none was).
    pub fn device(&self) -> DeviceKind {
        self.device.unwrap_or(DeviceKind::Cpu)
    }

    /// How to open the device.
    pub fn device_options(&self) -> Result<DeviceOptions, String> {
        let mut dev = DevOptions::default();
        for d in &self.dev {
            dev.set(d).map_err(|e| format!("--dev {e}"))?;
        }
        Ok(DeviceOptions {
            threads: self.threads,
            kv_dtype: self.kv_dtype,
            gpu_weights: self.gpu_weights,
            dev,
        })
    }
}

/// `--draft-max`: 1 to 16.
fn parse_draft_max(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=kiln_engine::sampling::MAX_PROMPT_LOOKUP).contains(&n) => Ok(n),
        _ => Err(format!("`{s}`: expected 1 to 16 tokens")),
    }
}

fn parse_p_min(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}`: expected a probability, 0 to 1")),
    }
}

/// One `--dev` switch, checked.
fn parse_dev(s: &str) -> Result<String, String> {
    DevOptions::default().set(s)?;
    Ok(s.to_owned())
}

/// `--kv-dtype`.
pub fn parse_kv(s: &str) -> Result<kiln_cpu::KvDtype, String> {
    kiln_cpu::KvDtype::from_name(s).ok_or_else(|| format!("`{s}`: expected f16 or f32"))
}

fn parse_quant(s: &str) -> Result<QuantType, String> {
    QuantType::from_name(s).ok_or_else(|| format!("`{s}`: expected q8_0 or q4_k"))
}

/// How to pick tokens: the same parameters as an HTTP request's (see `kiln serve`).
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one, in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Divide the logits of tokens seen in the last --repeat-last-n tokens by this (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Subtracted from a token's logit once per earlier occurrence in the answer, in [-2, 2].
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit if it occurs in the answer, in [-2, 2].
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
    /// A string that ends the answer (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Prompt lookup: propose up to N tokens a step from an earlier occurrence of the text's
    /// last tokens, verified in one pass (speculative decoding without a draft model; faster
    /// when the answer repeats its prompt). Greedy only: needs `--temperature 0`. 0: off.
    #[arg(long, default_value_t = 0)]
    pub prompt_lookup: usize,
}

impl SampleArgs {
    /// The engine's sampling parameters, checked; errors name the flag.
    pub fn params(&self) -> anyhow::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed: Some(self.seed),
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            prompt_lookup: self.prompt_lookup,
            ..SamplingParams::default()
        };
        p.validate().map_err(|e| {
            let flag = match e.param {
                "repetition_penalty" => "repeat-penalty".to_owned(),
                other => other.replace('_', "-"),
            };
            anyhow::anyhow!("--{flag}: {}", e.what)
        })?;
        Ok(p)
    }
}

/// The engine's limits and memory budget.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Memory budget in MiB for weights, activations and the KV cache together; requests
    /// that cannot fit wait or are refused.
    #[arg(long, default_value_t = 1024)]
    pub max_memory_mb: usize,
    /// Most tokens (decode and prefill chunks) in one engine step.
    #[arg(long, default_value_t = 256)]
    pub max_batch_tokens: usize,
    /// Most sequences generating at once.
    #[arg(long, default_value_t = 32)]
    pub max_running: usize,
    /// Most requests waiting; more are refused (HTTP 429).
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Speculative decoding (prompt lookup, --draft) only while at most this many sequences
    /// run; beyond, proposals cost more than they save (0: never).
    #[arg(long, default_value_t = 8)]
    pub max_speculative_batch: usize,
}

impl EngineArgs {
    /// The engine builder these arguments describe.
    pub fn builder(&self) -> EngineBuilder {
        EngineBuilder {
            max_memory_bytes: self.max_memory_mb.saturating_mul(1 << 20),
            config: EngineConfig {
                max_batch_tokens: self.max_batch_tokens,
                max_running: self.max_running,
                max_queue: self.max_queue,
                max_speculative_batch: self.max_speculative_batch,
                ..Default::default()
            },
        }
    }
}

/// Loads the model and starts an engine over it (on its own thread) with `builder`'s budget.
pub fn start(args: &ModelArgs, builder: &EngineBuilder, quiet: bool) -> anyhow::Result<LoadedLm> {
    start_with(args, builder.clone(), quiet, |_, _| 0)
}

/// [`start`], with `kv_bytes(config, kv_block_bytes)` added to the budget once the model is
/// known (0: the budget is `builder`'s alone).
fn start_with(
    args: &ModelArgs,
    builder: EngineBuilder,
    quiet: bool,
    kv_bytes: impl FnOnce(&ModelConfig, usize) -> usize,
) -> anyhow::Result<LoadedLm> {
    let (path, device) = open(args, quiet)?;
    kiln_engine::with_backend!(device, b => {
        let m = load_on(args, &path, b, quiet)?;
        start_on(args, m, builder, quiet, kv_bytes)
    })
}

fn start_on<B: Backend>(
    args: &ModelArgs,
    m: LoadedModel<B>,
    mut builder: EngineBuilder,
    quiet: bool,
    kv_bytes: impl FnOnce(&ModelConfig, usize) -> usize,
) -> anyhow::Result<LoadedLm> {
    let weights = weight_bytes(&m);
    let draft = match &args.draft {
        Some(spec) => Some(load_draft(spec, &m, quiet)?),
        None => None,
    };
    builder.config.draft_p_min = args.draft_p_min;
    let extra = kv_bytes(&m.model.cfg, m.model.kv_block_bytes());
    if extra > 0 {
        builder.max_memory_bytes = weights + builder.activation_bytes(&m.model.cfg) + extra;
        if let Some(d) = &draft {
            // The draft's weights, activations and a cache of as many positions.
            let per = m.model.kv_block_bytes().max(1);
            builder.max_memory_bytes += d.weights
                + builder.activation_bytes(&d.model.model.cfg)
                + extra / per * d.model.model.kv_block_bytes();
        }
    }
    let cfg = m.model.cfg.clone();
    let tokenizer = Arc::new(m.tokenizer);
    let (engine, size) = builder
        .build_with_draft(
            m.model,
            tokenizer.clone(),
            weights,
            draft.map(|d| (d.model.model, d.weights)),
        )
        .with_context(|| format!("starting the engine for {}", m.path.display()))?;
    if !quiet {
        eprintln!(
            "kiln: KV cache {} MiB = {} tokens",
            size.kv_bytes >> 20,
            size.kv_tokens
        );
    }
    let id = m
        .path
        .file_stem()
        .filter(|_| m.path.is_file())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| m.name.clone());
    Ok(LoadedLm {
        engine: EngineHandle::spawn(engine),
        tokenizer,
        template: m.template,
        id,
        context_length: cfg.context_length,
        load_s: m.load_s,
    })
}

/// Bytes a loaded model's weights take where they live: a GPU's uploaded copy, or the
/// file's mapping on the CPU.
pub(crate) fn weight_bytes<B: Backend>(m: &LoadedModel<B>) -> usize {
    m.model
        .backend
        .memory()
        .map_or(m.weight_bytes, |d| d.weights)
}

/// A draft model loaded beside its target.
pub(crate) struct Draft<B: Backend> {
    pub(crate) model: LoadedModel<B>,
    /// Bytes its weights take where they live.
    pub(crate) weights: usize,
}

/// Loads the draft model `spec` on `target`'s device (its CPU threads, or its GPU) and
/// checks that it shares the target's tokenizer.
pub(crate) fn load_draft<B: Backend>(
    spec: &str,
    target: &LoadedModel<B>,
    quiet: bool,
) -> anyhow::Result<Draft<B>> {
    let path = kiln_model::hf::resolve(spec, &hub_options(quiet))?;
    let device = target.model.backend.sibling()?;
    if !quiet {
        eprint!("kiln: loading the draft model {} ... ", path.display());
    }
    let m = kiln_model::loader::load(&path, device, &LoadOptions::default())
        .with_context(|| format!("loading the draft model {}", path.display()))?;
    let (t, d) = (&target.tokenizer, &m.tokenizer);
    let differs = (0..t.vocab_size().max(d.vocab_size()) as u32)
        .find(|&id| t.token_text(id) != d.token_text(id));
    if let Some(id) = differs {
        anyhow::bail!(
            "--draft {}: its tokenizer differs from the model's (token {id} is {:?} there and {:?} here); a draft model needs the same tokenizer",
            path.display(),
            d.token_text(id).unwrap_or("absent"),
            t.token_text(id).unwrap_or("absent"),
        );
    }
    if m.model.cfg.vocab_size != target.model.cfg.vocab_size {
        anyhow::bail!(
            "--draft {}: its output has {} tokens and the model's {}",
            path.display(),
            m.model.cfg.vocab_size,
            target.model.cfg.vocab_size
        );
    }
    if !quiet {
        eprintln!(
            "{} ({} layers) in {:.2} s",
            m.name, m.model.cfg.n_layers, m.load_s
        );
    }
    let weights = weight_bytes(&m);
    Ok(Draft { model: m, weights })
}

/// The Hugging Face Hub options of the environment; downloads say nothing with `quiet`.
fn hub_options(quiet: bool) -> kiln_model::hf::HubOptions {
    kiln_model::hf::HubOptions {
        progress: !quiet,
        ..kiln_model::hf::HubOptions::from_env()
    }
}

/// Resolves the model (a path, a Hub repo id, or the default model, fetched if needed) and
/// opens the device it is to run on. The caller then loads it there, generic over the
/// backend, under [`kiln_engine::with_backend!`]: the one place the CLI dispatches on the
/// device.
pub fn open(args: &ModelArgs, quiet: bool) -> anyhow::Result<(PathBuf, Device)> {
    let path = match &args.model {
        Some(spec) => kiln_model::hf::resolve(spec, &hub_options(quiet))?,
        None => kiln_model::fetch::ensure_default_model(!quiet)?,
    };
    let opts = args.device_options().map_err(anyhow::Error::msg)?;
    // Checked before the device opens: the conflict does not depend on it.
    args.quantize_on_load()?;
    let device = Device::open_with(args.device(), &opts)?;
    Ok((path, device))
}

/// Loads the model at `path` on `backend` with the adapter, quantization and chat template
/// `args` ask for.
pub fn load_on<B: Backend>(
    args: &ModelArgs,
    path: &std::path::Path,
    backend: B,
    quiet: bool,
) -> anyhow::Result<LoadedModel<B>> {
    if !quiet {
        eprint!("kiln: loading {} ... ", path.display());
    }
    let opts = LoadOptions {
        lora: args.lora.clone(),
        quantize: args.quantize_on_load()?,
    };
    let mut m = kiln_model::loader::load(path, backend, &opts)
        .with_context(|| format!("loading {}", path.display()))?;
    if let Some(f) = &args.chat_template {
        let source = std::fs::read_to_string(f)
            .with_context(|| format!("reading the chat template {}", f.display()))?;
        m.template = m.template.replaced(&source, &f.display().to_string())?;
    }
    if !quiet {
        eprintln!(
            "{} ({} layers, {} on {}) in {:.2} s",
            m.name,
            m.model.cfg.n_layers,
            m.model.cfg.arch.name(),
            kiln_model::Backend::describe(&m.model.backend),
            m.load_s
        );
        if let Some(l) = &m.lora {
            eprintln!("kiln: merged LoRA adapter {}", l.display());
        }
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        match &m.quantized {
            Some(q) => eprintln!(
                "kiln: weights {:.1} MiB -> {:.1} MiB ({} matrices quantized, {} as q8_0 fallback, {} kept)",
                mib(q.bytes_before),
                mib(q.bytes_after),
                q.quantized,
                q.fallback_q8_0,
                q.kept
            ),
            None => eprintln!("kiln: weights {:.1} MiB", mib(m.weight_bytes)),
        }
    }
    Ok(m)
}

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// What one request through the engine produced.
pub struct Answer {
    /// Generated ids (with the final end token, if one was produced).
    pub ids: Vec<u32>,
    /// The text.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Counts and latencies.
    pub usage: Usage,
}

impl Answer {
    /// Prompt tokens per second (prompt tokens over the time to the first token).
    pub fn prefill_tok_s(&self) -> f64 {
        self.usage.prompt_tokens as f64 / self.usage.time_to_first_token_s.max(1e-9)
    }

    /// Generated tokens per second after the first.
    pub fn decode_tok_s(&self) -> f64 {
        let after = self.usage.completion_tokens.saturating_sub(1);
        let s = self.usage.total_s - self.usage.time_to_first_token_s;
        if after == 0 || s <= 0.0 {
            0.0
        } else {
            after as f64 / s
        }
    }
}

/// Sends one request to the engine and streams its text to `on_text` as it comes; `on_text`
/// returns `false` to cancel the request.
pub fn ask(
    lm: &LoadedLm,
    prompt: Vec<u32>,
    params: SamplingParams,
    constraint: Option<Box<kiln_engine::Constraint>>,
    mut on_text: impl FnMut(&str) -> bool,
) -> anyhow::Result<Answer> {
    let (tx, rx) = std::sync::mpsc::channel();
    lm.engine.submit(
        Request {
            prompt,
            params,
            constraint,
        },
        Box::new(move |e| tx.send(e).is_ok()),
    )?;
    let (mut ids, mut text) = (Vec::new(), String::new());
    for e in rx {
        match e {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                if !t.is_empty() {
                    text.push_str(&t);
                    if !on_text(&t) {
                        // Dropping the receiver cancels the request at the engine's next step.
                        return Ok(Answer {
                            ids,
                            text,
                            finish: FinishReason::Cancelled,
                            usage: Usage::default(),
                        });
                    }
                }
            }
            Event::Done { reason, usage } => {
                return Ok(Answer {
                    ids,
                    text,
                    finish: reason,
                    usage,
                })
            }
            Event::Failed(m) => anyhow::bail!("generation failed: {m}"),
        }
    }
    anyhow::bail!("the engine stopped without finishing the request")
}

/// An engine for one conversation at a time (`kiln run`, `kiln chat`): one sequence, with a
/// KV cache for `positions` positions (capped by the context, 32k at most; `None`: the whole
/// context, for a conversation that grows).
pub fn single(args: &ModelArgs, quiet: bool, positions: Option<usize>) -> anyhow::Result<LoadedLm> {
    let builder = EngineBuilder {
        max_memory_bytes: 0,
        config: EngineConfig {
            max_batch_tokens: 256,
            max_running: 1,
            max_queue: 4,
            ..Default::default()
        },
    };
    start_with(args, builder, quiet, |cfg, per_block| {
        let ctx = cfg.context_length.min(32_768);
        let positions = positions.unwrap_or(ctx).min(ctx) + 2 * kiln_model::KV_BLOCK;
        positions.div_ceil(kiln_model::KV_BLOCK) * per_block
    })
}
