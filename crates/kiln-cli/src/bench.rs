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
    }
    Ok(())
}
