//! `kiln irp`: answer one question by iterative refinement, score it with SNARC and store it;
//! and `kiln chat --refine`, the same for every turn of a conversation.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use kiln_irp::{
    score_and_store_with_model, Device, EngineGenerator, Irp, Memory, NewExchange, Profile,
    RefineResult, Refiner,
};
use kiln_server::LoadedLm;
use kiln_tokenizer::chat::Message;

use crate::common::ModelArgs;
use kiln_engine::{EngineBuilder, EngineConfig};

/// Which profile, with what changes.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// `edge`, `desktop`, `research`, or a YAML file (keys left out take the desktop values).
    #[arg(long, default_value = "desktop")]
    pub profile: String,
    /// Override the profile's mode: `independent` (one batch) or `refine` (sequential).
    #[arg(long)]
    pub mode: Option<String>,
    /// Override the profile's energy function: `model` or `heuristic`.
    #[arg(long)]
    pub energy: Option<String>,
    /// Override any profile key, as `KEY=VALUE` (repeatable), e.g. `--set max_tokens=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ProfileArgs {
    /// The profile with the command-line overrides applied and checked.
    pub fn resolve(&self) -> anyhow::Result<Profile> {
        let mut p = Profile::load(&self.profile)?;
        let mut sets: Vec<(String, String)> = Vec::new();
        if let Some(m) = &self.mode {
            sets.push(("mode".into(), m.clone()));
        }
        if let Some(e) = &self.energy {
            sets.push(("energy".into(), e.clone()));
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
            sets.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        for (k, v) in &sets {
            p.set(k, v, "the command line")?;
        }
        p.check("the command line")?;
        Ok(p)
    }
}

/// Arguments of `kiln irp`.
#[derive(Args, Debug)]
pub struct IrpArgs {
    /// The question (read from standard input when absent).
    pub question: Option<String>,
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub lm: ModelArgs,
    /// A system message placed before the question.
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object instead of the answer.
    #[arg(long)]
    pub json: bool,
    /// The memory file [default: $KILN_MEMORY or ~/.local/share/kiln/memory.db].
    #[arg(long)]
    pub memory: Option<PathBuf>,
    /// When a stored exchange is on disk: full (durable across a power cut) or normal
    /// (across a killed process; faster commits).
    #[arg(long, value_enum, default_value_t = MemorySync::Full, conflicts_with = "no_memory")]
    pub memory_sync: MemorySync,
    /// Score the exchange but do not store it.
    #[arg(long)]
    pub no_memory: bool,
    /// Decode `independent` candidates one at a time (the sequential reference; same answer).
    #[arg(long)]
    pub sequential: bool,
}

/// Starts an engine sized for `p`'s candidates, on the device asked for or else the
/// profile's.
/// With `--draft`, the profile's candidates speculate with the draft model: `--draft-max`
/// tokens a step, unless the profile sets `draft_max`. A profile's `draft_max` without a
/// draft model is refused.
pub fn speculate(p: &mut Profile, lm: &ModelArgs) -> anyhow::Result<()> {
    match (&lm.draft, p.draft_max) {
        (Some(_), 0) => p.draft_max = lm.draft_max(),
        (None, n) if n > 0 => anyhow::bail!(
            "the profile's draft_max is {n} but no draft model was given: add --draft MODEL"
        ),
        _ => {}
    }
    Ok(())
}

pub fn start(lm: &ModelArgs, p: &Profile) -> anyhow::Result<LoadedLm> {
    let mut lm = lm.clone();
    if lm.device.is_none() && p.device == Device::Cuda {
        lm.device = Some(kiln_engine::device::DeviceKind::Cuda(0));
    }
    let builder = EngineBuilder {
        max_memory_bytes: p.max_memory_mb.saturating_mul(1 << 20),
        config: EngineConfig {
            max_batch_tokens: 256,
            max_running: p.iterations.max(16),
            max_queue: 256,
            ..Default::default()
        },
    };
    crate::common::start(&lm, &builder, false)
}

/// `--memory-sync`: when a stored exchange is on disk.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemorySync {
    /// Every commit reaches the disk (SQLite `synchronous=FULL`): durable across a power cut.
    #[default]
    Full,
    /// Durable across a killed process, not a power cut (`synchronous=NORMAL`): a stored
    /// exchange about 6 times faster on this machine's disk (docs/PERF.md).
    Normal,
}

/// Opens the memory file named on the command line or the default one.
pub fn open_memory(path: Option<&PathBuf>, sync: MemorySync) -> anyhow::Result<Memory> {
    let p = path.cloned().unwrap_or_else(kiln_irp::memory::default_path);
    let opts = kiln_irp::OpenOptions {
        full_sync: sync == MemorySync::Full,
        ..Default::default()
    };
    Ok(Memory::open_with(&p, opts)?)
}

/// Refines `question` with `lm`.
pub fn refine(
    lm: &LoadedLm,
    p: &Profile,
    question: &str,
    context: &[Message],
    sequential: bool,
) -> anyhow::Result<RefineResult> {
    let mut irp = Irp::new(
        p.clone(),
        EngineGenerator {
            engine: &lm.engine,
            tokenizer: &lm.tokenizer,
            template: &lm.template,
        },
    );
    irp.batch = !sequential;
    Ok(irp.run(question, context)?)
}

/// Runs `kiln irp`.
pub fn irp(a: IrpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut p = a.profile.resolve()?;
    speculate(&mut p, &a.lm)?;
    let question = match &a.question {
        Some(q) => q.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s.trim().to_owned()
        }
    };
    if question.is_empty() {
        anyhow::bail!("the question is empty");
    }
    // Open the store first: a locked or corrupt file should fail before the model loads.
    let mut memory = if a.no_memory {
        None
    } else {
        Some(open_memory(a.memory.as_ref(), a.memory_sync)?)
    };
    let t = Instant::now();
    let lm = start(&a.lm, &p)?;
    let load_s = t.elapsed().as_secs_f64();
    let context: Vec<Message> = a
        .system
        .iter()
        .map(|s| Message::new("system", s.clone()))
        .collect();
    let r = refine(&lm, &p, &question, &context, a.sequential)?;
    // Surprise: how unexpected the question is after the last three stored exchanges.
    let past = match memory.as_ref() {
        Some(m) => m.recent_exchanges(3)?,
        None => Vec::new(),
    };
    let conv = kiln_irp::conversation(&context, &past);
    let gen = EngineGenerator {
        engine: &lm.engine,
        tokenizer: &lm.tokenizer,
        template: &lm.template,
    };
    let rec = score_and_store_with_model(
        &p,
        memory.as_mut(),
        &NewExchange {
            source: "irp",
            session: None,
            question: &question,
            answer: &r.answer,
            irp: Some(&r.info),
        },
        &conv,
        &gen,
    )?;
    let total_s = started.elapsed().as_secs_f64();
    let i = &r.info;
    if a.json {
        let v = serde_json::json!({
            "answer": r.answer,
            "iterations": i.iterations,
            "energies": i.energies,
            "temperatures": i.temperatures,
            "best_index": i.best_index,
            "best_energy": i.best_energy,
            "halt_reason": i.halt_reason,
            "energy_terms": i.energy_terms,
            "timings": {
                "load_s": load_s,
                "prefill_s": i.timings.prefill_s,
                "decode_s": i.timings.decode_s,
                "energy_s": i.timings.energy_s,
                "snarc_s": rec.seconds,
                "refine_s": i.timings.total_s,
                "total_s": total_s,
            },
            "snarc": rec.snarc.to_json(),
            "profile": i.profile,
            "mode": i.mode,
            "energy": i.energy,
            "candidates": i.candidates,
            "decoded": i.decoded,
            "prompt_tokens": i.prompt_tokens,
            "completion_tokens": i.completion_tokens,
            "thermal_c": i.thermal_c,
            "memory": {
                "id": rec.id,
                "path": memory.as_ref().map(|m| m.path().display().to_string()),
            },
        });
        println!("{v}");
    } else {
        println!("{}", r.answer);
        eprintln!("kiln: {}", summary(&r, &rec));
        if let (Some(id), Some(m)) = (rec.id, &memory) {
            eprintln!("kiln: stored as #{id} in {}", m.path().display());
        }
    }
    lm.engine.shutdown();
    Ok(())
}

fn summary(r: &RefineResult, rec: &kiln_irp::Recorded) -> String {
    let i = &r.info;
    format!(
        "{} candidate(s) [{}], halt {}, best #{} energy {:.3}; salience {:.3}{} ({:.1} s)",
        i.iterations,
        i.energies
            .iter()
            .map(|e| format!("{e:.3}"))
            .collect::<Vec<_>>()
            .join(" "),
        i.halt_reason,
        i.best_index,
        i.best_energy,
        rec.snarc.total,
        if rec.snarc.salient { " salient" } else { "" },
        i.timings.total_s
    )
}

/// `kiln chat --refine PROFILE`: every turn refined, scored and stored; the last
/// `history_exchanges` exchanges are the context.
pub fn chat_refined(
    spec: &str,
    model: &ModelArgs,
    system: Option<&str>,
    memory: Option<&PathBuf>,
    sync: MemorySync,
) -> anyhow::Result<()> {
    let mut p = ProfileArgs {
        profile: spec.to_owned(),
        mode: None,
        energy: None,
        set: Vec::new(),
    }
    .resolve()?;
    speculate(&mut p, model)?;
    let mut store = open_memory(memory, sync)?;
    let lm = start(model, &p)?;
    let session = format!(
        "chat-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        std::process::id()
    );
    eprintln!(
        "kiln: refined chat (profile {}, {} mode, up to {} candidates; memory {}) — /reset to start over, /exit to quit",
        p.name,
        match p.mode {
            kiln_irp::Mode::Independent => "independent",
            kiln_irp::Mode::Refine => "refine",
        },
        p.iterations,
        store.path().display()
    );
    let gen = EngineGenerator {
        engine: &lm.engine,
        tokenizer: &lm.tokenizer,
        template: &lm.template,
    };
    let mut history: Vec<(String, String)> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let q = line.trim();
        match q {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                eprintln!("kiln: conversation cleared");
                continue;
            }
            _ => {}
        }
        let context = context_for(&lm, &p, system, &history, q);
        let r = refine(&lm, &p, q, &context, false)?;
        let rec = score_and_store_with_model(
            &p,
            Some(&mut store),
            &NewExchange {
                source: "chat",
                session: Some(&session),
                question: q,
                answer: &r.answer,
                irp: Some(&r.info),
            },
            &context,
            &gen,
        )?;
        writeln!(out, "{}", r.answer)?;
        out.flush()?;
        eprintln!(
            "kiln: {}; stored #{}",
            summary(&r, &rec),
            rec.id.unwrap_or_default()
        );
        history.push((q.to_owned(), r.answer));
    }
    lm.engine.shutdown();
    Ok(())
}

/// The system message and the last `history_exchanges` exchanges, fewer if the prompt would
/// not leave room for an answer (and, in refine mode, a draft) in the context.
fn context_for(
    lm: &LoadedLm,
    p: &Profile,
    system: Option<&str>,
    history: &[(String, String)],
    q: &str,
) -> Vec<Message> {
    let mut keep = history.len().min(p.history_exchanges);
    loop {
        let mut msgs: Vec<Message> = system.iter().map(|s| Message::new("system", *s)).collect();
        for (hq, ha) in &history[history.len() - keep..] {
            msgs.push(Message::new("user", hq.clone()));
            msgs.push(Message::new("assistant", ha.clone()));
        }
        let mut probe = msgs.clone();
        probe.push(Message::new("user", q));
        let n = lm
            .template
            .encode(&lm.tokenizer, &probe, true)
            .map_or(usize::MAX, |ids| ids.len());
        if keep == 0 || n + 2 * p.max_tokens < lm.context_length {
            return msgs;
        }
        keep -= 1;
    }
}
