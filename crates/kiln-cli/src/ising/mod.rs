//! `kiln ising ...`: the command-line shell over the `kiln-ising` library, with its plots
//! ([`plot`]) and benchmark ([`bench`]).
//!
//! Each subcommand builds a JSON value in a pure function (testable without a subprocess) and
//! prints it either as JSON (`--json`) or as `key: value` lines.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

mod bench;
mod plot;

use kiln_ising::anneal::{adaptive_steps, anneal_traced};
use kiln_ising::batch::{default_threads, emotions, swarm_attention};
use kiln_ising::emotion::emotion;
use kiln_ising::empathy::{empathy, fast_estimate, EmpathyOptions, Weights};
use kiln_ising::social::social_attention;
use kiln_ising::system::IsingSystem;

/// Arguments of `kiln ising`.
#[derive(Debug, Clone, Args)]
pub struct IsingArgs {
    /// What to run.
    #[command(subcommand)]
    pub command: IsingCommand,
}

/// The `kiln ising` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum IsingCommand {
    /// Anneal a reference system; report (and optionally plot) energy and magnetization.
    Anneal(AnnealArgs),
    /// Emotion (valence, arousal, tension, coherence) of reference systems.
    Emotion(EmotionArgs),
    /// Empathy of reference system A towards reference system B.
    Empathy(EmpathyArgs),
    /// Social attention of one observer over several agents.
    Social(SocialArgs),
    /// All-pairs social attention of a swarm, spread over all cores.
    Swarm(SwarmArgs),
    /// Time the workloads.
    Bench(BenchArgs),
}

/// Arguments of `kiln ising anneal`.
#[derive(Debug, Clone, Args)]
pub struct AnnealArgs {
    /// Number of spins.
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Seed of the reference system's spins.
    #[arg(long, default_value_t = 0)]
    pub system_seed: u64,
    /// Annealing steps (default: 50 + n / 10).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the anneal.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write an SVG of energy and magnetization over the steps to this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln ising emotion`.
#[derive(Debug, Clone, Args)]
pub struct EmotionArgs {
    /// Number of spins.
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Seed of the first system (system k uses seed + k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of systems.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln ising empathy`.
#[derive(Debug, Clone, Args)]
pub struct EmpathyArgs {
    /// Number of spins of both systems.
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Seed of the observer A's spins.
    #[arg(long, default_value_t = 42)]
    pub seed_a: u64,
    /// Seed of the observed B's spins.
    #[arg(long, default_value_t = 43)]
    pub seed_b: u64,
    /// Annealing steps of the theory of mind (default: 50 + n / 10).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the theory-of-mind anneal.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight preset: balanced or coupling.
    #[arg(long, default_value = "balanced")]
    pub preset: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln ising social`.
#[derive(Debug, Clone, Args)]
pub struct SocialArgs {
    /// Number of spins of every system.
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Seed of the observer's spins.
    #[arg(long, default_value_t = 0)]
    pub observer_seed: u64,
    /// Number of agents.
    #[arg(long, default_value_t = 5)]
    pub agents: usize,
    /// Seed of the first agent's spins (agent k uses agent_seed + k).
    #[arg(long, default_value_t = 1)]
    pub agent_seed: u64,
    /// Annealing steps (default: 50 + n / 10).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Seed of the anneals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight preset: balanced or coupling.
    #[arg(long, default_value = "balanced")]
    pub preset: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the swarm's empathies are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Device {
    /// All CPU cores (`--threads`).
    #[default]
    Cpu,
    /// The first CUDA GPU (needs a kiln built with `--features cuda`); same results, bit for bit.
    Cuda,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// Arguments of `kiln ising swarm`.
#[derive(Debug, Clone, Args)]
pub struct SwarmArgs {
    /// Number of agents (reference systems with seeds 0..agents).
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Number of spins of every agent.
    #[arg(long, default_value_t = 20)]
    pub n: usize,
    /// Annealing steps per empathy.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Base seed (pair (i, j) anneals with a seed derived from it and i, j).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: all cores); with --device cuda, for the host-side preparation only.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to compute the empathies: cpu, or cuda (same results, bit for bit).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// With --device cuda: threads per block of the kernel (a multiple of 32, 32 to 256)
    /// [default: 128].
    #[arg(long, value_parser = parse_block_threads)]
    pub block_threads: Option<u32>,
    /// Weight preset: balanced or coupling.
    #[arg(long, default_value = "balanced")]
    pub preset: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln ising bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Repeats per measurement (the median is reported).
    #[arg(long, default_value_t = 21)]
    pub repeats: usize,
    /// Agents in the swarm benchmark.
    #[arg(long, default_value_t = 200)]
    pub swarm_agents: usize,
    /// Threads for the swarm benchmark (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to run the swarm benchmark: cpu, or cuda (the other benchmarks stay on one CPU thread).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// With --device cuda: threads per block of the kernel (a multiple of 32, 32 to 256)
    /// [default: 128].
    #[arg(long, value_parser = parse_block_threads)]
    pub block_threads: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `kiln ising ...` and prints the result.
pub fn run(args: IsingArgs) -> Result<()> {
    let (value, as_json) = match &args.command {
        IsingCommand::Anneal(a) => (anneal_report(a)?, a.json),
        IsingCommand::Emotion(a) => (emotion_report(a)?, a.json),
        IsingCommand::Empathy(a) => (empathy_report(a)?, a.json),
        IsingCommand::Social(a) => (social_report(a)?, a.json),
        IsingCommand::Swarm(a) => (swarm_report(a)?, a.json),
        IsingCommand::Bench(a) => (bench_report(a)?, a.json),
    };
    let mut out = std::io::stdout().lock();
    let written = if as_json {
        serde_json::to_string_pretty(&value)
            .map_err(std::io::Error::from)
            .and_then(|text| writeln!(out, "{text}"))
    } else {
        print_plain(&mut out, &value, "")
    };
    match written {
        // A closed pipe (`kiln ising ... | head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn print_plain(out: &mut impl Write, v: &Value, prefix: &str) -> std::io::Result<()> {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    Value::Object(_) => print_plain(out, v, &key)?,
                    Value::Array(items) if items.iter().all(|x| x.is_number()) => {
                        let parts: Vec<String> = items.iter().map(fmt_scalar).collect();
                        writeln!(out, "{key}: [{}]", parts.join(", "))?;
                    }
                    Value::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            print_plain(out, item, &format!("{key}[{i}]"))?;
                        }
                    }
                    _ => writeln!(out, "{key}: {}", fmt_scalar(v))?,
                }
            }
        }
        other => writeln!(out, "{prefix}: {}", fmt_scalar(other))?,
    }
    Ok(())
}

fn fmt_scalar(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => n
            .as_f64()
            .map_or_else(|| n.to_string(), |x| format!("{x:.6}")),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn weights(preset: &str) -> Result<Weights> {
    Weights::preset(preset).with_context(|| format!("invalid --preset {preset}"))
}

/// The report of `kiln ising anneal` (also writes the plot when asked).
pub fn anneal_report(a: &AnnealArgs) -> Result<Value> {
    let mut s = IsingSystem::reference(a.n, a.system_seed).context("invalid --n")?;
    let mut trace = Vec::new();
    let t = Instant::now();
    let rep = anneal_traced(&mut s, a.steps, a.seed, &mut trace);
    let elapsed_us = t.elapsed().as_secs_f64() * 1e6;
    let mut v = json!({
        "n": a.n,
        "system_seed": a.system_seed,
        "seed": a.seed,
        "steps": rep.steps,
        "proposals": rep.proposals,
        "accepted": rep.accepted,
        "initial_energy": rep.initial_energy,
        "final_energy": rep.final_energy,
        "initial_magnetization": rep.initial_magnetization,
        "final_magnetization": rep.final_magnetization,
        "emotion": emotion(&s),
        "elapsed_us": elapsed_us,
    });
    if let Some(path) = &a.plot {
        let title = format!(
            "Annealing n = {}, {} steps, seed {}",
            a.n, rep.steps, a.seed
        );
        std::fs::write(path, plot::svg(&trace, &title))
            .with_context(|| format!("writing the plot to {}", path.display()))?;
        v["plot"] = json!(path.display().to_string());
    }
    Ok(v)
}

/// The report of `kiln ising emotion`.
pub fn emotion_report(a: &EmotionArgs) -> Result<Value> {
    anyhow::ensure!(a.count >= 1, "--count must be at least 1");
    let systems: Vec<IsingSystem> = (0..a.count as u64)
        .map(|k| IsingSystem::reference(a.n, a.seed.wrapping_add(k)))
        .collect::<std::result::Result<_, _>>()
        .context("invalid --n")?;
    let em = emotions(&systems, 1);
    if a.count == 1 {
        return Ok(json!({ "n": a.n, "seed": a.seed, "emotion": em[0] }));
    }
    let k = em.len() as f64;
    Ok(json!({
        "n": a.n,
        "seed": a.seed,
        "count": a.count,
        "mean": {
            "valence": em.iter().map(|e| e.valence).sum::<f64>() / k,
            "arousal": em.iter().map(|e| e.arousal).sum::<f64>() / k,
            "tension": em.iter().map(|e| e.tension).sum::<f64>() / k,
            "coherence": em.iter().map(|e| e.coherence).sum::<f64>() / k,
        },
        "emotions": em,
    }))
}

/// The report of `kiln ising empathy`: at least `empathy`, `overlap`, `energy_error`,
/// `coupling_similarity` and `preset`.
pub fn empathy_report(a: &EmpathyArgs) -> Result<Value> {
    let sa = IsingSystem::reference(a.n, a.seed_a).context("invalid --n")?;
    let sb = IsingSystem::reference(a.n, a.seed_b).context("invalid --n")?;
    let w = weights(&a.preset)?;
    let opts = EmpathyOptions {
        steps: a.steps,
        seed: a.seed,
        weights: w,
    };
    let t = Instant::now();
    let e = empathy(&sa, &sb, &opts)?;
    let elapsed_us = t.elapsed().as_secs_f64() * 1e6;
    Ok(json!({
        "empathy": e.score,
        "overlap": e.overlap,
        "energy_error": e.energy_error,
        "mag_error": e.mag_error,
        "coupling_similarity": e.coupling_similarity,
        "fast_estimate": fast_estimate(&sa, &sb)?,
        "preset": w.name(),
        "weights": w,
        "n": a.n,
        "seed_a": a.seed_a,
        "seed_b": a.seed_b,
        "steps": e.steps,
        "seed": a.seed,
        "predicted_energy": e.predicted_energy,
        "target_energy": e.target_energy,
        "elapsed_us": elapsed_us,
    }))
}

/// The report of `kiln ising social`.
pub fn social_report(a: &SocialArgs) -> Result<Value> {
    anyhow::ensure!(a.agents >= 1, "--agents must be at least 1");
    let obs = IsingSystem::reference(a.n, a.observer_seed).context("invalid --n")?;
    let agents: Vec<IsingSystem> = (0..a.agents as u64)
        .map(|k| IsingSystem::reference(a.n, a.agent_seed.wrapping_add(k)))
        .collect::<std::result::Result<_, _>>()
        .context("invalid --n")?;
    let w = weights(&a.preset)?;
    let opts = EmpathyOptions {
        steps: a.steps,
        seed: a.seed,
        weights: w,
    };
    let t = Instant::now();
    let sa = social_attention(&obs, &agents, &opts)?;
    let elapsed_us = t.elapsed().as_secs_f64() * 1e6;
    Ok(json!({
        "weights": sa.weights,
        "empathies": sa.empathies.iter().map(|e| e.score).collect::<Vec<_>>(),
        "uniform": sa.uniform,
        "preset": w.name(),
        "n": a.n,
        "agents": a.agents,
        "steps": a.steps.unwrap_or_else(|| adaptive_steps(a.n)),
        "seed": a.seed,
        "elapsed_us": elapsed_us,
    }))
}

/// The report of `kiln ising swarm`: timing and a summary (the k x k matrix is not printed).
pub fn swarm_report(a: &SwarmArgs) -> Result<Value> {
    anyhow::ensure!(a.agents >= 2, "--agents must be at least 2");
    let threads = a.threads.unwrap_or_else(default_threads).max(1);
    let agents: Vec<IsingSystem> = (0..a.agents as u64)
        .map(|k| IsingSystem::reference(a.n, k))
        .collect::<std::result::Result<_, _>>()
        .context("invalid --n")?;
    let w = weights(&a.preset)?;
    let opts = EmpathyOptions {
        steps: Some(a.steps),
        seed: a.seed,
        weights: w,
    };
    cuda_only(a.block_threads, a.device)?;
    let (sw, secs, device) = match a.device {
        Device::Cpu => {
            let t = Instant::now();
            let sw = swarm_attention(&agents, &opts, threads)?;
            (sw, t.elapsed().as_secs_f64(), json!({}))
        }
        Device::Cuda => swarm_cuda(&agents, &opts, threads, a.block_threads.unwrap_or(128))?,
    };
    let k = sw.agents;
    let off: Vec<f64> = (0..k * k)
        .filter(|&x| x / k != x % k)
        .map(|x| sw.scores[x])
        .collect();
    let mean = off.iter().sum::<f64>() / off.len() as f64;
    let min = off.iter().copied().fold(f64::INFINITY, f64::min);
    let max = off.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut v = json!({
        "agents": k,
        "n": a.n,
        "steps": a.steps,
        "seed": a.seed,
        "threads": threads,
        "pairs": sw.pairs(),
        "seconds": secs,
        "pairs_per_s": sw.pairs() as f64 / secs,
        "mean_empathy": mean,
        "min_empathy": min,
        "max_empathy": max,
        "uniform_rows": sw.uniform_rows,
        "distinct_couplings": sw.distinct_couplings,
        "checksum": format!("{:016x}", checksum(&sw.scores)),
        "preset": w.name(),
        "device": a.device.name(),
    });
    if let (Value::Object(v), Value::Object(extra)) = (&mut v, device) {
        v.extend(extra);
    }
    Ok(v)
}

/// The swarm on the GPU: the swarm, the wall seconds of the computation (device setup excluded),
/// and what the device reports (its name, setup time, kernel time).
#[cfg(feature = "cuda")]
fn swarm_cuda(
    agents: &[IsingSystem],
    opts: &EmpathyOptions,
    threads: usize,
    block_threads: u32,
) -> Result<(kiln_ising::batch::Swarm, f64, Value)> {
    let engine = cuda_engine(block_threads)?;
    let (sw, t) = engine
        .swarm_attention(agents, opts, threads)
        .context("--device cuda: the swarm kernel failed")?;
    let pairs = sw.pairs() as f64;
    let info = json!({
        "gpu": engine.device_name(),
        "arch": engine.arch(),
        "kernel_cache": match engine.kernel_origin() {
            kiln_ising::cuda::KernelOrigin::Cached => "hit",
            kiln_ising::cuda::KernelOrigin::Compiled => "compiled",
        },
        "setup_seconds": engine.setup_seconds(),
        "kernel_seconds": t.kernel_seconds,
        "kernel_pairs_per_s": pairs / t.kernel_seconds,
        "threads_per_block": t.threads_per_block,
        "shared_state": t.shared_state,
    });
    Ok((sw, t.seconds, info))
}

#[cfg(not(feature = "cuda"))]
fn swarm_cuda(
    _agents: &[IsingSystem],
    _opts: &EmpathyOptions,
    _threads: usize,
    _block_threads: u32,
) -> Result<(kiln_ising::batch::Swarm, f64, Value)> {
    Err(no_cuda())
}

/// Opens the first GPU, with an error that says what to do when there is none.
#[cfg(feature = "cuda")]
fn cuda_engine(block_threads: u32) -> Result<kiln_ising::cuda::CudaEngine> {
    kiln_ising::cuda::CudaEngine::with_block_threads(0, block_threads)
        .context("--device cuda: no usable GPU")
}

/// The error of `--device cuda` in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
fn no_cuda() -> anyhow::Error {
    anyhow::anyhow!(
        "--device cuda: this kiln was built without CUDA support; rebuild it with \
         `cargo build --release -p kiln --features cuda` (it then needs a CUDA 13 driver and NVRTC \
         at run time), or use --device cpu"
    )
}

/// `--block-threads`: a multiple of 32 from 32 to 256.
fn parse_block_threads(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n % 32 == 0 && (32..=256).contains(&n) => Ok(n),
        _ => Err(format!("`{s}`: expected a multiple of 32 from 32 to 256")),
    }
}

/// `--block-threads` is for the GPU kernel only.
fn cuda_only(block_threads: Option<u32>, device: Device) -> Result<()> {
    if block_threads.is_some() && device == Device::Cpu {
        anyhow::bail!("--block-threads applies to --device cuda only");
    }
    Ok(())
}

/// An order-sensitive hash of the score bits, to compare runs (e.g. across thread counts).
pub fn checksum(values: &[f64]) -> u64 {
    values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ v.to_bits()).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The report of `kiln ising bench`.
pub fn bench_report(a: &BenchArgs) -> Result<Value> {
    cuda_only(a.block_threads, a.device)?;
    let threads = a.threads.unwrap_or_else(default_threads).max(1);
    let r = match a.device {
        Device::Cpu => bench::run(a.repeats, a.swarm_agents, threads)?,
        Device::Cuda => bench_cuda(a, threads)?,
    };
    Ok(serde_json::to_value(r)?)
}

#[cfg(feature = "cuda")]
fn bench_cuda(a: &BenchArgs, threads: usize) -> Result<bench::BenchReport> {
    let engine = cuda_engine(a.block_threads.unwrap_or(128))?;
    bench::run_cuda(a.repeats, a.swarm_agents, threads, &engine)
        .context("--device cuda: the swarm benchmark failed")
}

#[cfg(not(feature = "cuda"))]
fn bench_cuda(_a: &BenchArgs, _threads: usize) -> Result<bench::BenchReport> {
    Err(no_cuda())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ising: IsingArgs,
    }

    fn parse(args: &[&str]) -> IsingCommand {
        let mut v = vec!["kiln"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
            .map(|c| c.ising.command)
            .expect("parses")
    }

    #[test]
    fn empathy_json_has_required_keys() {
        let cmd = parse(&[
            "empathy", "--n", "20", "--seed-a", "42", "--seed-b", "43", "--steps", "100", "--seed",
            "100", "--json",
        ]);
        let IsingCommand::Empathy(a) = cmd else {
            panic!("expected empathy, got {cmd:?}");
        };
        assert!(a.json);
        let v = empathy_report(&a).expect("runs");
        for key in [
            "empathy",
            "overlap",
            "energy_error",
            "coupling_similarity",
            "preset",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["preset"], "balanced");
        assert_eq!(v["steps"], 100);
        assert_eq!(v["coupling_similarity"], 1.0);
        let e = v["empathy"].as_f64().expect("number");
        assert!((0.0..=1.0).contains(&e));
        // Deterministic apart from the timing.
        let again = empathy_report(&a).expect("runs");
        assert_eq!(v["empathy"], again["empathy"]);
    }

    #[test]
    fn bad_cli_inputs_are_errors() {
        let IsingCommand::Empathy(mut a) = parse(&["empathy", "--n", "0"]) else {
            panic!("expected empathy");
        };
        assert!(empathy_report(&a).is_err());
        a.n = 5;
        a.preset = "nope".into();
        let msg = format!("{:#}", empathy_report(&a).unwrap_err());
        assert!(msg.contains("unknown weight preset"), "{msg}");
    }

    #[test]
    fn anneal_writes_plot() {
        let dir = std::env::temp_dir().join(format!("kiln-ising-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("anneal.svg");
        let p = path.to_string_lossy().to_string();
        let IsingCommand::Anneal(a) =
            parse(&["anneal", "--n", "16", "--steps", "30", "--plot", &p])
        else {
            panic!("expected anneal");
        };
        let v = anneal_report(&a).expect("runs");
        assert_eq!(v["steps"], 30);
        let svg = std::fs::read_to_string(&path).expect("plot written");
        assert_eq!(svg.matches("<path").count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn other_reports_run() {
        let IsingCommand::Social(s) =
            parse(&["social", "--n", "10", "--agents", "3", "--steps", "20"])
        else {
            panic!("expected social");
        };
        let v = social_report(&s).expect("runs");
        assert_eq!(v["weights"].as_array().map(Vec::len), Some(3));
        let IsingCommand::Emotion(e) = parse(&["emotion", "--count", "4"]) else {
            panic!("expected emotion");
        };
        assert_eq!(emotion_report(&e).expect("runs")["count"], 4);
        let IsingCommand::Swarm(w) = parse(&[
            "swarm",
            "--agents",
            "5",
            "--n",
            "8",
            "--steps",
            "10",
            "--threads",
            "2",
        ]) else {
            panic!("expected swarm");
        };
        let v = swarm_report(&w).expect("runs");
        assert_eq!(v["pairs"], 20);
        assert_eq!(v["device"], "cpu");
        let mut w1 = w.clone();
        w1.threads = Some(1);
        assert_eq!(swarm_report(&w1).expect("runs")["checksum"], v["checksum"]);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_device_without_the_feature_says_how_to_get_it() {
        let IsingCommand::Swarm(w) = parse(&[
            "swarm", "--agents", "3", "--n", "4", "--steps", "2", "--device", "cuda",
        ]) else {
            panic!("expected swarm");
        };
        assert_eq!(w.device, Device::Cuda);
        let msg = format!("{:#}", swarm_report(&w).unwrap_err());
        assert!(msg.contains("--features cuda"), "{msg}");
        let IsingCommand::Bench(b) = parse(&["bench", "--device", "cuda"]) else {
            panic!("expected bench");
        };
        let msg = format!("{:#}", bench_report(&b).unwrap_err());
        assert!(msg.contains("built without CUDA"), "{msg}");
    }
}
