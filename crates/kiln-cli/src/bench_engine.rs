//! `kiln bench-engine`: the engine under concurrency — aggregate decode throughput with N
//! sequences at once, and time to first token of a short request while a long prompt is
//! being prefilled.

use std::sync::mpsc;
use std::time::Instant;

use clap::Args;
use kiln_engine::{EngineBuilder, EngineConfig, Event, Request, SamplingParams};

use crate::common::{start, ModelArgs};

/// Arguments of `kiln bench-engine`.
#[derive(Args, Debug)]
pub struct BenchEngineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Concurrent sequence counts to measure, comma-separated.
    #[arg(long, default_value = "1,4,8,16", value_delimiter = ',')]
    pub sequences: Vec<usize>,
    /// Prompt tokens of each sequence.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Tokens each sequence generates.
    #[arg(long, short = 'g', default_value_t = 64)]
    pub gen_tokens: usize,
    /// Prompt length of the long request in the time-to-first-token test (0 skips it).
    #[arg(long, default_value_t = 2048)]
    pub long_prompt_tokens: usize,
    /// Most tokens per engine step.
    #[arg(long, default_value_t = 256)]
    pub max_batch_tokens: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn prompt(tok: &kiln_tokenizer::Tokenizer, n: usize, salt: usize) -> Vec<u32> {
    let text = format!(
        "Request {salt}: the committee reviewed the annual report, discussed the budget for the \
         coming year, and asked the engineers to explain how the new system handles load. "
    );
    let base = tok.encode(&text, false, false);
    base.iter().cycle().take(n.max(1)).copied().collect()
}

/// Runs `kiln bench-engine`.
pub fn bench_engine(a: BenchEngineArgs) -> anyhow::Result<()> {
    let max_seq = a.sequences.iter().copied().max().unwrap_or(1).max(2);
    if a.sequences.contains(&0) || a.gen_tokens == 0 {
        anyhow::bail!("--sequences entries and --gen-tokens must be at least 1");
    }
    let builder = EngineBuilder {
        max_memory_bytes: 2048 << 20,
        config: EngineConfig {
            max_batch_tokens: a.max_batch_tokens,
            max_running: max_seq,
            max_queue: 4 * max_seq,
            ..Default::default()
        },
    };
    let lm = start(&a.model, &builder, true)?;
    let tok = lm.tokenizer.clone();
    // Events are stamped when the engine emits them, not when they are read.
    type Stamped = (Instant, Event);
    let submit = |p: Vec<u32>, max_tokens: usize| -> anyhow::Result<mpsc::Receiver<Stamped>> {
        let (tx, rx) = mpsc::channel();
        lm.engine.submit(
            Request {
                prompt: p,
                params: SamplingParams {
                    ignore_eos: true,
                    draft_max: a.model.draft_max(),
                    ..SamplingParams::greedy(max_tokens)
                },
                constraint: None,
            },
            Box::new(move |e| tx.send((Instant::now(), e)).is_ok()),
        )?;
        Ok(rx)
    };
    // Waits for a request's end; returns (first token time, generated tokens).
    let drain = |rx: mpsc::Receiver<Stamped>, t0: Instant| -> anyhow::Result<(f64, usize)> {
        let mut first = None;
        let mut n = 0;
        for (at, e) in rx {
            match e {
                Event::Token { .. } => {
                    n += 1;
                    first.get_or_insert_with(|| at.duration_since(t0).as_secs_f64());
                }
                Event::Done { .. } => break,
                Event::Failed(m) => anyhow::bail!("request failed: {m}"),
            }
        }
        Ok((first.unwrap_or(f64::NAN), n))
    };

    // Warm-up.
    drain(
        submit(prompt(&tok, a.prompt_tokens, 999), 4)?,
        Instant::now(),
    )?;

    let mut rows = Vec::new();
    for &n in &a.sequences {
        let t0 = Instant::now();
        let rxs: Vec<_> = (0..n)
            .map(|i| submit(prompt(&tok, a.prompt_tokens, i), a.gen_tokens))
            .collect::<Result<_, _>>()?;
        let mut total = 0;
        let mut last_first = 0f64;
        for rx in rxs {
            let (first, k) = drain(rx, t0)?;
            total += k;
            last_first = last_first.max(first);
        }
        let wall = t0.elapsed().as_secs_f64();
        // Decode throughput: tokens after every sequence's first, over the time after it.
        let decode_tok = total.saturating_sub(n);
        let decode_s = (wall - last_first).max(1e-9);
        rows.push(serde_json::json!({
            "sequences": n,
            "generated_tokens": total,
            "wall_s": wall,
            "aggregate_tok_s": total as f64 / wall,
            "decode_tok_s": decode_tok as f64 / decode_s,
        }));
    }
    let base = rows
        .first()
        .and_then(|r| r["decode_tok_s"].as_f64())
        .unwrap_or(f64::NAN);
    for r in rows.iter_mut() {
        let x = r["decode_tok_s"].as_f64().unwrap_or(f64::NAN) / base;
        r["speedup_vs_first"] = serde_json::json!(x);
    }

    let mut ttft = serde_json::Value::Null;
    if a.long_prompt_tokens > 0 {
        let short = || prompt(&tok, 16, 7);
        let t0 = Instant::now();
        let (alone, _) = drain(submit(short(), 1)?, t0)?;
        let long_rx = submit(prompt(&tok, a.long_prompt_tokens, 8), 1)?;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let t1 = Instant::now();
        let (loaded, _) = drain(submit(short(), 1)?, t1)?;
        let (long_first, _) = drain(long_rx, t1)?;
        ttft = serde_json::json!({
            "short_alone_s": alone,
            "short_during_long_prefill_s": loaded,
            "long_prompt_tokens": a.long_prompt_tokens,
            "long_first_token_s": long_first,
        });
    }
    lm.engine.shutdown();
    let out = serde_json::json!({
        "device": format!("{:?}", a.model.device()),
        "threads": a.model.threads,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "max_batch_tokens": a.max_batch_tokens,
        "concurrency": rows,
        "ttft": ttft,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("sequences  aggregate tok/s  decode tok/s  vs first");
        for r in out["concurrency"].as_array().into_iter().flatten() {
            println!(
                "{:>9}  {:>15.1}  {:>12.1}  {:>7.2}x",
                r["sequences"],
                r["aggregate_tok_s"].as_f64().unwrap_or(0.0),
                r["decode_tok_s"].as_f64().unwrap_or(0.0),
                r["speedup_vs_first"].as_f64().unwrap_or(0.0)
            );
        }
        if !out["ttft"].is_null() {
            println!(
                "time to first token of a short request: {:.3} s alone, {:.3} s while a {}-token prompt is prefilled (long prompt's first token at {:.3} s)",
                out["ttft"]["short_alone_s"].as_f64().unwrap_or(0.0),
                out["ttft"]["short_during_long_prefill_s"].as_f64().unwrap_or(0.0),
                a.long_prompt_tokens,
                out["ttft"]["long_first_token_s"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
