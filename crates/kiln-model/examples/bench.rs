//! The same measurement as `kiln bench`, from the library alone (for comparing against
//! llama.cpp while the CLI is in flux): load time, prefill and decode speed, peak RSS.
//!
//! `cargo run --release -p kiln-model --example bench -- MODEL.gguf THREADS PROMPT GEN`
//! prints one JSON object like `kiln bench --json`.

use std::time::Instant;

use kiln_model::cpu::CpuBackend;
use kiln_model::loader::load_gguf;

/// Peak resident set size of this process, from /proc (Linux), in MiB.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        return Err("usage: bench MODEL.gguf THREADS PROMPT_TOKENS GEN_TOKENS".into());
    }
    let threads: usize = args[1].parse()?;
    let (prompt_tokens, gen_tokens): (usize, usize) = (args[2].parse()?, args[3].parse()?);
    if prompt_tokens == 0 || gen_tokens == 0 {
        return Err("PROMPT_TOKENS and GEN_TOKENS must be at least 1".into());
    }
    let t_start = Instant::now();
    let m = load_gguf(std::path::Path::new(&args[0]), CpuBackend::new(threads))?;
    let load_s = t_start.elapsed().as_secs_f64();
    let seed = "The quick brown fox jumps over the lazy dog while the scientist explains, \
                step by step, why the sky is blue and how light scatters in the air. ";
    let base = m.tokenizer.encode(seed, false, false);
    let prompt: Vec<u32> = base.iter().cycle().take(prompt_tokens).copied().collect();
    let total = prompt_tokens + gen_tokens;
    let mut kv = m.model.new_kv(total)?;
    let chunk = kiln_model::generate::PREFILL_CHUNK;
    let mut st = m.model.new_state(prompt_tokens.min(chunk), 1)?;
    let t0 = Instant::now();
    let mut pos = 0;
    for c in prompt.chunks(chunk) {
        m.model.forward(&mut st, &mut kv, c, pos, false)?;
        pos += c.len();
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..gen_tokens {
        let next = kiln_model::sampler::argmax(&st.logits);
        m.model.forward(&mut st, &mut kv, &[next], pos, false)?;
        pos += 1;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    println!(
        "{{\"backend\":\"{}\",\"load_s\":{load_s},\"prefill_tok_s\":{},\"decode_tok_s\":{},\"peak_rss_mb\":{}}}",
        kiln_model::Backend::describe(&m.model.backend),
        prompt_tokens as f64 / prefill_s,
        gen_tokens as f64 / decode_s,
        peak_rss_mb().unwrap_or(f64::NAN)
    );
    Ok(())
}
