//! Options and steps shared by the subcommands.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kiln_model::device::{Device, DeviceKind};
use kiln_model::loader::{LoadOptions, LoadedModel};
use kiln_model::quantize::QuantType;
use kiln_model::sampler::SamplerParams;

/// Which model and how to run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face model folder (config.json, *.safetensors, tokenizer.json),
    /// or a Hub repo id such as Qwen/Qwen2.5-0.5B-Instruct (taken from the Hugging Face cache,
    /// downloaded with `hf` when missing) [default: SmolLM2-135M-Instruct Q4_1, fetched if
    /// missing].
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) to merge
    /// into the model's weights at load time.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Quantize F32/F16/BF16 weights on load: q8_0 or q4_k (rows shorter than 256 values,
    /// or not a multiple of 256, get q8_0).
    #[arg(long, value_parser = parse_quant)]
    pub quantize: Option<QuantType>,
    /// CPU threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Where to run: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = DeviceKind::parse)]
    pub device: DeviceKind,
    /// KV cache values: f16 (default) or f32 (twice the memory, no rounding; CPU only).
    #[arg(long, default_value = "f16", value_parser = parse_kv)]
    pub kv_dtype: kiln_model::cpu::KvDtype,
}

/// `--kv-dtype`.
pub fn parse_kv(s: &str) -> Result<kiln_model::cpu::KvDtype, String> {
    kiln_model::cpu::KvDtype::from_name(s).ok_or_else(|| format!("`{s}`: expected f16 or f32"))
}

fn parse_quant(s: &str) -> Result<QuantType, String> {
    QuantType::from_name(s).ok_or_else(|| format!("`{s}`: expected q8_0 or q4_k"))
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

/// Resolves the model (a path, a Hub repo id, or the default model, fetched if needed) and
/// loads it with the adapter and quantization asked for.
pub fn load(args: &ModelArgs, quiet: bool) -> anyhow::Result<LoadedModel<Device>> {
    let path = match &args.model {
        Some(spec) => kiln_model::hf::resolve(spec, &kiln_model::hf::HubOptions::from_env())?,
        None => kiln_model::fetch::ensure_default_model(!quiet)?,
    };
    let device = Device::open_with_kv(args.device, args.threads, args.kv_dtype)?;
    if !quiet {
        eprint!("kiln: loading {} ... ", path.display());
    }
    let opts = LoadOptions {
        lora: args.lora.clone(),
        quantize: args.quantize,
    };
    let m = kiln_model::loader::load(&path, device, &opts)
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
        if let Some(l) = &m.lora {
            eprintln!("kiln: merged LoRA adapter {}", l.display());
        }
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        match &m.quantized {
            Some(q) => eprintln!(
                "kiln: weights {:.1} MiB -> {:.1} MiB ({} matrices quantized, {} as q8_0 fallback, {} kept)",
                mib(q.bytes_before),
                mib(q.bytes_after),
                q.quantized,
                q.fallback_q8_0,
                q.kept
            ),
            None => eprintln!("kiln: weights {:.1} MiB", mib(m.weight_bytes)),
        }
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
