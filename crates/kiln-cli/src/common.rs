//! Options and steps shared by the subcommands.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kiln_model::cpu::CpuBackend;
use kiln_model::loader::{load_gguf, LoadedModel};
use kiln_model::sampler::SamplerParams;

/// Which model and how to run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Path to a GGUF model file [default: SmolLM2-135M-Instruct Q4_1, fetched if missing].
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// CPU threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

/// How to pick tokens.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: usize,
}

impl SampleArgs {
    /// The sampler parameters, checked.
    pub fn params(&self) -> anyhow::Result<SamplerParams> {
        let p = SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        };
        p.validate()
            .map_err(|e| anyhow::anyhow!("--{}", e.replacen('_', "-", 1)))?;
        if self.max_tokens == 0 {
            anyhow::bail!("--max-tokens must be at least 1");
        }
        Ok(p)
    }
}

/// Resolves the model path (fetching the default one if needed) and loads it.
pub fn load(args: &ModelArgs, quiet: bool) -> anyhow::Result<LoadedModel<CpuBackend>> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => kiln_model::fetch::ensure_default_model(!quiet)?,
    };
    if !quiet {
        eprint!("kiln: loading {} ... ", path.display());
    }
    let m = load_gguf(&path, CpuBackend::new(args.threads))
        .with_context(|| format!("loading {}", path.display()))?;
    if !quiet {
        eprintln!(
            "{} ({} layers, {} on {}) in {:.2} s",
            m.name,
            m.model.cfg.n_layers,
            m.model.cfg.arch.name(),
            kiln_model::Backend::describe(&m.model.backend),
            m.load_s
        );
    }
    Ok(m)
}

/// Peak resident memory of this process in MiB (Linux), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
