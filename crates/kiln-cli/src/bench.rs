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

    let mut kv = m.model.new_kv(total)?;
    let chunk = kiln_model::generate::PREFILL_CHUNK;
    let mut st = m.model.new_state(a.prompt_tokens.min(chunk), 1)?;
    let t0 = Instant::now();
    let mut pos = 0;
    for c in prompt.chunks(chunk) {
        m.model.forward(&mut st, &mut kv, c, pos, false)?;
        pos += c.len();
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..a.gen_tokens {
        let next = kiln_model::sampler::argmax(&st.logits);
        m.model.forward(&mut st, &mut kv, &[next], pos, false)?;
        pos += 1;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let breakdown = if a.breakdown {
        Some(decode_breakdown(&m, &prompt, a.gen_tokens)?)
    } else {
        None
    };
    let prefill_tok_s = a.prompt_tokens as f64 / prefill_s;
    let decode_tok_s = a.gen_tokens as f64 / decode_s;
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
                "load_s": load_s,
                "prefill_tok_s": prefill_tok_s,
                "decode_tok_s": decode_tok_s,
                "peak_rss_mb": rss,
                "breakdown": breakdown,
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
            "decode    {decode_tok_s:>10.1} tok/s  ({} tokens)",
            a.gen_tokens
        );
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
    m: &kiln_model::loader::LoadedModel<kiln_model::cpu::CpuBackend>,
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
