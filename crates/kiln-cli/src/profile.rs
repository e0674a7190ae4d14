//! `kiln profile`: compare refinement settings over a file of questions (`--compare 3,5,7`),
//! or measure what batching buys in `independent` mode (`--batch-ratio 5`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use kiln_irp::{
    score_and_store_with_model, CandidateSpec, EngineGenerator, Generator, NewExchange,
};
use kiln_tokenizer::chat::Message;
use serde_json::{json, Value};

use crate::common::peak_rss_mb;
use crate::common::ModelArgs;
use crate::irp::{refine, speculate, start, ProfileArgs};

/// Arguments of `kiln profile`.
#[derive(Args, Debug)]
pub struct ProfileCmdArgs {
    /// Iteration counts to compare, e.g. `3,5,7`; the first is the baseline.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<usize>,
    /// A file with one question per line (blank lines and `#` comments skipped).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub lm: ModelArgs,
    /// Folder for `profile-compare.json` and `profile-compare.svg`.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Instead of comparing: time N equal-length candidates decoded as one batch against one
    /// candidate, and print the ratio.
    #[arg(long, value_name = "N")]
    pub batch_ratio: Option<usize>,
    /// `--batch-ratio`: tokens per candidate (end tokens are ignored so all have this length).
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// `--batch-ratio`: repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Instead of running: print the table and write the chart of an earlier
    /// `profile-compare.json`.
    #[arg(long, value_name = "JSON")]
    pub from_json: Option<PathBuf>,
}

/// Runs `kiln profile`.
pub fn profile(a: ProfileCmdArgs) -> anyhow::Result<()> {
    if let Some(n) = a.batch_ratio {
        return batch_ratio(&a, n);
    }
    if let Some(j) = &a.from_json {
        let text =
            std::fs::read_to_string(j).with_context(|| format!("reading {}", j.display()))?;
        let report: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", j.display()))?;
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        let spath = a.out.join("profile-compare.svg");
        std::fs::write(&spath, svg(&report))
            .with_context(|| format!("writing {}", spath.display()))?;
        print!("{}", table(&report));
        eprintln!("kiln: wrote {}", spath.display());
        return Ok(());
    }
    if a.compare.is_empty() {
        anyhow::bail!("give --compare 3,5,7 (iteration counts) or --batch-ratio N");
    }
    let qpath = a
        .questions
        .as_ref()
        .context("--compare needs --questions FILE (one question per line)")?;
    let questions: Vec<String> = std::fs::read_to_string(qpath)
        .with_context(|| format!("reading the questions file {}", qpath.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if questions.is_empty() {
        anyhow::bail!("{} holds no question", qpath.display());
    }
    let mut base = a.profile.resolve()?;
    speculate(&mut base, &a.lm)?;
    let mut configs = Vec::new();
    for &k in &a.compare {
        let mut p = base.clone();
        p.set("iterations", &k.to_string(), "--compare")?;
        configs.push(p);
    }
    let mut sizing = base.clone();
    sizing.iterations = *a.compare.iter().max().unwrap_or(&base.iterations);
    let t = Instant::now();
    let lm = start(&a.lm, &sizing)?;
    let load_s = t.elapsed().as_secs_f64();
    // Warm up caches and threads outside the measurement.
    let mut warm = base.clone();
    warm.iterations = 1;
    warm.max_tokens = 4;
    refine(&lm, &warm, "Hello", &[], false)?;

    let gen = EngineGenerator {
        engine: &lm.engine,
        tokenizer: &lm.tokenizer,
        template: &lm.template,
    };
    let mut results: Vec<Value> = Vec::new();
    for p in &configs {
        eprintln!(
            "kiln: {} iterations over {} questions",
            p.iterations,
            questions.len()
        );
        let mut per_q = Vec::new();
        let (mut prefill, mut decode, mut energy, mut snarc, mut wall) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut energy_at: Vec<(f64, usize)> = vec![(0.0, 0); p.iterations];
        let mut best_at: Vec<(f64, usize)> = vec![(0.0, 0); p.iterations];
        let mut halts: std::collections::BTreeMap<String, usize> = Default::default();
        // Surprise as `kiln irp` measures it: the question after the last three exchanges
        // (here, of this run), so the SNARC phase includes the model's scoring.
        let mut past: Vec<(String, String)> = Vec::new();
        for q in &questions {
            let t = Instant::now();
            let r = refine(&lm, p, q, &[], false)?;
            let conv = kiln_irp::conversation(&[], &past[past.len().saturating_sub(3)..]);
            let rec = score_and_store_with_model(
                p,
                None,
                &NewExchange {
                    source: "profile",
                    session: None,
                    question: q,
                    answer: &r.answer,
                    irp: Some(&r.info),
                },
                &conv,
                &gen,
            )?;
            let secs = t.elapsed().as_secs_f64();
            let i = &r.info;
            prefill += i.timings.prefill_s;
            decode += i.timings.decode_s;
            energy += i.timings.energy_s;
            snarc += rec.seconds;
            wall += secs;
            let mut best = f64::INFINITY;
            for (k, e) in i.energies.iter().enumerate() {
                best = best.min(*e);
                energy_at[k].0 += e;
                energy_at[k].1 += 1;
                best_at[k].0 += best;
                best_at[k].1 += 1;
            }
            *halts.entry(i.halt_reason.to_string()).or_default() += 1;
            per_q.push(json!({
                "question": q,
                "answer": r.answer,
                "iterations": i.iterations,
                "energies": i.energies,
                "best_energy": i.best_energy,
                "halt_reason": i.halt_reason,
                "time_s": secs,
                "completion_tokens": i.completion_tokens,
                "decoded": i.decoded,
                "salience": rec.snarc.total,
            }));
            past.push((q.clone(), r.answer));
        }
        let n = questions.len() as f64;
        let mean = |xs: &[Value], k: &str| {
            xs.iter().filter_map(|v| v[k].as_f64()).sum::<f64>() / xs.len() as f64
        };
        let avg = |v: &[(f64, usize)]| -> Vec<Option<f64>> {
            v.iter()
                .map(|&(s, c)| (c > 0).then(|| s / c as f64))
                .collect()
        };
        results.push(json!({
            "iterations": p.iterations,
            "mean_iterations_run": mean(&per_q, "iterations"),
            "time_per_question_s": wall / n,
            "mean_energy": mean(&per_q, "best_energy"),
            "mean_salience": mean(&per_q, "salience"),
            "halts": halts,
            "phases_per_question_s": {
                "prefill": prefill / n,
                "decode": decode / n,
                "energy": energy / n,
                "snarc": snarc / n,
            },
            "peak_rss_mb": peak_rss_mb(),
            "energy_per_iteration": avg(&energy_at),
            "best_energy_per_iteration": avg(&best_at),
            "per_question": per_q,
        }));
    }
    let base_energy = results[0]["mean_energy"].as_f64().unwrap_or(0.0);
    for r in &mut results {
        let e = r["mean_energy"].as_f64().unwrap_or(0.0);
        r["change_vs_baseline_pct"] = json!(if base_energy > 0.0 {
            100.0 * (e - base_energy) / base_energy
        } else {
            0.0
        });
    }
    let command: Vec<String> = std::env::args().collect();
    let report = json!({
        "command": command.join(" "),
        "model": lm.id,
        "profile": base.name,
        "mode": base.mode,
        "energy": base.energy,
        "max_tokens": base.max_tokens,
        "questions": questions.len(),
        "load_s": load_s,
        "configs": results,
    });
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let jpath = a.out.join("profile-compare.json");
    std::fs::write(&jpath, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", jpath.display()))?;
    let spath = a.out.join("profile-compare.svg");
    std::fs::write(&spath, svg(&report)).with_context(|| format!("writing {}", spath.display()))?;
    print!("{}", table(&report));
    eprintln!("kiln: wrote {} and {}", jpath.display(), spath.display());
    lm.engine.shutdown();
    Ok(())
}

/// The seed's table shape and the phase breakdown, as Markdown.
fn table(r: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model {}, profile {}, {} mode, {} energy, max_tokens {}, {} questions, load {:.2} s\n",
        r["model"].as_str().unwrap_or(""),
        r["profile"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
        r["energy"].as_str().unwrap_or(""),
        r["max_tokens"],
        r["questions"],
        r["load_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        s,
        "| config | iterations run (mean) | time/question | mean energy | change vs baseline | halts |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let configs = r["configs"].as_array().cloned().unwrap_or_default();
    for c in &configs {
        let halts = c["halts"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} iterations | {:.2} | {:.2} s | {:.3} | {:+.1}% | {} |",
            c["iterations"],
            c["mean_iterations_run"].as_f64().unwrap_or(0.0),
            c["time_per_question_s"].as_f64().unwrap_or(0.0),
            c["mean_energy"].as_f64().unwrap_or(0.0),
            c["change_vs_baseline_pct"].as_f64().unwrap_or(0.0),
            halts
        );
    }
    let _ = writeln!(
        s,
        "\n| config | prefill/q | decode/q | energy/q | SNARC/q | peak RSS |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for c in &configs {
        let ph = &c["phases_per_question_s"];
        let _ = writeln!(
            s,
            "| {} iterations | {:.3} s | {:.3} s | {:.1} us | {:.1} us | {} |",
            c["iterations"],
            ph["prefill"].as_f64().unwrap_or(0.0),
            ph["decode"].as_f64().unwrap_or(0.0),
            ph["energy"].as_f64().unwrap_or(0.0) * 1e6,
            ph["snarc"].as_f64().unwrap_or(0.0) * 1e6,
            c["peak_rss_mb"]
                .as_f64()
                .map_or("n/a".into(), |m| format!("{m:.0} MiB"))
        );
    }
    s
}

/// A line chart of the mean candidate energy (solid) and mean best-so-far energy (dashed) at
/// each iteration, one colour per configuration.
fn svg(r: &Value) -> String {
    let configs = r["configs"].as_array().cloned().unwrap_or_default();
    let series = |c: &Value, key: &str| -> Vec<(usize, f64)> {
        c[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.as_f64().map(|e| (i + 1, e)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<f64> = configs
        .iter()
        .flat_map(|c| {
            series(c, "energy_per_iteration")
                .into_iter()
                .chain(series(c, "best_energy_per_iteration"))
                .map(|p| p.1)
        })
        .collect();
    let max_x = configs
        .iter()
        .filter_map(|c| c["iterations"].as_u64())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let lo = (all.iter().copied().fold(1.0, f64::min) - 0.05).max(0.0);
    let hi = (all.iter().copied().fold(0.0, f64::max) + 0.05)
        .min(1.0)
        .max(lo + 0.1);
    let (w, h, l, rm, t, b) = (640.0, 400.0, 60.0, 150.0, 40.0, 50.0);
    let x = |i: f64| l + (i - 1.0) / (max_x - 1.0) * (w - l - rm);
    let y = |e: f64| t + (hi - e) / (hi - lo) * (h - t - b);
    let colours = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{l}" y="22" font-size="14">Energy per iteration ({} energy, {} questions)</text>"#,
        r["energy"].as_str().unwrap_or(""),
        r["questions"]
    );
    // Axes, ticks and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#,
        h - b,
        w - rm,
        h - b,
        h - b
    );
    for i in 1..=(max_x as usize) {
        let xi = x(i as f64);
        let _ = writeln!(
            s,
            r#"<text x="{xi}" y="{}" text-anchor="middle">{i}</text>"#,
            h - b + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">iteration</text>"#,
        (l + w - rm) / 2.0,
        h - 12.0
    );
    for k in 0..=4 {
        let e = lo + (hi - lo) * k as f64 / 4.0;
        let yi = y(e);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{yi}" x2="{}" y2="{yi}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{e:.2}</text>"##,
            w - rm,
            l - 6.0,
            yi + 4.0
        );
    }
    for (ci, c) in configs.iter().enumerate() {
        let col = colours[ci % colours.len()];
        // Configurations share seeds, so their first iterations coincide: shift each a little.
        let dx = (ci as f64 - (configs.len() as f64 - 1.0) / 2.0) * 5.0;
        for (key, dash) in [
            ("energy_per_iteration", ""),
            ("best_energy_per_iteration", r#" stroke-dasharray="5,4""#),
        ] {
            let pts: Vec<String> = series(c, key)
                .iter()
                .map(|&(i, e)| format!("{:.1},{:.1}", x(i as f64) + dx, y(e)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{col}" stroke-width="2"{dash} points="{}"/>"#,
                pts.join(" ")
            );
            for p in &pts {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{col}"/>"#);
            }
        }
        let ly = t + 20.0 * ci as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{col}" stroke-width="2"/><text x="{}" y="{}">{} iterations</text>"#,
            w - rm + 10.0,
            w - rm + 30.0,
            w - rm + 36.0,
            ly + 4.0,
            c["iterations"]
        );
    }
    let ly = t + 20.0 * configs.len() as f64 + 20.0;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{ly}" font-size="11">solid: mean energy</text><text x="{}" y="{}" font-size="11">dashed: best so far</text>"#,
        w - rm + 10.0,
        w - rm + 10.0,
        ly + 14.0
    );
    s.push_str("</svg>\n");
    s
}

/// Times one candidate against `n` candidates of the same length decoded as one batch.
fn batch_ratio(a: &ProfileCmdArgs, n: usize) -> anyhow::Result<()> {
    if n < 2 {
        anyhow::bail!("--batch-ratio needs at least 2 candidates");
    }
    let mut p = a.profile.resolve()?;
    speculate(&mut p, &a.lm)?;
    p.iterations = n;
    let t = Instant::now();
    let lm = start(&a.lm, &p)?;
    let load_s = t.elapsed().as_secs_f64();
    let gen = EngineGenerator {
        engine: &lm.engine,
        tokenizer: &lm.tokenizer,
        template: &lm.template,
    };
    let spec = |i: usize| CandidateSpec {
        messages: vec![Message::new("user", "Why is the sky blue?")],
        params: kiln_engine::SamplingParams {
            max_tokens: a.tokens,
            ignore_eos: true,
            ..p.sampling(i)
        },
    };
    let one = [spec(0)];
    let many: Vec<CandidateSpec> = (0..n).map(spec).collect();
    let time = |specs: &[CandidateSpec]| -> anyhow::Result<f64> {
        let t = Instant::now();
        let g = gen.generate(specs)?;
        anyhow::ensure!(
            g.iter().all(|c| c.tokens == a.tokens),
            "a candidate ended early"
        );
        Ok(t.elapsed().as_secs_f64())
    };
    time(&one)?; // warm-up
    let (mut t1, mut tn) = (Vec::new(), Vec::new());
    for _ in 0..a.repeat.max(1) {
        t1.push(time(&one)?);
        tn.push(time(&many)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (m1, mn) = (median(&mut t1), median(&mut tn));
    let v = json!({
        "model": lm.id,
        "candidates": n,
        "tokens_per_candidate": a.tokens,
        "one_candidate_s": m1,
        "batch_s": mn,
        "ratio": mn / m1,
        "sequential_estimate_ratio": n as f64,
        "load_s": load_s,
        "runs": a.repeat.max(1),
        "one_candidate_runs_s": t1,
        "batch_runs_s": tn,
    });
    println!("{v}");
    lm.engine.shutdown();
    Ok(())
}
