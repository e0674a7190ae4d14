//! `kiln bench`: load time, prefill and decode speed, peak memory.

use std::time::Instant;

use clap::Args;
use kiln_engine::{EngineBuilder, EngineConfig, EngineHandle, Event, Request, SamplingParams};
use kiln_model::loader::LoadedModel;
use kiln_model::Backend;

use crate::common::{load_on, open, peak_rss_mb, weight_bytes, ModelArgs};

/// Arguments of `kiln bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(long, short = 'p', default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens to generate.
    #[arg(long, short = 'g', default_value_t = 128)]
    pub gen_tokens: usize,
    /// Sequences decoded together (each its own prompt, submitted at once to the engine that
    /// `kiln serve` runs): aggregate tokens per second.
    #[arg(long, short = 'b', default_value_t = 1)]
    pub batch: usize,
    /// Prompt tokens per prefill pass [default: 256 on the CPU, the whole prompt on a GPU].
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Add the share of decode time per component (embedding, norms, RoPE, attention, FFN,
    /// output head, sampling), timed in a second decode run so the main figures stay clean.
    #[arg(long)]
    pub breakdown: bool,
}

/// Prompt tokens per prefill step on the CPU (the engine's default step size).
const CPU_CHUNK: usize = 256;

/// Runs `kiln bench`: the figures of the engine that `kiln serve` runs.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let t_start = Instant::now();
    let (path, device) = open(&a.model, true)?;
    kiln_engine::with_backend!(device, b => {
        let m = load_on(&a.model, &path, b, true)?;
        bench_on(&a, m, t_start.elapsed().as_secs_f64())
    })
}

fn bench_on<B: Backend>(a: &BenchArgs, m: LoadedModel<B>, load_s: f64) -> anyhow::Result<()> {
    let cfg = m.model.cfg.clone();
    if a.prompt_tokens == 0 || a.gen_tokens == 0 {
        anyhow::bail!("--prompt-tokens and --gen-tokens must be at least 1");
    }
    let total = a.prompt_tokens + a.gen_tokens;
    if total > cfg.context_length {
        anyhow::bail!(
            "--prompt-tokens + --gen-tokens = {total} exceeds the model's context of {}",
            cfg.context_length
        );
    }
    if a.batch == 0 || a.batch > 1024 {
        anyhow::bail!("--batch must be between 1 and 1024");
    }
    if a.prefill_chunk == Some(0) {
        anyhow::bail!("--prefill-chunk must be at least 1");
    }
    // A realistic prompt: English text, repeated to the length asked for.
    let seed_text = "The quick brown fox jumps over the lazy dog while the scientist explains, \
                     step by step, why the sky is blue and how light scatters in the air. ";
    let base = m.tokenizer.encode(seed_text, false, false);
    let prompt: Vec<u32> = base.iter().cycle().take(a.prompt_tokens).copied().collect();
    let gpu = a.model.device() != kiln_engine::device::DeviceKind::Cpu;
    let chunk = a
        .prefill_chunk
        .unwrap_or(if gpu { a.prompt_tokens } else { CPU_CHUNK })
        .clamp(1, a.prompt_tokens);
    let breakdown = if a.breakdown {
        Some(decode_breakdown(&m, &prompt, a.gen_tokens)?)
    } else {
        None
    };
    let gpu_memory = gpu_memory(&m, total);
    let draft = match &a.model.draft {
        Some(spec) => Some(crate::common::load_draft(spec, &m, true)?),
        None => None,
    };
    // The engine that `kiln serve` runs, with room for every sequence at once; a step takes
    // every decode and a prefill chunk besides.
    let config = EngineConfig {
        max_batch_tokens: if gpu {
            // Every prompt in one step (up to 16k tokens): the batch then decodes in lockstep.
            (a.batch * a.prompt_tokens).min(16_384).max(chunk) + a.batch
        } else {
            chunk + a.batch
        },
        max_running: a.batch,
        max_queue: 4 * a.batch,
        draft_p_min: a.model.draft_p_min,
        ..Default::default()
    };
    let weights = weight_bytes(&m);
    let blocks = 2 * a.batch * (total.div_ceil(kiln_model::KV_BLOCK) + 1);
    let sizing = EngineBuilder {
        max_memory_bytes: 0,
        config,
    };
    let draft_bytes = draft.as_ref().map_or(0, |d| {
        d.weights
            + sizing.activation_bytes(&d.model.model.cfg)
            + blocks * d.model.model.kv_block_bytes()
    });
    let builder = EngineBuilder {
        max_memory_bytes: weights
            + sizing.activation_bytes(&cfg)
            + blocks * m.model.kv_block_bytes()
            + draft_bytes,
        ..sizing
    };
    let name = m.name.clone();
    let backend = kiln_model::Backend::describe(&m.model.backend);
    let tok = std::sync::Arc::new(m.tokenizer);
    let (engine, _) = builder.build_with_draft(
        m.model,
        tok,
        weights,
        draft.map(|d| (d.model.model, d.weights)),
    )?;
    let engine = EngineHandle::spawn(engine);
    // Each sequence its own prompt (its own first token), so that no prefill is served from
    // the prefix cache; `salt` makes a new set.
    let vocab = cfg.vocab_size as u32;
    let prompts = |salt: usize| -> Vec<Vec<u32>> {
        (0..a.batch)
            .map(|i| {
                let mut p = prompt.clone();
                p[0] = (p[0] + (salt * a.batch + i) as u32) % vocab;
                p
            })
            .collect()
    };
    let greedy = SamplingParams {
        ignore_eos: true,
        draft_max: a.model.draft_max(),
        ..SamplingParams::greedy(a.gen_tokens)
    };
    let sampled = SamplingParams {
        ignore_eos: true,
        max_tokens: a.gen_tokens,
        seed: Some(7),
        draft_max: a.model.draft_max(),
        ..SamplingParams::default()
    };
    // Warm-up: kernels, matrix-library set-up, recorded decode steps of this batch shape.
    run_engine(
        &engine,
        &prompts(0),
        &greedy.clone().with_max(8.min(a.gen_tokens)),
    )?;
    run_engine(
        &engine,
        &prompts(1),
        &sampled.clone().with_max(8.min(a.gen_tokens)),
    )?;
    let pre = run_engine(&engine, &prompts(2), &greedy.clone().with_max(1))?;
    let s0 = engine.stats();
    let dec = run_engine(&engine, &prompts(3), &greedy)?;
    let s1 = engine.stats();
    let dec_s = run_engine(&engine, &prompts(4), &sampled)?;
    let s2 = engine.stats();
    engine.shutdown();
    // What speculation did in each decode run (a draft model): proposals taken, and tokens
    // each sequence gained per step of the model (1 without speculation).
    let spec = |a0: &kiln_engine::EngineStats, a1: &kiln_engine::EngineStats| {
        let proposed = a1.draft_tokens - a0.draft_tokens;
        let taken = a1.accepted_tokens - a0.accepted_tokens;
        let steps = (a1.steps - a0.steps).max(1);
        serde_json::json!({
            "proposed_tokens": proposed,
            "accepted_tokens": taken,
            "acceptance": taken as f64 / proposed.max(1) as f64,
            "tokens_per_step": a.gen_tokens as f64 / steps as f64,
            "draft_passes": a1.draft_passes - a0.draft_passes,
        })
    };
    let speculation = a.model.draft.as_ref().map(|_| {
        serde_json::json!({"draft_max": a.model.draft_max(), "greedy": spec(&s0, &s1), "sampled": spec(&s1, &s2)})
    });
    let prefill_tok_s = (a.prompt_tokens * a.batch) as f64 / pre.all_first_s;
    let decode_tok_s = dec.decode_tok_s();
    let decode_sampled_tok_s = dec_s.decode_tok_s();
    let rss = peak_rss_mb().unwrap_or(f64::NAN);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": name,
                "backend": backend,
                "path": "engine",
                "prompt_tokens": a.prompt_tokens,
                "gen_tokens": a.gen_tokens,
                "batch": a.batch,
                "prefill_chunk": chunk,
                "load_s": load_s,
                "prefill_tok_s": prefill_tok_s,
                "decode_tok_s": decode_tok_s,
                "decode_sampled_tok_s": decode_sampled_tok_s,
                "peak_rss_mb": rss,
                "breakdown": breakdown,
                "gpu_memory": gpu_memory,
                "speculation": speculation,
            })
        );
    } else {
        println!("model     {name} on {backend} (the engine `kiln serve` runs)");
        println!("load      {load_s:>10.3} s");
        println!(
            "prefill   {prefill_tok_s:>10.1} tok/s  ({} tokens x {} sequences)",
            a.prompt_tokens, a.batch
        );
        println!(
            "decode    {decode_tok_s:>10.1} tok/s  greedy ({} tokens x {} sequences)",
            a.gen_tokens, a.batch
        );
        println!(
            "decode    {decode_sampled_tok_s:>10.1} tok/s  sampled (temperature 0.7, top-k 40, top-p 0.95)"
        );
        if let Some(sp) = &speculation {
            for kind in ["greedy", "sampled"] {
                let k = &sp[kind];
                println!(
                    "draft     {:>10.1} %    of {} proposed tokens taken, {:.2} tokens per step ({kind})",
                    k["acceptance"].as_f64().unwrap_or(0.0) * 100.0,
                    k["proposed_tokens"],
                    k["tokens_per_step"].as_f64().unwrap_or(0.0)
                );
            }
        }
        if let Some(g) = &gpu_memory {
            println!("GPU memory (MiB):");
            for (k, v) in g.as_object().into_iter().flatten() {
                println!("  {k:<22} {:>10.1}", v.as_f64().unwrap_or(f64::NAN));
            }
        }
        println!("peak RSS  {rss:>10.1} MiB");
        if let Some(b) = &breakdown {
            println!("decode time by component (the model alone, one sequence, greedy):");
            for (k, v) in b.as_object().into_iter().flatten() {
                println!(
                    "  {k:<12} {:>6.1}%  {:>8.3} s",
                    v["share"].as_f64().unwrap_or(0.0) * 100.0,
                    v["s"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}

/// Times of one batch of requests through the engine.
struct Timed {
    /// Seconds from submission until every request had its first token.
    all_first_s: f64,
    /// Seconds from submission until every request ended.
    end_s: f64,
    /// Seconds from submission until the first request ended.
    first_end_s: f64,
    /// When each token arrived, in seconds from submission.
    token_s: Vec<f64>,
}

impl Timed {
    /// Tokens that came while every request was decoding (after the last one's first token,
    /// up to the first one's end), over that time: the decode rate of the whole batch, without
    /// prefill in it and without requests that had already finished.
    fn decode_tok_s(&self) -> f64 {
        let (a, b) = (self.all_first_s, self.first_end_s.min(self.end_s));
        let n = self.token_s.iter().filter(|&&t| t > a && t <= b).count();
        n as f64 / (b - a).max(1e-9)
    }
}

/// Submits one request per prompt at once and waits for all of them.
fn run_engine(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> anyhow::Result<Timed> {
    let t0 = Instant::now();
    let mut rxs = Vec::with_capacity(prompts.len());
    for p in prompts {
        let (tx, rx) = std::sync::mpsc::channel();
        engine.submit(
            Request {
                prompt: p.clone(),
                params: params.clone(),
                constraint: None,
            },
            Box::new(move |e| tx.send((Instant::now(), e)).is_ok()),
        )?;
        rxs.push(rx);
    }
    let (mut first, mut end, mut first_end, mut token_s) = (0f64, 0f64, f64::MAX, Vec::new());
    for rx in rxs {
        let mut got_first = false;
        for (at, e) in rx {
            let s = at.duration_since(t0).as_secs_f64();
            match e {
                Event::Token { .. } => {
                    token_s.push(s);
                    if !got_first {
                        got_first = true;
                        first = first.max(s);
                    }
                }
                Event::Done { .. } => {
                    // The last token's stamp, not the end event's.
                    let last = token_s.last().copied().unwrap_or(s);
                    end = end.max(last);
                    first_end = first_end.min(last);
                    break;
                }
                Event::Failed(m) => anyhow::bail!("a benchmark request failed: {m}"),
            }
        }
    }
    Ok(Timed {
        all_first_s: first,
        end_s: end,
        first_end_s: first_end,
        token_s,
    })
}

/// Decodes `gen` tokens after `prompt` again with per-component timing on; returns each
/// component's seconds and share of the total.
fn decode_breakdown<B: Backend>(
    m: &LoadedModel<B>,
    prompt: &[u32],
    gen: usize,
) -> anyhow::Result<serde_json::Value> {
    let total = prompt.len() + gen;
    let mut kv = m.model.new_kv(total)?;
    let chunk = CPU_CHUNK;
    let mut st = m.model.new_state(prompt.len().min(chunk), 1)?;
    let mut pos = 0;
    for c in prompt.chunks(chunk) {
        m.model.forward(&mut st, &mut kv, c, pos, false)?;
        pos += c.len();
    }
    st.breakdown = Some(kiln_model::Breakdown::default());
    let mut sampling = 0f64;
    for _ in 0..gen {
        let t = Instant::now();
        let next = kiln_model::sample::argmax(&st.logits);
        sampling += t.elapsed().as_secs_f64();
        m.model.forward(&mut st, &mut kv, &[next], pos, false)?;
        pos += 1;
    }
    let b = st.breakdown.unwrap_or_default();
    let parts = [
        ("embedding", b.embedding),
        ("norms", b.norms),
        ("rope", b.rope),
        ("attention", b.attention),
        ("ffn", b.ffn),
        ("output_head", b.output_head),
        ("sampling", sampling),
    ];
    let sum: f64 = parts.iter().map(|p| p.1).sum::<f64>().max(1e-12);
    Ok(serde_json::Value::Object(
        parts
            .iter()
            .map(|&(k, v)| (k.to_owned(), serde_json::json!({"s": v, "share": v / sum})))
            .collect(),
    ))
}

/// On a GPU: memory taken by the weights and by the KV cache (per 1,000 tokens and for one
/// sequence at full context), and in use on the device now.
fn gpu_memory<B: Backend>(m: &LoadedModel<B>, _positions: usize) -> Option<serde_json::Value> {
    let d = m.model.backend.memory()?;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let per_block = m.model.kv_block_bytes() as f64;
    let per_tok = per_block / kiln_model::KV_BLOCK as f64;
    Some(serde_json::json!({
        "weights": mib(d.weights),
        "kv_per_1k_tokens": per_tok * 1000.0 / (1024.0 * 1024.0),
        "kv_full_context": per_tok * m.model.cfg.context_length as f64 / (1024.0 * 1024.0),
        "device_in_use": mib(d.in_use.unwrap_or(0)),
        "device_total": mib(d.total.unwrap_or(0)),
    }))
}
