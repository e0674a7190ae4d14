//! `kiln bench`: load time, prefill and decode speed, peak memory.

use std::time::Instant;

use clap::Args;

use crate::common::{load, peak_rss_mb, ModelArgs};

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
    /// Sequences decoded together (each its own copy of the prompt, one batched pass per
    /// step): aggregate tokens per second.
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

/// Runs `kiln bench`.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let t_start = Instant::now();
    let m = load(&a.model, true)?;
    let load_s = t_start.elapsed().as_secs_f64();
    let cfg = &m.model.cfg;
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
    // A realistic prompt: English text, repeated to the length asked for.
    let seed_text = "The quick brown fox jumps over the lazy dog while the scientist explains, \
                     step by step, why the sky is blue and how light scatters in the air. ";
    let base = m.tokenizer.encode(seed_text, false, false);
    let prompt: Vec<u32> = base.iter().cycle().take(a.prompt_tokens).copied().collect();

    if a.batch == 0 || a.batch > 1024 {
        anyhow::bail!("--batch must be between 1 and 1024");
    }
    if a.prefill_chunk == Some(0) {
        anyhow::bail!("--prefill-chunk must be at least 1");
    }
    let gpu = a.model.device != kiln_model::device::DeviceKind::Cpu;
    let chunk = a
        .prefill_chunk
        .unwrap_or(if gpu {
            a.prompt_tokens
        } else {
            kiln_model::generate::PREFILL_CHUNK
        })
        .clamp(1, a.prompt_tokens);
    let blocks_per_seq = total.div_ceil(kiln_model::KV_BLOCK);
    let mut pool = m.model.new_kv_pool(blocks_per_seq * a.batch)?;
    let mut st = m.model.new_state(chunk.max(a.batch), a.batch)?;
    // A warm-up with the same prompt (kernel loading, matrix-library set-up for these shapes,
    // recorded decode passes), outside the figures.
    let warm = (a.prompt_tokens, a.gen_tokens.min(8));
    run_passes(
        &m.model,
        &mut st,
        &mut pool,
        &prompt[..warm.0],
        warm.1,
        a.batch,
        chunk,
        blocks_per_seq,
    )?;
    let (prefill_s, decode_s) = run_passes(
        &m.model,
        &mut st,
        &mut pool,
        &prompt,
        a.gen_tokens,
        a.batch,
        chunk,
        blocks_per_seq,
    )?;
    let gpu_memory = gpu_memory(&m, total);
    let breakdown = if a.breakdown {
        Some(decode_breakdown(&m, &prompt, a.gen_tokens)?)
    } else {
        None
    };
    let prefill_tok_s = (a.prompt_tokens * a.batch) as f64 / prefill_s;
    let decode_tok_s = (a.gen_tokens * a.batch) as f64 / decode_s;
    let rss = peak_rss_mb().unwrap_or(f64::NAN);
    let backend = kiln_model::Backend::describe(&m.model.backend);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": m.name,
                "backend": backend,
                "prompt_tokens": a.prompt_tokens,
                "gen_tokens": a.gen_tokens,
                "batch": a.batch,
                "prefill_chunk": chunk,
                "load_s": load_s,
                "prefill_tok_s": prefill_tok_s,
                "decode_tok_s": decode_tok_s,
                "peak_rss_mb": rss,
                "breakdown": breakdown,
                "gpu_memory": gpu_memory,
            })
        );
    } else {
        println!("model     {} on {backend}", m.name);
        println!("load      {load_s:>10.3} s");
        println!(
            "prefill   {prefill_tok_s:>10.1} tok/s  ({} tokens)",
            a.prompt_tokens
        );
        println!(
            "decode    {decode_tok_s:>10.1} tok/s  ({} tokens x {} sequences)",
            a.gen_tokens, a.batch
        );
        if let Some(g) = &gpu_memory {
            println!("GPU memory (MiB):");
            for (k, v) in g.as_object().into_iter().flatten() {
                println!("  {k:<22} {:>10.1}", v.as_f64().unwrap_or(f64::NAN));
            }
        }
        println!("peak RSS  {rss:>10.1} MiB");
        if let Some(b) = &breakdown {
            println!("decode time by component:");
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

/// Decodes `gen` tokens after `prompt` again with per-component timing on; returns each
/// component's seconds and share of the total.
fn decode_breakdown(
    m: &kiln_model::loader::LoadedModel<kiln_model::device::Device>,
    prompt: &[u32],
    gen: usize,
) -> anyhow::Result<serde_json::Value> {
    let total = prompt.len() + gen;
    let mut kv = m.model.new_kv(total)?;
    let chunk = kiln_model::generate::PREFILL_CHUNK;
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
        let next = kiln_model::sampler::argmax(&st.logits);
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

/// Prefills `batch` copies of `prompt` (chunks of `chunk` tokens, one sequence at a time),
/// then decodes `gen` tokens for all of them in lockstep, greedily; returns the seconds of
/// each phase.
#[allow(clippy::too_many_arguments)]
fn run_passes(
    model: &kiln_model::Model<kiln_model::device::Device>,
    st: &mut kiln_model::State<kiln_model::device::Device>,
    pool: &mut kiln_model::device::DevPool,
    prompt: &[u32],
    gen: usize,
    batch: usize,
    chunk: usize,
    blocks_per_seq: usize,
) -> anyhow::Result<(f64, f64)> {
    use kiln_model::{Logits, SeqInput};
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|b| ((b * blocks_per_seq) as u32..((b + 1) * blocks_per_seq) as u32).collect())
        .collect();
    let t0 = Instant::now();
    let mut next = vec![0u32; batch];
    for (b, table) in tables.iter().enumerate() {
        let mut pos = 0;
        for c in prompt.chunks(chunk) {
            let seq = SeqInput {
                tokens: c,
                pos0: pos,
                blocks: table,
                want_logits: pos + c.len() == prompt.len(),
            };
            model.forward_batch(st, pool, &[seq], Logits::Greedy)?;
            pos += c.len();
        }
        next[b] = st.argmax[0];
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..gen {
        let pos = prompt.len() + i;
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let seqs: Vec<SeqInput<'_>> = toks
            .iter()
            .zip(&tables)
            .map(|(t, table)| SeqInput {
                tokens: t,
                pos0: pos,
                blocks: table,
                want_logits: true,
            })
            .collect();
        model.forward_batch(st, pool, &seqs, Logits::Greedy)?;
        next.copy_from_slice(&st.argmax);
    }
    Ok((prefill_s, t1.elapsed().as_secs_f64()))
}

/// On a GPU: memory taken by the weights and by the KV cache (per 1,000 tokens and for one
/// sequence at full context), and in use on the device now.
fn gpu_memory(
    m: &kiln_model::loader::LoadedModel<kiln_model::device::Device>,
    _positions: usize,
) -> Option<serde_json::Value> {
    #[cfg(feature = "cuda")]
    {
        let g = m.model.backend.cuda()?;
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        let per_block = m.model.kv_block_bytes() as f64;
        let per_tok = per_block / kiln_model::KV_BLOCK as f64;
        let (used, total) = g.memory_used().unwrap_or((0, 0));
        Some(serde_json::json!({
            "weights": mib(g.weight_bytes()),
            "kv_per_1k_tokens": per_tok * 1000.0 / (1024.0 * 1024.0),
            "kv_full_context": per_tok * m.model.cfg.context_length as f64 / (1024.0 * 1024.0),
            "device_in_use": mib(used),
            "device_total": mib(total),
        }))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = m;
        None
    }
}
