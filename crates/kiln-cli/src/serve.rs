//! `kiln serve`: the OpenAI-compatible HTTP server with the model kept resident.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use kiln_engine::{Engine, EngineConfig, EngineHandle, ModelRunner};
use kiln_model::device::{Device, DeviceKind};
use kiln_server::{AppState, LoadedLm, ServerConfig};

/// Log line format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `kiln serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Path to a GGUF model file [default: SmolLM2-135M-Instruct Q4_1, fetched if missing].
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Serve no language model (the Ising endpoints still work).
    #[arg(long, conflicts_with = "model")]
    pub no_model: bool,
    /// CPU threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Where to run: cpu, cuda or cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = DeviceKind::parse)]
    pub device: DeviceKind,
    /// KV cache values: f16 (default) or f32 (twice the memory, no rounding; CPU only).
    #[arg(long, default_value = "f16", value_parser = crate::common::parse_kv)]
    pub kv_dtype: kiln_model::cpu::KvDtype,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short = 'p', default_value_t = 8080)]
    pub port: u16,
    /// Memory budget in MiB for weights, activations and the KV cache together; requests
    /// that cannot fit wait or are refused.
    #[arg(long, default_value_t = 1024)]
    pub max_memory_mb: usize,
    /// Most tokens (decode and prefill chunks) in one engine step.
    #[arg(long, default_value_t = 256)]
    pub max_batch_tokens: usize,
    /// Most sequences generating at once.
    #[arg(long, default_value_t = 32)]
    pub max_running: usize,
    /// Most requests waiting; more get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// `max_tokens` for requests that give none.
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// An accepted API key (repeatable); without any, no key is needed. A key given here is
    /// visible to every user of the machine in `ps`: prefer `--api-key-file`.
    #[arg(long)]
    pub api_key: Vec<String>,
    /// A file with one accepted API key per line (`#` starts a comment): keeps keys out of
    /// `ps` and shell history. Clients send `Authorization: Bearer KEY`.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// A web origin allowed to use the server from a browser, with CORS headers (repeatable;
    /// `*` for any). The server's own chat page needs none.
    #[arg(long, visible_alias = "allow-origin")]
    pub cors_origin: Vec<String>,
    /// A host name the server answers to without an API key, besides IP addresses and
    /// `localhost` (repeatable; `*` for any). Other names are refused, so that a web page
    /// cannot reach the server by rebinding its own name to this address.
    #[arg(long)]
    pub allow_host: Vec<String>,
    /// Most client connections open at once; more wait to be accepted.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; also how long an idle kept-alive
    /// connection stays open.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Seconds that running requests get to finish after SIGTERM or Ctrl-C; a second signal
    /// exits at once.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_s: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Runs `kiln serve` until SIGTERM or Ctrl-C.
pub fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    match a.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    if a.max_batch_tokens == 0 || a.max_running == 0 {
        anyhow::bail!("--max-batch-tokens and --max-running must be at least 1");
    }
    let mut keys = a.api_key.clone();
    if let Some(f) = &a.api_key_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the API key file {}", f.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let lm = if a.no_model {
        None
    } else {
        Some(start_engine(&EngineOpts {
            model: a.model.clone(),
            threads: a.threads,
            device: a.device,
            kv_dtype: a.kv_dtype,
            max_memory_mb: a.max_memory_mb,
            max_batch_tokens: a.max_batch_tokens,
            max_running: a.max_running,
            max_queue: a.max_queue,
        })?)
    };
    let cfg = ServerConfig {
        api_keys: keys,
        cors_origins: a.cors_origin.clone(),
        allowed_hosts: a.allow_host.clone(),
        max_body_bytes: a.max_body_bytes,
        default_max_tokens: a.default_max_tokens.max(1),
        max_connections: a.max_connections.max(1),
        shutdown_grace: std::time::Duration::from_secs(a.shutdown_grace_s),
        header_timeout: std::time::Duration::from_secs(a.header_timeout_s.max(1)),
        body_timeout: std::time::Duration::from_secs(a.body_timeout_s.max(1)),
    };
    let state = AppState::new(lm, cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!("kiln: listening on http://{addr}");
        kiln_server::serve(listener, state, shutdown_signal()).await?;
        eprintln!("kiln: shut down cleanly");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    eprintln!("kiln: shutting down: finishing running requests (a second signal exits at once)");
    tokio::spawn(async {
        second_signal().await;
        eprintln!("kiln: second signal: exiting now");
        std::process::exit(130);
    });
}

/// The next SIGTERM or Ctrl-C.
async fn second_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// What it takes to start an engine over a model.
#[derive(Debug, Clone)]
pub struct EngineOpts {
    /// GGUF path (default model when `None`).
    pub model: Option<PathBuf>,
    /// CPU threads (0: one per core).
    pub threads: usize,
    /// Where to run.
    pub device: DeviceKind,
    /// KV cache values.
    pub kv_dtype: kiln_model::cpu::KvDtype,
    /// Budget for weights, activations and KV cache, in MiB.
    pub max_memory_mb: usize,
    /// Most tokens per engine step.
    pub max_batch_tokens: usize,
    /// Most sequences at once.
    pub max_running: usize,
    /// Most requests waiting.
    pub max_queue: usize,
}

/// Loads a model and starts an engine over it, within the memory budget.
pub fn start_engine(a: &EngineOpts) -> anyhow::Result<LoadedLm> {
    let path = match &a.model {
        Some(p) => p.clone(),
        None => kiln_model::fetch::ensure_default_model(true)?,
    };
    eprintln!("kiln: loading {}", path.display());
    let m = kiln_model::loader::load(
        &path,
        Device::open_with_kv(a.device, a.threads, a.kv_dtype)?,
        &kiln_model::loader::LoadOptions::default(),
    )
    .with_context(|| format!("loading {}", path.display()))?;
    let cfg = m.model.cfg.clone();
    // Weights as the device holds them (the GPU keeps quantized files as f16 by default).
    let weights = device_weight_bytes(&m.model).unwrap_or(m.weight_bytes);
    // Activations of one step: hidden states, q/k/v, attention, FFN, and the logits rows.
    let act = 4
        * (a.max_batch_tokens * (6 * cfg.dim + 2 * cfg.kv_dim() + 2 * cfg.ffn_dim)
            + a.max_running * (cfg.dim + cfg.vocab_size));
    let budget = a.max_memory_mb.saturating_mul(1 << 20);
    let kv_budget = budget.checked_sub(weights + act).filter(|&b| b > 0).ok_or_else(|| {
        anyhow::anyhow!(
            "--max-memory-mb {} leaves no room for the KV cache: the weights take {} MiB and activations {} MiB",
            a.max_memory_mb,
            weights >> 20,
            act >> 20
        )
    })?;
    let tokenizer = Arc::new(m.tokenizer);
    let runner = ModelRunner::new(m.model, kv_budget, a.max_batch_tokens, a.max_running)?;
    eprintln!(
        "kiln: {} ready; KV cache {} MiB = {} tokens",
        m.name,
        kv_budget >> 20,
        runner.kv_capacity_tokens()
    );
    let engine = Engine::new(
        runner,
        tokenizer.clone(),
        EngineConfig {
            max_batch_tokens: a.max_batch_tokens,
            max_running: a.max_running,
            max_queue: a.max_queue,
        },
    );
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| m.name.clone());
    Ok(LoadedLm {
        engine: EngineHandle::spawn(engine),
        tokenizer,
        template: m.template,
        id,
        context_length: cfg.context_length,
    })
}

/// Bytes of weights a GPU holds for the model, when it runs on one.
fn device_weight_bytes(model: &kiln_model::Model<Device>) -> Option<usize> {
    #[cfg(feature = "cuda")]
    {
        model.backend.cuda().map(|c| c.weight_bytes())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = model;
        None
    }
}
