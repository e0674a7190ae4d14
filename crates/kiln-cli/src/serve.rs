//! `kiln serve`: the OpenAI-compatible HTTP server with the model kept resident.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use kiln_server::{AppState, ServerConfig};

use crate::common::{start, EngineArgs, ModelArgs};

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
    #[command(flatten)]
    pub model: ModelArgs,
    /// Serve no language model (the Ising endpoints still work).
    #[arg(long, conflicts_with = "model")]
    pub no_model: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short = 'p', default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub engine: EngineArgs,
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
    /// Another name the model answers to and `/v1/models` lists (repeatable), for clients
    /// that hard-code a model name.
    #[arg(long)]
    pub alias: Vec<String>,
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
    if a.engine.max_batch_tokens == 0 || a.engine.max_running == 0 {
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
    // Tokenizing, templating and refinements run on the blocking pool: a bounded one, so that
    // a flood of requests cannot grow threads (and the allocator's per-thread arenas) without
    // end; beyond it they queue. Refinements, which hold a thread for their whole run, get
    // at most half of it.
    let blocking = 4 * std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(4);
    let cfg = ServerConfig {
        max_refinements: blocking / 2,
        api_keys: keys,
        cors_origins: a.cors_origin.clone(),
        aliases: a.alias.clone(),
        allowed_hosts: a.allow_host.clone(),
        max_body_bytes: a.max_body_bytes,
        default_max_tokens: a.default_max_tokens.max(1),
        default_draft_max: a.model.draft_max(),
        max_connections: a.max_connections.max(1),
        shutdown_grace: std::time::Duration::from_secs(a.shutdown_grace_s),
        header_timeout: std::time::Duration::from_secs(a.header_timeout_s.max(1)),
        body_timeout: std::time::Duration::from_secs(a.body_timeout_s.max(1)),
    };
    // With a model, the server listens first and loads it meanwhile: `/health` answers 503
    // (loading) until it is ready, as routers and orchestrators expect.
    let state = if a.no_model {
        AppState::new(None, cfg)
    } else {
        AppState::loading(cfg)
    };
    // Workers for HTTP and streaming: enough for hundreds of streams on a large machine, no
    // more than two on a laptop (the model's own threads need the cores).
    let workers = std::thread::available_parallelism().map_or(2, |n| (n.get() / 2).clamp(2, 8));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(blocking)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!("kiln: listening on http://{addr}");
        if !a.no_model {
            let (st, model, builder) = (state.clone(), a.model.clone(), a.engine.builder());
            tokio::task::spawn_blocking(move || match start(&model, &builder, false) {
                Ok(lm) => {
                    st.install(lm);
                    eprintln!("kiln: ready");
                }
                Err(e) => st.loading_failed(format!("loading the model: {e:#}")),
            });
        }
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
