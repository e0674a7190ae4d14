//! `kiln memory`: look into the store of refined exchanges and export the salient ones.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::irp::{open_memory, MemorySync};

/// Arguments of `kiln memory`.
#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// The memory file [default: $KILN_MEMORY or ~/.local/share/kiln/memory.db].
    #[arg(long, global = true)]
    pub memory: Option<PathBuf>,
    /// When a stored exchange is on disk: full (durable across a power cut) or normal
    /// (across a killed process; faster commits).
    #[arg(long, global = true, value_enum, default_value_t = MemorySync::Full)]
    pub memory_sync: MemorySync,
    #[command(subcommand)]
    pub command: MemoryCommand,
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Chat-format JSON lines: `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`.
    Jsonl,
}

/// What to do with the store.
#[derive(Subcommand, Debug)]
pub enum MemoryCommand {
    /// Counts, salience means and file size.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The newest exchanges.
    List {
        /// How many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Only salient ones.
        #[arg(long)]
        salient: bool,
        /// Print JSON lines with every field.
        #[arg(long)]
        json: bool,
    },
    /// Exchanges similar to a query (words in common; verbatim matches first).
    Search {
        /// What to look for.
        query: String,
        /// How many.
        #[arg(long, short = 'n', default_value_t = 10)]
        limit: usize,
        /// Print JSON lines with every field.
        #[arg(long)]
        json: bool,
    },
    /// Write exchanges for fine-tuning (a LoRA "sleep cycle").
    Export {
        /// Only salient exchanges.
        #[arg(long)]
        salient: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Output file (standard output when absent).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Time SNARC scoring and storing of synthetic exchanges in a scratch file next to the
    /// memory file (which is left untouched), with `synchronous=FULL` and `NORMAL`.
    Bench {
        /// Exchanges to store.
        #[arg(long, short = 'n', default_value_t = 500)]
        n: usize,
    },
}

fn clip(s: &str, n: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n - 1).collect::<String>())
    }
}

/// Runs `kiln memory`.
pub fn memory(a: MemoryArgs) -> anyhow::Result<()> {
    if let MemoryCommand::Bench { n } = a.command {
        return bench(a.memory.as_ref(), n);
    }
    let m = open_memory(a.memory.as_ref(), a.memory_sync)?;
    let mut out = std::io::stdout().lock();
    match a.command {
        MemoryCommand::Stats { json } => {
            let s = m.stats()?;
            if json {
                writeln!(out, "{}", serde_json::to_string(&s)?)?;
            } else {
                writeln!(
                    out,
                    "file        {} ({:.1} KiB)",
                    s.path,
                    s.bytes as f64 / 1024.0
                )?;
                writeln!(out, "exchanges   {}", s.exchanges)?;
                writeln!(out, "salient     {}", s.salient)?;
                if let Some(v) = s.mean_salience {
                    writeln!(out, "mean total  {v:.3}")?;
                }
                if let Some(d) = s.mean_scores {
                    writeln!(
                        out,
                        "mean S/N/A/R/C  {:.3} {:.3} {:.3} {:.3} {:.3}",
                        d[0], d[1], d[2], d[3], d[4]
                    )?;
                }
            }
        }
        MemoryCommand::List {
            limit,
            salient,
            json,
        } => {
            for x in m.list(limit, salient)? {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&x)?)?;
                } else {
                    writeln!(
                        out,
                        "#{:<5} {:.3}{} [{}] {}  ->  {}",
                        x.id,
                        x.snarc.total,
                        if x.salient { "*" } else { " " },
                        x.source,
                        clip(&x.question, 50),
                        clip(&x.answer, 60)
                    )?;
                }
            }
        }
        MemoryCommand::Search { query, limit, json } => {
            for (x, sim) in m.search(&query, limit)? {
                if json {
                    let mut v = serde_json::to_value(&x)?;
                    v["similarity"] = serde_json::json!(sim);
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(
                        out,
                        "#{:<5} sim {:.2}  {}  ->  {}",
                        x.id,
                        sim,
                        clip(&x.question, 50),
                        clip(&x.answer, 60)
                    )?;
                }
            }
        }
        MemoryCommand::Export {
            salient,
            format: Format::Jsonl,
            output,
        } => {
            let n = match &output {
                Some(p) => {
                    let f = std::fs::File::create(p)
                        .map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let n = m.export_jsonl(&mut w, salient)?;
                    w.flush()?;
                    n
                }
                None => m.export_jsonl(&mut out, salient)?,
            };
            eprintln!(
                "kiln: exported {n} {}exchange(s){}",
                if salient { "salient " } else { "" },
                output
                    .map(|p| format!(" to {}", p.display()))
                    .unwrap_or_default()
            );
        }
        MemoryCommand::Bench { .. } => {}
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Scores and stores `n` synthetic exchanges, timing each phase.
fn bench(memory: Option<&PathBuf>, n: usize) -> anyhow::Result<()> {
    use kiln_irp::{Exchange, Memory, NewExchange, OpenOptions, SnarcConfig};
    use std::time::Instant;
    let base = memory
        .cloned()
        .unwrap_or_else(kiln_irp::memory::default_path);
    let dir = base
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."))
        .join(format!("bench-{}", std::process::id()));
    let topics = [
        "the sky",
        "volcanoes",
        "photosynthesis",
        "prime numbers",
        "black holes",
        "honey bees",
        "the French revolution",
        "neural networks",
        "tides",
        "rust programming",
    ];
    let cfg = SnarcConfig::default();
    let mut report = Vec::new();
    for full_sync in [true, false] {
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("bench.db");
        let mut m = Memory::open_with(
            &path,
            OpenOptions {
                full_sync,
                ..Default::default()
            },
        )?;
        let (mut score_t, mut store_t, mut both_t) = (Vec::new(), Vec::new(), Vec::new());
        let mut recent: Vec<String> = Vec::new();
        for i in 0..n {
            let topic = topics[i % topics.len()];
            let q = format!("Why does {topic} matter, and how would you explain it simply? ({i})");
            let a = format!(
                "{topic} matters because it shapes what we see every day. In short: it follows simple rules, \
                 and those rules add up to something large. Exchange {i}."
            );
            let t = Instant::now();
            let scored = m.score(
                &cfg,
                &Exchange {
                    question: &q,
                    answer: &a,
                    final_energy: Some(0.4),
                    recent_questions: &recent,
                },
            );
            let t1 = t.elapsed().as_secs_f64();
            m.store(
                &NewExchange {
                    source: "bench",
                    session: None,
                    question: &q,
                    answer: &a,
                    irp: None,
                },
                &scored,
            )?;
            let t2 = t.elapsed().as_secs_f64();
            score_t.push(t1);
            store_t.push(t2 - t1);
            both_t.push(t2);
            recent.push(q);
        }
        let score_med = median(&mut score_t);
        let store_med = median(&mut store_t);
        let both_med = median(&mut both_t);
        let both_p90 = both_t[both_t.len() * 9 / 10];
        report.push(serde_json::json!({
            "synchronous": if full_sync { "FULL" } else { "NORMAL" },
            "exchanges": n,
            "score_median_us": score_med * 1e6,
            "store_median_us": store_med * 1e6,
            "score_and_store_median_us": both_med * 1e6,
            "score_and_store_p90_us": both_p90 * 1e6,
        }));
        drop(m);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::Value::Array(report));
    Ok(())
}
