//! kiln's OpenAI-compatible HTTP server. A thin shell: it parses requests, hands them to
//! the engine, and turns the engine's events into JSON or server-sent events.

mod embed;
mod error;
mod guard;
mod listen;
pub mod metrics;
mod refine;
mod request;
mod response;
mod text;
mod tools;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use kiln_engine::FinishReason;
use kiln_engine::{EngineHandle, Event, Request, TokenLogprob, Usage};
use kiln_tokenizer::chat::ChatTemplate;
use kiln_tokenizer::Tokenizer;
use tokio::sync::mpsc;

pub use error::ApiError;
use metrics::Metrics;
use request::{GenRequest, Prompts};

/// Parses a request body as `/v1/chat/completions` (`chat`) or `/v1/completions` does, and
/// says only whether it is accepted: for fuzzing and tests of hostile bodies.
pub fn parse_request(body: &[u8], chat: bool, default_max_tokens: usize) -> Result<(), ApiError> {
    request::parse(body, chat, default_max_tokens, 0).map(|_| ())
}

/// A language model being served.
pub struct LoadedLm {
    /// The engine that runs it.
    pub engine: EngineHandle,
    /// Its tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Its chat template.
    pub template: ChatTemplate,
    /// The id `/v1/models` lists.
    pub id: String,
    /// Its context length.
    pub context_length: usize,
    /// Seconds it took to load.
    pub load_s: f64,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Accepted API keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Web origins allowed to use the server from a browser, with CORS headers (`*` for
    /// any); the server's own page is always allowed.
    pub cors_origins: Vec<String>,
    /// Host names the server answers to without an API key besides IP addresses and
    /// `localhost` (`*` for any): a guard against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// `draft_max` when a request gives none (0 unless the engine has a draft model).
    pub default_draft_max: usize,
    /// Time a client has to send a request's headers (and to start its next request on an
    /// idle kept-alive connection).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time running requests get to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Other names the model answers to (`model` in requests) and `/v1/models` lists, for
    /// clients that hard-code one.
    pub aliases: Vec<String>,
    /// Refinements running at once. Each holds a thread of the blocking pool for its whole
    /// run, which tokenizing and templating share; more wait for a slot, so that they cannot
    /// take every thread from ordinary requests.
    pub max_refinements: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: 1 << 20,
            default_max_tokens: 512,
            default_draft_max: 0,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 512,
            shutdown_grace: Duration::from_secs(30),
            max_refinements: 2,
            aliases: Vec::new(),
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    /// The language model, once loaded (never, for a server of the Ising endpoints alone).
    lm: std::sync::OnceLock<LoadedLm>,
    /// The model is still loading: `/health` and new work answer 503.
    loading: std::sync::atomic::AtomicBool,
    /// Why loading failed; `serve` then ends with this error.
    load_error: std::sync::Mutex<Option<String>>,
    /// Shutdown has begun: running requests finish, `/health` and new work answer 503.
    draining: std::sync::atomic::AtomicBool,
    cfg: ServerConfig,
    metrics: Metrics,
    next_id: AtomicU64,
    next_request: AtomicU64,
    created: u64,
    /// Slots of `cfg.max_refinements`.
    refine_slots: Arc<tokio::sync::Semaphore>,
    /// The grammar compiler for the model's tokenizer, built once (off the request path when
    /// the model is installed).
    grammars: std::sync::OnceLock<Result<Arc<kiln_engine::Grammars>, String>>,
    /// This process among its replicas: the first part of every `x-request-id` (so that ids
    /// are unique behind a router) and the `x-kiln-instance` header, which names the replica
    /// that answered.
    instance: String,
}

type Shared = Arc<AppState>;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    /// State for a server of `lm` (or none: the Ising endpoints still work).
    pub fn new(lm: Option<LoadedLm>, cfg: ServerConfig) -> Arc<Self> {
        let st = Self::with(cfg, false);
        if let Some(lm) = lm {
            let _ = st.lm.set(lm);
            st.warm_grammars();
        }
        st
    }

    /// State for a server whose model is still loading: it answers `/health` (503, loading)
    /// until [`AppState::install`] gives it the model, or [`AppState::loading_failed`] ends
    /// it.
    pub fn loading(cfg: ServerConfig) -> Arc<Self> {
        Self::with(cfg, true)
    }

    /// The loaded model: the server is ready.
    pub fn install(self: &Arc<Self>, lm: LoadedLm) {
        let _ = self.lm.set(lm);
        self.loading.store(false, Ordering::SeqCst);
        self.warm_grammars();
    }

    /// Loading failed: `serve` ends with `why`.
    pub fn loading_failed(&self, why: String) {
        *self.load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    fn with(cfg: ServerConfig, loading: bool) -> Arc<Self> {
        Arc::new(AppState {
            lm: std::sync::OnceLock::new(),
            loading: std::sync::atomic::AtomicBool::new(loading),
            load_error: std::sync::Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            refine_slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_refinements.max(1))),
            instance: {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64);
                format!(
                    "{:08x}",
                    (u64::from(std::process::id()) << 32 ^ nanos)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        >> 32
                )
            },
            cfg,
            metrics: Metrics::default(),
            next_id: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            created: now_s(),
            grammars: std::sync::OnceLock::new(),
        })
    }

    /// The grammar compiler, built on first use.
    fn grammars(&self, lm: &LoadedLm) -> Result<Arc<kiln_engine::Grammars>, ApiError> {
        self.grammars
            .get_or_init(|| {
                kiln_engine::Grammars::new(lm.tokenizer.clone(), lm.tokenizer.vocab_size())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("this model cannot constrain its output: {e}"),
                    Some("unsupported"),
                )
            })
    }

    /// Builds the grammar compiler in the background, so that the first constrained request
    /// does not wait for it.
    fn warm_grammars(self: &Arc<Self>) {
        let st = self.clone();
        std::thread::spawn(move || {
            if let Some(lm) = st.loaded() {
                let _ = st.grammars(lm);
            }
        });
    }

    /// The model, for new work: refused (503) while it loads and once shutdown has begun.
    fn lm(&self) -> Result<&LoadedLm, ApiError> {
        if let Some(why) = self.not_ready() {
            return Err(why);
        }
        self.loaded().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no language model is loaded in this server",
                Some("model_not_loaded"),
            )
        })
    }

    /// The model, for work already under way.
    fn loaded(&self) -> Option<&LoadedLm> {
        self.lm.get()
    }

    /// Why new work is refused now: loading or shutting down.
    fn not_ready(&self) -> Option<ApiError> {
        if self.loading.load(Ordering::SeqCst) {
            return Some(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading",
                Some("model_loading"),
            ));
        }
        if self.draining.load(Ordering::SeqCst) {
            return Some(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
                Some("shutting_down"),
            ));
        }
        None
    }

    /// Whether the engine has requests running or waiting.
    fn busy(&self) -> bool {
        self.loaded().is_some_and(|l| {
            let s = l.engine.stats();
            s.running + s.waiting > 0
        })
    }
}

/// The router with every endpoint.
pub fn router(state: Shared) -> Router {
    let app = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/get_load", get(get_load))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embed::embeddings))
        .route("/tokenize", post(text::tokenize))
        .route("/detokenize", post(text::detokenize))
        .route("/v1/ising/empathy", post(ising_empathy))
        .route("/v1/ising/social", post(ising_social))
        .fallback(not_found);
    guard::layered(app, &state).with_state(state)
}

/// Serves until `shutdown` resolves (running requests then get
/// [`ServerConfig::shutdown_grace`] to finish) or the engine thread dies, which is an error:
/// a server whose engine is gone must not go on answering `ok`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let limits = listen::Limits {
        header_timeout: state.cfg.header_timeout,
        max_connections: state.cfg.max_connections,
        shutdown_grace: state.cfg.shutdown_grace,
    };
    let st = state.clone();
    let failed = move || {
        st.loaded().is_some_and(|l| l.engine.has_failed())
            || st
                .load_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    };
    // Asked to stop: drain first. New work and `/health` answer 503 (a router takes this
    // replica out) while connections are still accepted and running requests finish; then
    // the listener closes and open responses get what is left of the one grace time.
    let st = state.clone();
    let grace = state.cfg.shutdown_grace;
    let drained = async move {
        shutdown.await;
        st.draining.store(true, Ordering::SeqCst);
        let end = Instant::now() + grace;
        while st.busy() && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        end
    };
    let why = listen::serve(listener, app, limits, drained, failed).await?;
    if let Some(lm) = state.loaded() {
        let engine = lm.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
    if let Some(e) = state
        .load_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(std::io::Error::other(e));
    }
    match why {
        listen::Stopped::Asked => Ok(()),
        listen::Stopped::Failed => Err(std::io::Error::other(
            "the engine thread stopped (it panicked; its message is above)",
        )),
    }
}

fn endpoint_name(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        "/v1/embeddings" => "embeddings",
        "/tokenize" => "tokenize",
        "/detokenize" => "detokenize",
        "/v1/ising/empathy" => "ising_empathy",
        "/v1/ising/social" => "ising_social",
        _ => "other",
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint", Some("not_found"))
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(State(st): State<Shared>) -> Response {
    if let Some(e) = st.not_ready() {
        let status = if e.code == Some("model_loading") {
            "loading"
        } else {
            "draining"
        };
        let body = response::Health::NotReady {
            status,
            ready: false,
            error: &e.message,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if st.loaded().is_some_and(|l| l.engine.has_failed()) {
        let body = response::Health::NotReady {
            status: "failed",
            ready: false,
            error:
                "the engine thread stopped (it panicked; see the log); the server is shutting down",
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(response::Health::Ready {
        status: "ok",
        ready: true,
        model: st.loaded().map(|l| l.id.as_str()),
        engine: st.loaded().map(|l| Box::new(l.engine.stats())),
    })
    .into_response()
}

/// The load a cache-aware router balances on: requests in flight, waiting, and the KV cache's
/// use and prefix-cache counters.
async fn get_load(State(st): State<Shared>) -> Response {
    // A server that cannot take work must not look idle to a least-load router.
    if let Some(e) = st.not_ready() {
        return e.into_response();
    }
    let Some(lm) = st.loaded().filter(|l| !l.engine.has_failed()) else {
        let why = if st.loaded().is_some() {
            "the engine thread stopped"
        } else {
            "no language model is loaded"
        };
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why, Some("not_ready"))
            .into_response();
    };
    let s = lm.engine.stats();
    Json(response::Load {
        load: s.running + s.waiting,
        running: s.running,
        waiting: s.waiting,
        kv_cache_usage: s.kv_cache_usage(),
        prefix_cache_queries: s.prefix_queried_tokens,
        prefix_cache_hits: s.prefix_hit_tokens,
    })
    .into_response()
}

async fn metrics_text(State(st): State<Shared>) -> Response {
    let stats = st.loaded().map(|l| l.engine.stats());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(stats.as_ref()),
    )
        .into_response()
}

async fn models(State(st): State<Shared>) -> Response {
    let mut data = Vec::new();
    if let Some(l) = st.loaded() {
        let grammars = st.grammars.get().is_some_and(Result::is_ok);
        let capabilities = response::Capabilities {
            completion: true,
            chat: true,
            tokenize: true,
            embeddings: l.engine.hidden_size() > 0,
            tools: grammars,
            response_format: grammars,
            native_tool_template: l.template.tool_format()
                != kiln_tokenizer::chat::ToolFormat::Generic,
        };
        let entry = |id| response::Model {
            id,
            object: "model",
            created: st.created,
            owned_by: "kiln",
            root: &l.id,
            max_model_len: l.context_length,
            capabilities,
        };
        data.push(entry(&l.id));
        for a in &st.cfg.aliases {
            data.push(entry(a));
        }
    }
    Json(response::List::<_> {
        object: "list",
        data,
        model: None,
        usage: None,
    })
    .into_response()
}

/// Bytes of an oversized body read and thrown away before the 413 goes out, so that a
/// client still sending reads the answer: closing a connection with unread data makes the
/// kernel send a reset, and a client hit by it while writing (curl, most libraries) reports
/// the reset instead of the 413. Past this much, or past the body deadline, the answer goes
/// out at once.
const OVERSIZE_DRAIN_BYTES: usize = 16 << 20;

async fn read_body(st: &AppState, body: Body) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let limit = st.cfg.max_body_bytes;
    let deadline = tokio::time::Instant::now() + st.cfg.body_timeout;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
            Some("body_too_large"),
        )
    };
    // A declared length past what would be read anyway is refused at once (the client
    // then meets the reset, as it would after reading on).
    let declared =
        usize::try_from(axum::body::HttpBody::size_hint(&body).lower()).unwrap_or(usize::MAX);
    if declared > limit.saturating_add(OVERSIZE_DRAIN_BYTES) {
        return Err(too_large());
    }
    let mut data = body.into_data_stream();
    // Room for what is declared, up to 64 KiB before any of it has arrived.
    let mut kept: Vec<u8> = Vec::with_capacity(declared.min(limit).min(64 << 10));
    let mut seen = 0usize;
    loop {
        let next = match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(next) => next,
            Err(_) if seen > limit => return Err(too_large()),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        st.cfg.body_timeout.as_secs()
                    ),
                    Some("body_timeout"),
                ))
            }
        };
        match next {
            None => break,
            Some(Err(_)) if seen > limit => return Err(too_large()),
            Some(Err(e)) => {
                return Err(ApiError::bad(
                    "body",
                    format!("the request body could not be read: {e}"),
                ))
            }
            Some(Ok(chunk)) => {
                seen = seen.saturating_add(chunk.len());
                if seen <= limit {
                    kept.extend_from_slice(&chunk);
                } else {
                    kept = Vec::new();
                    if seen > limit.saturating_add(OVERSIZE_DRAIN_BYTES) {
                        return Err(too_large());
                    }
                }
            }
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(kept))
}

fn check_model(st: &AppState, lm: &LoadedLm, req: &GenRequest) -> Result<(), ApiError> {
    match req.model.as_deref() {
        None => Ok(()),
        Some(m) => check_model_name(st, lm, m),
    }
}

/// Refuses a `model` that is neither the model's id, one of its aliases, nor `default`.
fn check_model_name(st: &AppState, lm: &LoadedLm, name: &str) -> Result<(), ApiError> {
    match name {
        "default" => Ok(()),
        m if m == lm.id || st.cfg.aliases.iter().any(|a| a == m) => Ok(()),
        m => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{m}` does not exist; this server serves `{}`",
                lm.id
            ),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }),
    }
}

async fn chat_completions(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    chat_body(st, body).await
}

async fn completions(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    completions_body(st, body).await
}

async fn chat_body(st: Shared, body: Bytes) -> Result<Response, ApiError> {
    let req = request::parse(
        &body,
        true,
        st.cfg.default_max_tokens,
        st.cfg.default_draft_max,
    )?;
    let lm = st.lm()?;
    check_model(&st, lm, &req)?;
    if req.refine.is_some() {
        return refine::chat(st.clone(), req).await;
    }
    let mut req = req;
    let native = lm.template.tool_format();
    if let Some(t) = req.tools.as_mut() {
        t.format = native;
    }
    let mut messages = req.messages.clone().unwrap_or_default();
    match &req.tools {
        Some(t) => t.add_to(&mut messages),
        None if native == kiln_tokenizer::chat::ToolFormat::Generic => {
            tools::inline_calls(&mut messages)
        }
        None => {}
    }
    let template_tools = req.tools.as_ref().and_then(|t| t.for_template());
    let text_bytes: usize = messages.iter().map(|m| m.content.len()).sum::<usize>()
        + template_tools.as_ref().map_or(0, |t| t.to_string().len());
    refuse_long(lm, "messages", text_bytes)?;
    let (grammar, param) = match (&req.format, req.tools.as_ref().and_then(|t| t.grammar())) {
        (Some(g), _) => (Some(g.clone()), "response_format"),
        (None, Some(g)) => (Some(g), "tools"),
        (None, None) => (None, ""),
    };
    // Rendering, tokenizing and compiling a grammar take CPU time in proportion to the
    // request: off the async workers, so that a long prompt cannot stall other clients and
    // `/health`.
    let st2 = st.clone();
    let (prompt, constraint) = blocking(st.clone(), move |lm| {
        let prompt = lm
            .template
            .encode_with(&lm.tokenizer, &messages, template_tools.as_ref(), true)
            .map_err(|e| ApiError::bad("messages", e.to_string()))?;
        Ok((prompt, compile(&st2, lm, grammar.as_ref(), param)?))
    })
    .await?;
    generate(st.clone(), req, vec![prompt], constraint, true).await
}

/// Compiles the grammar a request's answer must follow; a bad one is refused naming `param`.
fn compile(
    st: &AppState,
    lm: &LoadedLm,
    g: Option<&kiln_engine::Grammar>,
    param: &str,
) -> Result<Option<Box<kiln_engine::Constraint>>, ApiError> {
    let Some(g) = g else {
        return Ok(None);
    };
    st.grammars(lm)?
        .compile(g)
        .map(|c| Some(Box::new(c)))
        .map_err(|e| ApiError::bad(param, format!("`{param}` cannot be used: {e}")))
}

async fn completions_body(st: Shared, body: Bytes) -> Result<Response, ApiError> {
    let req = request::parse(
        &body,
        false,
        st.cfg.default_max_tokens,
        st.cfg.default_draft_max,
    )?;
    let lm = st.lm()?;
    check_model(&st, lm, &req)?;
    let input = req.prompt.clone().unwrap_or(Prompts::Texts(Vec::new()));
    refuse_long(lm, "prompt", input.text_bytes())?;
    let special = req.parse_special;
    let grammar = req.format.clone();
    let st2 = st.clone();
    let (prompts, constraint) = blocking(st.clone(), move |lm| {
        let prompts = match input {
            Prompts::Texts(t) => t
                .iter()
                .map(|t| lm.tokenizer.encode(t, true, special))
                .collect(),
            Prompts::Tokens(t) => t,
        };
        Ok((
            prompts,
            compile(&st2, lm, grammar.as_ref(), "response_format")?,
        ))
    })
    .await?;
    generate(st.clone(), req, prompts, constraint, false).await
}

/// Runs CPU-heavy request work on the blocking pool.
async fn blocking<T: Send + 'static>(
    st: Shared,
    f: impl FnOnce(&LoadedLm) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(st.lm()?))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
}

fn context_exceeded(param: &str, tokens: usize, context: usize, at_least: bool) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!(
            "the prompt has {}{tokens} tokens; this model's context is {context} tokens",
            if at_least { "at least " } else { "" }
        ),
        param: Some(param.into()),
        code: Some("context_length_exceeded"),
    }
}

/// Refuses, before tokenizing, a prompt of `bytes` bytes of text that cannot fit the context
/// whatever its tokens (no token covers more than the vocabulary's longest text).
fn refuse_long(lm: &LoadedLm, param: &str, bytes: usize) -> Result<(), ApiError> {
    let at_least = bytes / lm.tokenizer.max_token_bytes();
    if at_least >= lm.context_length {
        return Err(context_exceeded(param, at_least, lm.context_length, true));
    }
    Ok(())
}

/// Engine events a request may have waiting for its client, per choice.
const EVENT_BUFFER: usize = 1024;

/// Events of choice `index`.
type Tagged = (usize, Event);

/// A request's sequences in the engine: when the response is dropped (its client went
/// away, or it is done), those still queued are dropped too, never prefilled.
struct Queued {
    engine: EngineHandle,
    ids: Vec<u64>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        for &id in &self.ids {
            self.engine.cancel_waiting(id);
        }
    }
}

fn submit_all(
    st: &AppState,
    req: &GenRequest,
    prompts: &[Vec<u32>],
    constraint: Option<Box<kiln_engine::Constraint>>,
) -> Result<(mpsc::Receiver<Tagged>, Queued), ApiError> {
    let lm = st.lm()?;
    for (k, prompt) in prompts.iter().enumerate() {
        if prompt.len() >= lm.context_length {
            let param = if req.messages.is_some() {
                "messages".to_owned()
            } else if prompts.len() > 1 {
                format!("prompt[{k}]")
            } else {
                "prompt".to_owned()
            };
            return Err(context_exceeded(
                &param,
                prompt.len(),
                lm.context_length,
                false,
            ));
        }
    }
    let choices = prompts.len() * req.n;
    // Bounded: a client that stops reading a stream fills this, and the sink's refusal
    // cancels the sequence instead of queueing its tokens in memory without end.
    let (tx, rx) = mpsc::channel(EVENT_BUFFER * choices);
    let mut queued = Queued {
        engine: lm.engine.clone(),
        ids: Vec::with_capacity(choices),
    };
    // Choice `i` answers prompt `i / n`, as OpenAI numbers a batch's choices.
    for i in 0..choices {
        let mut params = req.params.clone();
        if let Some(s) = params.seed {
            params.seed = Some(s.wrapping_add((i % req.n) as u64));
        }
        let tx = tx.clone();
        let sink: kiln_engine::Sink = Box::new(move |e| tx.try_send((i, e)).is_ok());
        let id = lm
            .engine
            .submit(
                Request {
                    prompt: prompts[i / req.n].clone(),
                    params,
                    constraint: constraint.clone(),
                },
                sink,
            )
            .map_err(|e| match e {
                kiln_engine::SubmitError::Param(p) => ApiError::bad(p.param, p.to_string()),
                kiln_engine::SubmitError::QueueFull(_) => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    e.to_string(),
                    Some("queue_full"),
                ),
                kiln_engine::SubmitError::TooLarge { .. } => ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: e.to_string(),
                    param: Some("max_tokens".into()),
                    code: Some("context_length_exceeded"),
                },
                kiln_engine::SubmitError::Prompt(m) => ApiError::bad(
                    if req.messages.is_some() {
                        "messages"
                    } else {
                        "prompt"
                    },
                    m,
                ),
            })?;
        queued.ids.push(id);
    }
    Ok((rx, queued))
}

/// The engine dropped a request without finishing it: its thread stopped.
fn ended_early() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the engine stopped before finishing this request",
        Some("engine_error"),
    )
}

/// The `system_fingerprint` of every answer: kiln's version.
const FINGERPRINT: &str = concat!("kiln-", env!("CARGO_PKG_VERSION"));

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
        // The engine tells no one of a cancelled sequence (its client is gone); were one
        // to reach a client, it would read as OpenAI's own value for a cut-short answer.
        FinishReason::Cancelled => "stop",
    }
}

fn token_str(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let mut b = Vec::new();
    tok.token_bytes(id, true, &mut b);
    (String::from_utf8_lossy(&b).into_owned(), b)
}

fn chat_logprob(tok: &Tokenizer, lp: &TokenLogprob) -> response::ChatLogprob {
    let (token, bytes) = token_str(tok, lp.token);
    response::ChatLogprob {
        token,
        logprob: f64::from(lp.logprob),
        bytes,
        top_logprobs: Some(
            lp.top
                .iter()
                .map(|&(id, l)| {
                    let (token, bytes) = token_str(tok, id);
                    response::ChatLogprob {
                        token,
                        logprob: f64::from(l),
                        bytes,
                        top_logprobs: None,
                    }
                })
                .collect(),
        ),
    }
}

struct Choice {
    text: String,
    finish: Option<FinishReason>,
    logprobs: Vec<TokenLogprob>,
    usage: Usage,
}

struct Tracker {
    st: Shared,
    started: Instant,
    last: Vec<Option<Instant>>,
}

impl Tracker {
    fn token(&mut self, i: usize) {
        let now = Instant::now();
        match self.last[i] {
            None => self
                .st
                .metrics
                .ttft
                .observe(now.duration_since(self.started).as_secs_f64()),
            Some(t) => self
                .st
                .metrics
                .itl
                .observe(now.duration_since(t).as_secs_f64()),
        }
        self.last[i] = Some(now);
        self.st.metrics.generated_tokens.inc();
    }
}

async fn generate(
    st: Shared,
    req: GenRequest,
    prompts: Vec<Vec<u32>>,
    constraint: Option<Box<kiln_engine::Constraint>>,
    chat: bool,
) -> Result<Response, ApiError> {
    let (mut rx, queued) = submit_all(&st, &req, &prompts, constraint)?;
    // Prompt tokens, counted once per prompt as OpenAI does (not once per choice).
    let prompt_len: usize = prompts.iter().map(Vec::len).sum();
    let choices_n = prompts.len() * req.n;
    st.metrics.prompt_tokens.inc_by((prompt_len * req.n) as u64);
    let id = format!(
        "{}-{}",
        if chat { "chatcmpl" } else { "cmpl" },
        st.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let lm = st.lm()?;
    let model = lm.id.clone();
    let created = now_s();
    let mut tracker = Tracker {
        st: st.clone(),
        started: Instant::now(),
        last: vec![None; choices_n],
    };
    if !req.stream {
        let mut choices: Vec<Choice> = (0..choices_n)
            .map(|_| Choice {
                text: String::new(),
                finish: None,
                logprobs: Vec::new(),
                usage: Usage::default(),
            })
            .collect();
        let mut left = choices_n;
        while left > 0 {
            let Some((i, ev)) = rx.recv().await else {
                return Err(ended_early());
            };
            match ev {
                Event::Token { text, logprob, .. } => {
                    tracker.token(i);
                    choices[i].text.push_str(&text);
                    choices[i].logprobs.extend(logprob);
                }
                Event::Done { reason, usage } => {
                    choices[i].finish = Some(reason);
                    choices[i].usage = usage;
                    left -= 1;
                }
                Event::Failed(m) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        m,
                        Some("engine_error"),
                    ))
                }
            }
        }
        let completion: usize = choices.iter().map(|c| c.usage.completion_tokens).sum();
        // Prompt tokens every choice took from the prefix cache.
        let cached = choices
            .iter()
            .map(|c| c.usage.cached_tokens)
            .min()
            .unwrap_or(0);
        let tok = &lm.tokenizer;
        let out_choices: Vec<response::Choice> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut finish = c.finish.map(finish_str);
                if chat {
                    let calls = req.tools.as_ref().and_then(|t| t.read_calls(&c.text));
                    let message = match calls {
                        Some(calls) => {
                            finish = Some("tool_calls");
                            response::ChatMessage {
                                role: "assistant",
                                content: None,
                                tool_calls: Some(tools::calls_json(
                                    &calls,
                                    &format!("{id}_{i}"),
                                    false,
                                )),
                            }
                        }
                        None => response::ChatMessage {
                            role: "assistant",
                            content: Some(&c.text),
                            tool_calls: None,
                        },
                    };
                    let logprobs = req.logprobs.then(|| response::Logprobs::Chat {
                        content: c.logprobs.iter().map(|l| chat_logprob(tok, l)).collect(),
                    });
                    response::Choice::answer(i, Some(message), None, finish, logprobs)
                } else {
                    let logprobs = req.logprobs.then(|| completion_logprobs(tok, &c.logprobs));
                    response::Choice::answer(i, None, Some(&c.text), finish, logprobs)
                }
            })
            .collect();
        let usage = response::Usage::new(
            prompt_len,
            completion,
            cached,
            (
                choices.iter().find_map(|c| c.usage.proposer),
                choices.iter().map(|c| c.usage.draft_tokens).sum(),
                choices.iter().map(|c| c.usage.accepted_tokens).sum(),
            ),
        );
        let body = response::Completion {
            id: Some(&id),
            object: if chat {
                "chat.completion"
            } else {
                "text_completion"
            },
            created: Some(created),
            model: Some(&model),
            system_fingerprint: Some(FINGERPRINT),
            choices: out_choices,
            usage: Some(usage),
            ..Default::default()
        };
        return Ok(Json(body).into_response());
    }

    // Streaming: one chunk per token event; a final usage chunk if asked; then [DONE].
    let tok = lm.tokenizer.clone();
    let n = choices_n;
    let include_usage = req.include_usage;
    let want_lp = req.logprobs;
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let tools = req.tools.clone().filter(|t| t.active() && chat);
    let (id2, model2, id3) = (id.clone(), model.clone(), id.clone());
    let chunk = move |choice: response::Choice<'_>| -> SseEvent {
        event(&response::Completion {
            id: Some(&id),
            object,
            created: Some(created),
            model: Some(&model),
            system_fingerprint: Some(FINGERPRINT),
            choices: vec![choice],
            ..Default::default()
        })
    };
    struct S {
        rx: mpsc::Receiver<Tagged>,
        _queued: Queued,
        left: usize,
        completion: usize,
        cached: Option<usize>,
        started: Vec<bool>,
        done: bool,
        pending: std::collections::VecDeque<SseEvent>,
        /// With tools, each choice's text, held until its end tells whether it calls them.
        held: Vec<String>,
        /// Speculation's proposer, proposals and those taken, over the choices.
        lookup: (Option<&'static str>, usize, usize),
    }
    let s = S {
        rx,
        _queued: queued,
        left: n,
        completion: 0,
        cached: None,
        started: vec![false; n],
        done: false,
        pending: Default::default(),
        held: vec![String::new(); n],
        lookup: (None, 0, 0),
    };
    let usage_chunk = move |completion: usize,
                            cached: usize,
                            lookup: (Option<&'static str>, usize, usize)|
          -> SseEvent {
        event(&response::Completion {
            id: Some(&id2),
            object,
            created: Some(created),
            model: Some(&model2),
            system_fingerprint: Some(FINGERPRINT),
            usage: Some(response::Usage::new(prompt_len, completion, cached, lookup)),
            ..Default::default()
        })
    };
    let events = stream::unfold((s, tracker), move |(mut s, mut tracker)| {
        let chunk = chunk.clone();
        let tok = tok.clone();
        let tools = tools.clone();
        let usage_chunk = usage_chunk.clone();
        let id3 = id3.clone();
        async move {
            loop {
                if let Some(e) = s.pending.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (s, tracker)));
                }
                if s.done {
                    return None;
                }
                if s.left == 0 {
                    if include_usage {
                        s.pending.push_back(usage_chunk(
                            s.completion,
                            s.cached.unwrap_or(0),
                            s.lookup,
                        ));
                    }
                    s.pending.push_back(SseEvent::default().data("[DONE]"));
                    s.done = true;
                    continue;
                }
                let Some((i, ev)) = s.rx.recv().await else {
                    let e = ended_early();
                    s.pending.push_back(stream_error(&e.message));
                    s.left = 0;
                    continue;
                };
                match ev {
                    Event::Token { text, logprob, .. } => {
                        tracker.token(i);
                        if chat && !s.started[i] {
                            s.started[i] = true;
                            let delta = response::Delta {
                                role: Some("assistant"),
                                content: Some(""),
                                tool_calls: None,
                            };
                            s.pending
                                .push_back(chunk(response::Choice::delta(i, delta)));
                        }
                        let lp = match &logprob {
                            Some(l) if want_lp && chat => Some(response::Logprobs::Chat {
                                content: vec![chat_logprob(&tok, l)],
                            }),
                            Some(l) if want_lp => {
                                Some(completion_logprobs(&tok, std::slice::from_ref(l)))
                            }
                            _ => None,
                        };
                        if tools.is_some() {
                            s.held[i].push_str(&text);
                        } else if !text.is_empty() || want_lp {
                            s.pending.push_back(chunk(if chat {
                                let delta = response::Delta {
                                    content: Some(&text),
                                    ..Default::default()
                                };
                                response::Choice::chunk(i, Some(delta), None, Some(lp), None)
                            } else {
                                response::Choice::chunk(i, None, Some(&text), Some(lp), None)
                            }));
                        }
                    }
                    Event::Done { reason, usage } => {
                        s.completion += usage.completion_tokens;
                        s.lookup.0 = s.lookup.0.or(usage.proposer);
                        s.lookup.1 += usage.draft_tokens;
                        s.lookup.2 += usage.accepted_tokens;
                        s.cached = Some(
                            s.cached
                                .map_or(usage.cached_tokens, |c| c.min(usage.cached_tokens)),
                        );
                        s.left -= 1;
                        let mut finish = finish_str(reason);
                        if let Some(t) = &tools {
                            let held = std::mem::take(&mut s.held[i]);
                            match t.read_calls(&held) {
                                Some(calls) => {
                                    finish = "tool_calls";
                                    let calls =
                                        tools::calls_json(&calls, &format!("{id3}_{i}"), true);
                                    let delta = response::Delta {
                                        tool_calls: Some(calls),
                                        ..Default::default()
                                    };
                                    s.pending
                                        .push_back(chunk(response::Choice::delta(i, delta)));
                                }
                                None if !held.is_empty() => {
                                    let delta = response::Delta {
                                        content: Some(&held),
                                        ..Default::default()
                                    };
                                    s.pending
                                        .push_back(chunk(response::Choice::delta(i, delta)));
                                }
                                None => {}
                            }
                        }
                        s.pending.push_back(chunk(if chat {
                            let delta = response::Delta::default();
                            response::Choice::chunk(i, Some(delta), None, None, Some(finish))
                        } else {
                            response::Choice::chunk(i, None, Some(""), None, Some(finish))
                        }));
                    }
                    Event::Failed(m) => {
                        s.pending.push_back(stream_error(&m));
                        s.left = 0;
                    }
                }
            }
        }
    });
    Ok(sse(events))
}

/// An event of a stream, its data `v` as JSON.
fn event(v: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(v).unwrap_or_default())
}

/// An error in a stream whose first chunk went out.
fn stream_error(message: &str) -> SseEvent {
    event(&response::StreamError {
        error: response::StreamErrorBody {
            message,
            kind: "server_error",
        },
    })
}

fn sse<S>(events: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    // Proxies (nginx, which reads X-Accel-Buffering) must pass each event on as it comes.
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

fn completion_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> response::Logprobs {
    response::Logprobs::Completion {
        tokens: lps.iter().map(|l| token_str(tok, l.token).0).collect(),
        token_logprobs: lps.iter().map(|l| f64::from(l.logprob)).collect(),
        top_logprobs: lps
            .iter()
            .map(|l| {
                let mut top = response::TopLogprobs::default();
                for &(id, p) in &l.top {
                    top.push(token_str(tok, id).0, f64::from(p));
                }
                top
            })
            .collect(),
    }
}

async fn ising_empathy(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    let req: kiln_ising::api::EmpathyRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("body", format!("invalid empathy request: {e}")))?;
    let out = tokio::task::spawn_blocking(move || kiln_ising::api::handle_empathy_request(&req))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(|e| ApiError::bad("body", e.to_string()))?;
    Ok(Json(out).into_response())
}

async fn ising_social(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    let req: kiln_ising::api::SocialRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("body", format!("invalid social request: {e}")))?;
    let out = tokio::task::spawn_blocking(move || kiln_ising::api::handle_social_request(&req))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(|e| ApiError::bad("body", e.to_string()))?;
    Ok(Json(out).into_response())
}
