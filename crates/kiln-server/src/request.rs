//! OpenAI-style request bodies, read into typed structs (serde) so that a field of the wrong
//! type is refused naming it (serde_path_to_error), then checked value by value, so that
//! every error names its field.

use kiln_engine::SamplingParams;
use kiln_irp::Profile;
use kiln_tokenizer::chat::Message;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A parsed generation request, chat or completion.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// The `model` field.
    pub model: Option<String>,
    /// Chat messages (chat endpoint) ...
    pub messages: Option<Vec<Message>>,
    /// ... or the raw prompts (completions endpoint): one or a batch, each answered with
    /// `n` choices.
    pub prompt: Option<Prompts>,
    /// Sampling parameters.
    pub params: SamplingParams,
    /// Number of choices.
    pub n: usize,
    /// Stream with server-sent events.
    pub stream: bool,
    /// Send a last chunk with usage counts.
    pub include_usage: bool,
    /// Whether log-probabilities were asked for.
    pub logprobs: bool,
    /// Refine the answer with this profile (the `refine` field; chat only).
    pub refine: Option<kiln_irp::Profile>,
    /// Read control tokens written in a completions prompt (kiln's `parse_special`).
    pub parse_special: bool,
    /// What the answer must be (`response_format`).
    pub format: Option<kiln_engine::Grammar>,
    /// Functions the model may call (chat only).
    pub tools: Option<crate::tools::Tools>,
}

/// Most prompts one completions request may carry.
pub const MAX_PROMPTS: usize = 64;

/// The `prompt` of a completions request: texts or token ids, one or a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompts {
    /// Texts, tokenized by the server.
    Texts(Vec<String>),
    /// Token ids, used as they are.
    Tokens(Vec<Vec<u32>>),
}

impl Prompts {
    /// How many prompts.
    pub fn len(&self) -> usize {
        match self {
            Prompts::Texts(t) => t.len(),
            Prompts::Tokens(t) => t.len(),
        }
    }

    /// Bytes of text (0 for token ids).
    pub fn text_bytes(&self) -> usize {
        match self {
            Prompts::Texts(t) => t.iter().map(String::len).sum(),
            Prompts::Tokens(_) => 0,
        }
    }
}

/// Reads a request body as `T`: a JSON object, each of whose fields `T` knows must have its
/// type (fields it does not know are ignored). A type error names the field by its path
/// (`messages[0].role`, `tools[1].function.parameters`), as the checks that follow do.
///
/// A body that starts as an object is read straight into `T`, without a `serde_json::Value`
/// of it first: a body of 20,000 messages then takes one copy of them in memory, not two
/// (and the allocator keeps less after it).
pub(crate) fn read<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Not an object (or not JSON): refused as such.
        return typed(object(body)?);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let t = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_data() {
            // The message as read from a value: without serde_json's position in the body.
            let inner = e.inner();
            let text = inner.to_string();
            let pos = format!(" at line {} column {}", inner.line(), inner.column());
            let text = text.strip_suffix(&pos).unwrap_or(&text).to_owned();
            path_error(e.path().to_string(), text, "")
        } else {
            not_json(e.into_inner())
        }
    })?;
    de.end().map_err(not_json)?;
    Ok(t)
}

fn not_json(e: serde_json::Error) -> ApiError {
    ApiError::bad("body", format!("the request body is not valid JSON: {e}"))
}

/// A request body as a JSON object: one that is not JSON, too deep, or not an object is
/// refused as such, before any field is read.
fn object(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(not_json)?;
    if !v.is_object() {
        return Err(ApiError::bad(
            "body",
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// The fields of a body [`object`] read, as `T` (see [`read`]).
fn typed<T: DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    typed_at(v, "")
}

/// Field `at` of a request (`tools[0].function`) as `T`; an error names the field within.
pub(crate) fn typed_at<T: DeserializeOwned>(v: Value, at: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v)
        .map_err(|e| path_error(e.path().to_string(), e.inner().to_string(), at))
}

/// A type error (`message`) at `path` within field `at`.
fn path_error(path: String, message: String, at: &str) -> ApiError {
    let path = match (at, path) {
        ("", p) => p,
        (at, p) if p == "." => at.to_owned(),
        (at, p) if p.starts_with('[') => format!("{at}{p}"),
        (at, p) => format!("{at}.{p}"),
    };
    ApiError::bad(&param_of(&path), format!("`{path}`: {message}"))
}

/// The request field an error at `path` names: the path itself, but the whole field for the
/// lists and maps whose errors have always named the whole field.
fn param_of(path: &str) -> String {
    if path == "." {
        return "body".into();
    }
    if path == "stream_options.include_usage" {
        return "include_usage".into();
    }
    for whole in ["prompt", "input", "tokens", "stop", "logit_bias"] {
        if path
            .strip_prefix(whole)
            .is_some_and(|rest| rest.starts_with(['[', '.']))
        {
            return whole.into();
        }
    }
    path.into()
}

/// In a struct as `#[serde(flatten)] _object: ObjectOnly`: the struct is read from a JSON
/// object only (serde's derive otherwise also reads an array of its fields, in order), its
/// unknown fields ignored.
pub(crate) type ObjectOnly = IgnoredAny;

/// A field read when it has its type and ignored otherwise, as kiln has always read some
/// fields of OpenAI's requests (a tool's `description`, a schema's `strict`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Lenient<T> {
    /// Of its type.
    Is(T),
    /// Of another.
    Not(IgnoredAny),
}

impl<T> Lenient<T> {
    /// The value when it has its type.
    pub(crate) fn get(self) -> Option<T> {
        match self {
            Lenient::Is(t) => Some(t),
            Lenient::Not(_) => None,
        }
    }
}

/// The value of an optional lenient field.
pub(crate) fn lenient<T>(v: Option<Lenient<T>>) -> Option<T> {
    v.and_then(Lenient::get)
}

/// OpenAI's completions and embeddings input: a string, strings, token ids, or lists of token
/// ids; anything else is kept to say what is wrong with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TextsOrIds {
    /// One text.
    Text(String),
    /// Texts.
    Texts(Vec<String>),
    /// One list of token ids.
    Ids(Vec<u32>),
    /// Lists of token ids.
    Batch(Vec<Vec<u32>>),
    /// None of these.
    Other(Value),
}

impl TextsOrIds {
    /// The prompts of field `param`, at most `max` of them (a list of token ids is one).
    pub(crate) fn prompts(self, param: &str, max: usize) -> Result<Prompts, ApiError> {
        let bad = |m: String| ApiError::bad(param, m);
        let count = |n: usize| {
            if n == 0 {
                Err(bad(format!("`{param}` is an empty list")))
            } else if n > max {
                Err(bad(format!("`{param}` holds {n} inputs, at most {max}")))
            } else {
                Ok(())
            }
        };
        match self {
            TextsOrIds::Text(t) => Ok(Prompts::Texts(vec![t])),
            TextsOrIds::Texts(t) => count(t.len()).map(|()| Prompts::Texts(t)),
            TextsOrIds::Ids(ids) => Ok(Prompts::Tokens(vec![ids])),
            TextsOrIds::Batch(b) => {
                count(b.len())?;
                if let Some(i) = b.iter().position(Vec::is_empty) {
                    return Err(bad(format!("`{param}[{i}]` is an empty list of tokens")));
                }
                Ok(Prompts::Tokens(b))
            }
            TextsOrIds::Other(v) => Err(bad(what_is_wrong(&v, param, max))),
        }
    }
}

/// What makes `v` none of the shapes of [`TextsOrIds`].
fn what_is_wrong(v: &Value, param: &str, max: usize) -> String {
    let Value::Array(a) = v else {
        return format!("`{param}` must be a string, an array of strings or token ids, got {v}");
    };
    let Some(first) = a.first() else {
        return format!("`{param}` is an empty list");
    };
    if a.len() > max && !first.is_number() {
        return format!("`{param}` holds {} inputs, at most {max}", a.len());
    }
    let not_id = |t: &Value| t.as_u64().is_none_or(|t| t > u64::from(u32::MAX));
    match first {
        Value::String(_) => match a.iter().position(|s| !s.is_string()) {
            Some(i) => format!("`{param}[{i}]` must be a string like the first"),
            None => format!("`{param}` must be a list of strings"),
        },
        Value::Number(_) => match a.iter().find(|t| not_id(t)) {
            Some(t) => format!("`{param}` holds {t}, which is not a token id"),
            None => format!("`{param}` must be a list of token ids"),
        },
        Value::Array(_) => {
            for (i, t) in a.iter().enumerate() {
                let Value::Array(t) = t else {
                    return format!("`{param}[{i}]` must be a list of token ids like the first");
                };
                if let Some(bad) = t.iter().find(|t| not_id(t)) {
                    return format!("`{param}[{i}]` holds {bad}, which is not a token id");
                }
            }
            format!("`{param}` must be lists of token ids")
        }
        v => format!("`{param}[0]` must be a string or token ids, got {v}"),
    }
}

/// A chat message as OpenAI sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "an object")]
pub(crate) struct MessageIn {
    #[serde(flatten)]
    _object: ObjectOnly,
    role: Option<String>,
    content: Option<ContentIn>,
    /// Earlier calls, as the template reads them (see `tools::normalize_calls`).
    tool_calls: Option<Value>,
    tool_call_id: Option<String>,
    name: Option<String>,
}

/// A message's `content`: text, or parts of which kiln reads the text ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ContentIn {
    Text(String),
    Parts(Vec<Lenient<PartIn>>),
    Other(Value),
}

/// A content part: `{"type": "text", "text": ...}` is the one kiln reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "an object")]
struct PartIn {
    #[serde(flatten)]
    _object: ObjectOnly,
    #[serde(rename = "type")]
    kind: Option<Lenient<String>>,
    text: Option<Lenient<String>>,
}

/// Reads `messages`: roles, text contents (or text parts), and earlier tool calls and results.
pub(crate) fn chat_messages(v: Option<Vec<MessageIn>>) -> Result<Vec<Message>, ApiError> {
    let arr = match v {
        Some(a) if !a.is_empty() => a,
        Some(_) => return Err(ApiError::bad("messages", "`messages` is empty")),
        None => return Err(ApiError::bad("messages", "`messages` is required")),
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, msg) in arr.into_iter().enumerate() {
        let p = format!("messages[{i}]");
        let role = msg.role.ok_or_else(|| {
            ApiError::bad(&format!("{p}.role"), format!("`{p}.role` must be a string"))
        })?;
        if !matches!(
            role.as_str(),
            "system" | "user" | "assistant" | "developer" | "tool"
        ) {
            return Err(ApiError::bad(
                &format!("{p}.role"),
                format!("`{p}.role` is `{role}`, expected system, user or assistant"),
            ));
        }
        let content = match msg.content {
            Some(ContentIn::Text(s)) => s,
            Some(ContentIn::Parts(parts)) => {
                let mut s = String::new();
                for part in parts {
                    let (kind, text) = match part.get() {
                        Some(p) => (lenient(p.kind), lenient(p.text)),
                        None => (None, None),
                    };
                    match kind.as_deref() {
                        Some("text") => s.push_str(text.as_deref().unwrap_or("")),
                        other => {
                            return Err(ApiError::bad(
                                &format!("{p}.content"),
                                format!("content part type {other:?} is not supported (text only)"),
                            ))
                        }
                    }
                }
                s
            }
            None => String::new(),
            Some(ContentIn::Other(v)) => {
                return Err(ApiError::bad(
                    &format!("{p}.content"),
                    format!("`{p}.content` must be a string, got {v}"),
                ))
            }
        };
        // Earlier calls and the results that answer them, for the template (or, on a
        // template without tools, as the text that made the calls: `Tools::add_to`).
        let tool_calls = match msg.tool_calls {
            Some(calls) if role == "assistant" && !calls.is_null() => {
                Some(crate::tools::normalize_calls(&p, &calls)?)
            }
            _ => None,
        };
        let role = if role == "developer" { "system" } else { &role };
        out.push(Message {
            tool_calls,
            tool_call_id: msg.tool_call_id,
            name: msg.name,
            ..Message::new(role, content)
        });
    }
    Ok(out)
}

/// What the chat and completions endpoints read differently: the prompt, `logprobs`, and
/// the fields of tools (which completions refuses or ignores). A field one endpoint does not
/// read is `IgnoredAny` there: any value is taken and dropped, as before it was typed.
pub(crate) trait Endpoint {
    /// `messages`.
    type Messages: DeserializeOwned;
    /// `prompt`.
    type Prompt: DeserializeOwned;
    /// `logprobs`: a flag (chat) or a count (completions).
    type Logprobs: DeserializeOwned;
    /// `top_logprobs`.
    type TopLogprobs: DeserializeOwned;
    /// `tools`.
    type Tools: DeserializeOwned;
    /// `tool_choice`.
    type ToolChoice: DeserializeOwned;
    /// `parallel_tool_calls`.
    type Parallel: DeserializeOwned;
}

/// `/v1/chat/completions`.
pub(crate) struct Chat;

impl Endpoint for Chat {
    type Messages = Vec<MessageIn>;
    type Prompt = IgnoredAny;
    type Logprobs = bool;
    type TopLogprobs = u64;
    type Tools = Vec<crate::tools::ToolIn>;
    type ToolChoice = crate::tools::ToolChoiceIn;
    type Parallel = bool;
}

/// `/v1/completions`.
pub(crate) struct Completion;

impl Endpoint for Completion {
    type Messages = IgnoredAny;
    type Prompt = TextsOrIds;
    type Logprobs = u64;
    type TopLogprobs = IgnoredAny;
    type Tools = IgnoredAny;
    type ToolChoice = IgnoredAny;
    type Parallel = IgnoredAny;
}

/// A chat request body.
pub(crate) type ChatRequest = GenBody<Chat>;
/// A completions request body.
pub(crate) type CompletionRequest = GenBody<Completion>;

/// The body of a chat or completions request, each field of its type; [`parse`] then checks
/// the values and how they combine.
#[derive(Deserialize)]
#[serde(bound = "")]
pub(crate) struct GenBody<E: Endpoint> {
    model: Option<String>,
    messages: Option<E::Messages>,
    prompt: Option<E::Prompt>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    min_p: Option<f64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    repetition_penalty: Option<f64>,
    seed: Option<Seed>,
    max_completion_tokens: Option<u64>,
    max_tokens: Option<u64>,
    stop: Option<Stop>,
    logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<E::Logprobs>,
    top_logprobs: Option<E::TopLogprobs>,
    response_format: Option<crate::tools::ResponseFormatIn>,
    tools: Option<E::Tools>,
    tool_choice: Option<E::ToolChoice>,
    parallel_tool_calls: Option<E::Parallel>,
    /// Refinement: a profile name or an object of profile keys (see [`parse_refine`]).
    refine: Option<Value>,
    /// kiln's: control tokens in a completions prompt.
    parse_special: Option<bool>,
    /// kiln's (as vLLM's and llama.cpp's): generate through end tokens.
    ignore_eos: Option<bool>,
    /// kiln's: speculative decoding by prompt lookup.
    prompt_lookup: Option<u64>,
    /// kiln's: speculative decoding with the server's draft model.
    draft_max: Option<u64>,
    /// OpenAI's deprecated function calling, refused by name.
    functions: Option<IgnoredAny>,
    /// See `functions`.
    function_call: Option<IgnoredAny>,
}

/// `seed`: any integer (a negative one is taken as its two's complement, as OpenAI takes it).
#[derive(Deserialize)]
#[serde(untagged)]
enum Seed {
    Unsigned(u64),
    Signed(i64),
    Other(IgnoredAny),
}

/// `stop`: a string or strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
    Other(Value),
}

/// `stream_options`.
#[derive(Deserialize)]
#[serde(expecting = "an object")]
struct StreamOptions {
    #[serde(flatten)]
    _object: ObjectOnly,
    include_usage: Option<bool>,
}

/// Request fields of the OpenAI API that kiln does not implement: refused by name rather
/// than accepted and ignored (a client asking for tool calls the old way would otherwise get
/// free text and not know it).
fn refuse_unimplemented<E: Endpoint>(b: &GenBody<E>) -> Result<(), ApiError> {
    for (field, set, what) in [
        (
            "functions",
            b.functions.is_some(),
            "the deprecated function calling; use `tools`",
        ),
        (
            "function_call",
            b.function_call.is_some(),
            "the deprecated function calling; use `tool_choice`",
        ),
    ] {
        if set {
            return Err(ApiError::bad(
                field,
                format!("`{field}` is not supported by kiln ({what}); remove the field"),
            ));
        }
    }
    Ok(())
}

fn in_range(k: &str, v: f64, lo: f64, hi: f64) -> Result<f32, ApiError> {
    if v < lo || v > hi {
        return Err(ApiError::bad(
            k,
            format!("`{k}` is {v}, expected {lo} to {hi}"),
        ));
    }
    Ok(v as f32)
}

/// Parses a chat (`chat == true`) or completions body.
///
/// `default_max_tokens` is `max_tokens` when the request gives none; `default_draft_max` is
/// `draft_max` (speculative decoding with the server's draft model) when the request gives
/// none, for requests it can serve (free text, neither refined nor with prompt lookup).
pub fn parse(
    body: &[u8],
    chat: bool,
    default_max_tokens: usize,
    default_draft_max: usize,
) -> Result<GenRequest, ApiError> {
    // Types first, then the checks in the order kiln has always made them.
    if chat {
        let mut b: ChatRequest = read(body)?;
        refuse_unimplemented(&b)?;
        let special = parse_special(b.parse_special, true)?;
        let messages = chat_messages(b.messages.take())?;
        let format = crate::tools::response_format(b.response_format.take())?;
        let tools = crate::tools::parse(
            b.tools.take(),
            b.tool_choice.take(),
            b.parallel_tool_calls.take(),
        )?;
        let input = Input::Chat(messages, tools, (b.logprobs.take(), b.top_logprobs.take()));
        checked(
            b,
            input,
            special,
            format,
            default_max_tokens,
            default_draft_max,
        )
    } else {
        let mut b: CompletionRequest = read(body)?;
        refuse_unimplemented(&b)?;
        let special = parse_special(b.parse_special, false)?;
        let prompt = match b.prompt.take() {
            Some(p) => p.prompts("prompt", MAX_PROMPTS)?,
            None => return Err(ApiError::bad("prompt", "`prompt` is required")),
        };
        let format = crate::tools::response_format(b.response_format.take())?;
        if b.tools.is_some() {
            return Err(ApiError::bad(
                "tools",
                "`tools` is available on /v1/chat/completions only",
            ));
        }
        let input = Input::Completion(prompt, b.logprobs.take());
        checked(
            b,
            input,
            special,
            format,
            default_max_tokens,
            default_draft_max,
        )
    }
}

/// Reads kiln's `parse_special` extension: whether control tokens written in a completions
/// `prompt` (such as `<|im_start|>`) are read as control tokens. Off by default, so that text
/// from users cannot forge turns; chat requests never take it (the template places them).
fn parse_special(v: Option<bool>, chat: bool) -> Result<bool, ApiError> {
    match v {
        None => Ok(false),
        Some(_) if chat => Err(ApiError::bad(
            "parse_special",
            "`parse_special` applies to /v1/completions only; chat prompts get control tokens from the model's template, never from message contents",
        )),
        Some(b) => Ok(b),
    }
}

/// What [`parse`] read apart for each endpoint.
enum Input {
    Chat(
        Vec<Message>,
        Option<crate::tools::Tools>,
        (Option<bool>, Option<u64>),
    ),
    Completion(Prompts, Option<u64>),
}

/// The checks of a typed body's values and how they combine, in the order kiln has always
/// made them.
fn checked<E: Endpoint>(
    b: GenBody<E>,
    input: Input,
    parse_special: bool,
    format: Option<kiln_engine::Grammar>,
    default_max_tokens: usize,
    default_draft_max: usize,
) -> Result<GenRequest, ApiError> {
    let chat = matches!(input, Input::Chat(..));
    let model = b.model;
    // Taken out of `input`, not copied (a body may hold 20,000 messages); the logprobs
    // fields as chat's `(logprobs, top_logprobs)` or completions' `logprobs`.
    let (messages, prompt, tools, logprob_fields) = match input {
        Input::Chat(m, t, lp) => (Some(m), None, t, Ok(lp)),
        Input::Completion(p, k) => (None, Some(p), None, Err(k)),
    };
    let shaped = format.is_some() || tools.as_ref().is_some_and(|t| t.active());
    for (field, v) in [
        ("prompt_lookup", b.prompt_lookup),
        ("draft_max", b.draft_max),
    ] {
        if shaped && v.is_some_and(|k| k > 0) {
            return Err(ApiError::bad(
                field,
                format!("`{field}` does not combine with `response_format` or `tools`"),
            ));
        }
    }
    if format.is_some() && tools.as_ref().is_some_and(|t| t.grammar().is_some()) {
        return Err(ApiError::bad(
            "response_format",
            "`response_format` and a forced tool call (`tool_choice` required or a function) cannot both shape the answer",
        ));
    }
    let mut refine = parse_refine(b.refine.as_ref())?;
    if refine.is_some() && (format.is_some() || tools.is_some()) {
        return Err(ApiError::bad(
            "refine",
            "`refine` does not combine with `response_format` or `tools`",
        ));
    }
    if refine.is_some() && !chat {
        return Err(ApiError::bad(
            "refine",
            "`refine` is available on /v1/chat/completions only",
        ));
    }

    let mut p = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        max_tokens: default_max_tokens,
        ..Default::default()
    };
    if let Some(v) = b.temperature {
        p.temperature = in_range("temperature", v, 0.0, 2.0)?;
    }
    if let Some(v) = b.top_p {
        if v <= 0.0 || v > 1.0 {
            return Err(ApiError::bad(
                "top_p",
                format!("`top_p` is {v}, expected (0, 1]"),
            ));
        }
        p.top_p = v as f32;
    }
    if let Some(v) = b.top_k {
        p.top_k = v.min(1 << 20) as usize;
    }
    if let Some(v) = b.min_p {
        p.min_p = in_range("min_p", v, 0.0, 0.999)?;
    }
    if let Some(v) = b.frequency_penalty {
        p.frequency_penalty = in_range("frequency_penalty", v, -2.0, 2.0)?;
    }
    if let Some(v) = b.presence_penalty {
        p.presence_penalty = in_range("presence_penalty", v, -2.0, 2.0)?;
    }
    if let Some(v) = b.repetition_penalty {
        if v <= 0.0 || v > 10.0 {
            return Err(ApiError::bad(
                "repetition_penalty",
                format!("`repetition_penalty` is {v}, expected (0, 10]"),
            ));
        }
        p.repetition_penalty = v as f32;
    }
    p.seed = match b.seed {
        None => None,
        Some(Seed::Unsigned(s)) => Some(s),
        // Negative seeds are accepted, as OpenAI does.
        Some(Seed::Signed(s)) => Some(s as u64),
        Some(Seed::Other(_)) => return Err(ApiError::bad("seed", "`seed` must be an integer")),
    };
    for (key, v) in [
        ("max_completion_tokens", b.max_completion_tokens),
        ("max_tokens", b.max_tokens),
    ] {
        if let Some(v) = v {
            if v == 0 || v > 1 << 20 {
                return Err(ApiError::bad(
                    key,
                    format!("`{key}` is {v}, expected at least 1"),
                ));
            }
            p.max_tokens = v as usize;
            break;
        }
    }
    match b.stop {
        None => {}
        Some(Stop::One(s)) => p.stop = vec![s],
        Some(Stop::Many(a)) => p.stop = a,
        Some(Stop::Other(Value::Array(_))) => {
            return Err(ApiError::bad("stop", "`stop` entries must be strings"))
        }
        Some(Stop::Other(v)) => {
            return Err(ApiError::bad(
                "stop",
                format!("`stop` must be a string or an array of strings, got {v}"),
            ))
        }
    }
    if let Some(o) = b.logit_bias {
        if o.len() > 1024 {
            return Err(ApiError::bad(
                "logit_bias",
                format!("`logit_bias` has {} entries, at most 1024", o.len()),
            ));
        }
        for (k, b) in o {
            let t: u32 = k.parse().map_err(|_| {
                ApiError::bad(
                    "logit_bias",
                    format!("`logit_bias` key `{k}` is not a token id"),
                )
            })?;
            p.logit_bias
                .push((t, in_range("logit_bias", b, -100.0, 100.0)?));
        }
    }
    p.ignore_eos = b.ignore_eos.unwrap_or(false);
    if let Some(k) = b.prompt_lookup {
        p.prompt_lookup = k.min(1 << 20) as usize;
    }
    if p.prompt_lookup > 0 && refine.is_some() {
        return Err(ApiError::bad(
            "prompt_lookup",
            "`prompt_lookup` does not combine with `refine` (which samples its candidates)",
        ));
    }
    match b.draft_max {
        Some(k) => p.draft_max = k.min(1 << 20) as usize,
        None if !shaped && refine.is_none() && p.prompt_lookup == 0 => {
            p.draft_max = default_draft_max
        }
        None => {}
    }
    if p.draft_max > 0 && refine.is_some() {
        return Err(ApiError::bad(
            "draft_max",
            "`draft_max` does not combine with `refine` (which decodes its candidates as one batch)",
        ));
    }
    let n = b.n.unwrap_or(1);
    if !(1..=16).contains(&n) {
        return Err(ApiError::bad("n", format!("`n` is {n}, expected 1 to 16")));
    }
    if let Some(p) = &prompt {
        if p.len() * n as usize > MAX_PROMPTS {
            return Err(ApiError::bad(
                "n",
                format!(
                    "{} prompts with `n` {n} make {} choices, at most {MAX_PROMPTS}",
                    p.len(),
                    p.len() * n as usize
                ),
            ));
        }
    }
    let stream = b.stream.unwrap_or(false);
    let include_usage = b
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let logprobs = match logprob_fields {
        Ok((on, top)) => {
            let on = on.unwrap_or(false);
            let top = top.unwrap_or(0);
            if top > 20 {
                return Err(ApiError::bad(
                    "top_logprobs",
                    format!("`top_logprobs` is {top}, at most 20"),
                ));
            }
            if top > 0 && !on {
                return Err(ApiError::bad(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
            if on {
                p.logprobs = Some(top as usize);
            }
            on
        }
        Err(k) => match k {
            Some(k) if k > 5 => {
                return Err(ApiError::bad(
                    "logprobs",
                    format!("`logprobs` is {k}, at most 5"),
                ))
            }
            Some(k) => {
                p.logprobs = Some(k as usize);
                true
            }
            None => false,
        },
    };
    p.validate()
        .map_err(|e| ApiError::bad(e.param, e.to_string()))?;
    if let Some(r) = &mut refine {
        if n != 1 || logprobs {
            return Err(ApiError::bad(
                "refine",
                "`refine` returns one refined choice: it does not combine with `n` > 1 or `logprobs`",
            ));
        }
        if let Some(seed) = p.seed {
            r.seed = seed;
        }
    }
    Ok(GenRequest {
        model,
        messages,
        prompt,
        params: p,
        n: n as usize,
        stream,
        include_usage,
        logprobs,
        refine,
        parse_special,
        format,
        tools,
    })
}

const FIELD: &str = "request field `refine`";

/// Reads the `refine` field: a profile name, or an object with `profile` and any profile keys.
pub(crate) fn parse_refine(v: Option<&Value>) -> Result<Option<Profile>, ApiError> {
    let bad = |e: kiln_irp::ProfileError| {
        let param = match &e {
            kiln_irp::ProfileError::Value { key, .. }
            | kiln_irp::ProfileError::UnknownKey { key, .. } => format!("refine.{key}"),
            _ => "refine".into(),
        };
        ApiError::bad(&param, e.to_string())
    };
    let builtin = |name: &str| -> Result<Profile, ApiError> {
        Profile::builtin(name)
            .ok_or_else(|| {
                ApiError::bad(
                    "refine.profile",
                    format!("`refine.profile` is `{name}`; expected edge, desktop or research"),
                )
            })?
            .map_err(bad)
    };
    let obj: &Map<String, Value> = match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => return builtin("desktop").map(Some),
        Some(Value::String(name)) => return builtin(name).map(Some),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ApiError::bad(
                "refine",
                format!("`refine` must be a profile name or an object, got {other}"),
            ))
        }
    };
    let mut p = match obj.get("profile") {
        None | Some(Value::Null) => builtin("desktop")?,
        Some(Value::String(name)) => builtin(name)?,
        Some(other) => {
            return Err(ApiError::bad(
                "refine.profile",
                format!("`refine.profile` must be a string, got {other}"),
            ))
        }
    };
    for (k, v) in obj {
        if k == "profile" {
            continue;
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ApiError::bad(
                    &format!("refine.{k}"),
                    format!("`refine.{k}` must be a string, number or boolean, got {other}"),
                ))
            }
        };
        p.set(k, &text, FIELD).map_err(bad)?;
    }
    p.check(FIELD).map_err(bad)?;
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(v: Value) -> Result<GenRequest, ApiError> {
        parse(v.to_string().as_bytes(), true, 16, 0)
    }

    fn completion(v: Value) -> Result<GenRequest, ApiError> {
        parse(v.to_string().as_bytes(), false, 16, 0)
    }

    /// The field an error names, and its message.
    fn refused(r: Result<GenRequest, ApiError>) -> (String, String) {
        let e = r.expect_err("refused");
        assert_eq!(e.status.as_u16(), 400);
        (e.param.unwrap_or_default(), e.message)
    }

    #[test]
    fn unimplemented_fields_are_named() {
        for f in ["functions", "function_call"] {
            let mut b = json!({"prompt": "x"});
            b[f] = json!({"type": "sound"});
            let (param, message) = refused(completion(b.clone()));
            assert_eq!(param, f);
            assert!(message.contains(f), "{message}");
            b[f] = Value::Null;
            assert!(completion(b).is_ok());
        }
        let b = |p: Value| json!({"prompt": "x", "parse_special": p});
        assert!(completion(b(json!(true))).unwrap().parse_special);
        let msgs = json!([{"role": "user", "content": "x"}]);
        for p in [json!(true), json!(false)] {
            let body = json!({"messages": msgs, "parse_special": p});
            assert_eq!(refused(chat(body)).0, "parse_special");
        }
        assert_eq!(refused(completion(b(json!(1)))).0, "parse_special");
    }

    #[test]
    fn type_errors_name_their_field() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        for (field, value, param) in [
            ("temperature", json!("hot"), "temperature"),
            ("top_p", json!([1]), "top_p"),
            ("top_k", json!(-1), "top_k"),
            ("top_k", json!(1.5), "top_k"),
            ("max_tokens", json!("8"), "max_tokens"),
            ("n", json!(true), "n"),
            ("stream", json!("yes"), "stream"),
            ("stream_options", json!(3), "stream_options"),
            (
                "stream_options",
                json!({"include_usage": 1}),
                "include_usage",
            ),
            ("logprobs", json!(3), "logprobs"),
            ("top_logprobs", json!(-2), "top_logprobs"),
            ("seed", json!(1.5), "seed"),
            ("seed", json!("1"), "seed"),
            ("stop", json!(7), "stop"),
            ("stop", json!(["a", 7]), "stop"),
            ("logit_bias", json!([]), "logit_bias"),
            ("logit_bias", json!({"5": "x"}), "logit_bias"),
            ("logit_bias", json!({"x": 1}), "logit_bias"),
            ("model", json!(4), "model"),
            ("ignore_eos", json!(1), "ignore_eos"),
            ("response_format", json!("json"), "response_format"),
            ("parallel_tool_calls", json!("no"), "parallel_tool_calls"),
            ("tool_choice", json!(5), "tool_choice"),
            ("messages", json!("hello"), "messages"),
            ("messages", json!([]), "messages"),
            ("messages", json!(["hi"]), "messages[0]"),
            // An array is not an object, even with the fields in order.
            ("messages", json!([["user", "hi"]]), "messages[0]"),
            ("messages", json!([{"content": "x"}]), "messages[0].role"),
            ("messages", json!([{"role": 1}]), "messages[0].role"),
            ("messages", json!([{"role": "boss"}]), "messages[0].role"),
            (
                "messages",
                json!([{"role": "user", "content": 5}]),
                "messages[0].content",
            ),
            (
                "messages",
                json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                "messages[0].content",
            ),
            (
                "messages",
                json!([{"role": "user", "content": "x", "name": 3}]),
                "messages[0].name",
            ),
            (
                "messages",
                json!([{"role": "assistant", "tool_calls": {}}]),
                "messages[0].tool_calls",
            ),
            ("tools", json!([["function"]]), "tools[0]"),
        ] {
            let mut b = json!({"messages": msgs});
            b[field] = value.clone();
            let (p, message) = refused(chat(b));
            assert_eq!(p, param, "{field}: {value}: {message}");
        }
        // A type error's message names the field too.
        let (_, message) = refused(chat(json!({"messages": msgs, "temperature": "hot"})));
        assert!(message.contains("`temperature`"), "{message}");
        let (_, message) = refused(chat(json!({"messages": [{"role": 1}]})));
        assert!(message.contains("`messages[0].role`"), "{message}");
        let (_, message) = refused(chat(json!({"messages": [["user", "hi"]]})));
        assert!(message.ends_with("expected an object"), "{message}");
        let (_, message) = refused(chat(json!({"messages": msgs, "tools": [1]})));
        assert!(message.ends_with("expected an object"), "{message}");
        // The prompt's shapes, each refusal naming `prompt`.
        for (prompt, says) in [
            (json!(null), "is required"),
            (
                json!(5),
                "must be a string, an array of strings or token ids",
            ),
            (json!([]), "is an empty list"),
            (json!([[]]), "`prompt[0]` is an empty list of tokens"),
            (
                json!(["a", 1]),
                "`prompt[1]` must be a string like the first",
            ),
            (
                json!([[1, 2], "x"]),
                "`prompt[1]` must be a list of token ids like the first",
            ),
            (json!([1, -2]), "holds -2, which is not a token id"),
            (
                json!([1, 4294967296u64]),
                "holds 4294967296, which is not a token id",
            ),
            (
                json!([[1], [2.5]]),
                "`prompt[1]` holds 2.5, which is not a token id",
            ),
            (
                json!([{}]),
                "`prompt[0]` must be a string or token ids, got {}",
            ),
            (json!(vec!["x"; 65]), "holds 65 inputs, at most 64"),
        ] {
            let (p, message) = refused(completion(json!({"prompt": prompt})));
            assert_eq!(p, "prompt", "{prompt}: {message}");
            assert!(message.contains(says), "{prompt}: {message}");
        }
        // Not JSON, or not an object: the body.
        for body in ["{not json", "[1]", "\"x\"", "null"] {
            let e = parse(body.as_bytes(), true, 16, 0).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("body"), "{body}");
        }
    }

    #[test]
    fn shapes_openai_sends_are_read() {
        let r = chat(json!({
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                {"role": "user", "content": null, "name": "ann"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
                // Tool calls of other roles are not read, whatever they are.
                {"role": "user", "content": "x", "tool_calls": 5},
            ],
            "temperature": 0, "top_p": 0.5, "seed": -1, "stop": "END", "n": 2,
            "logit_bias": {"7": -100, "3": 2.5}, "logprobs": true, "top_logprobs": 2,
            "stream": true, "stream_options": {"include_usage": true},
            "max_completion_tokens": 9, "max_tokens": 3,
            "user": "someone", "metadata": {"any": ["thing"]}, "prompt": 5,
        }))
        .unwrap();
        let m = r.messages.as_ref().unwrap();
        assert_eq!(
            (m[0].role.as_str(), m[0].content.as_str()),
            ("system", "Be brief.")
        );
        assert_eq!(
            (m[1].content.as_str(), m[1].name.as_deref()),
            ("", Some("ann"))
        );
        assert_eq!(
            m[2].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(m[3].tool_call_id.as_deref(), Some("c1"));
        assert!(m[4].tool_calls.is_none());
        assert_eq!(r.params.seed, Some(u64::MAX));
        assert_eq!(r.params.stop, ["END"]);
        assert_eq!(r.params.max_tokens, 9, "max_completion_tokens comes first");
        let mut bias = r.params.logit_bias.clone();
        bias.sort_by_key(|b| b.0);
        assert_eq!(bias, [(3, 2.5), (7, -100.0)]);
        assert_eq!((r.n, r.stream, r.include_usage), (2, true, true));
        assert_eq!(r.params.logprobs, Some(2));
        // Lenient parts: a text part's text of another type is empty.
        let r =
            chat(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}))
                .unwrap();
        assert_eq!(r.messages.unwrap()[0].content, "");
        // Completions: strings, ids, batches; chat's fields ignored.
        for (prompt, want) in [
            (json!("hi"), Prompts::Texts(vec!["hi".into()])),
            (
                json!(["a", "b"]),
                Prompts::Texts(vec!["a".into(), "b".into()]),
            ),
            (json!([1, 2]), Prompts::Tokens(vec![vec![1, 2]])),
            (
                json!([[1], [2, 3]]),
                Prompts::Tokens(vec![vec![1], vec![2, 3]]),
            ),
        ] {
            let r = completion(json!({"prompt": prompt, "messages": 1, "top_logprobs": "x",
                                      "tool_choice": 1, "logprobs": 2, "stop": ["a", "b"]}))
            .unwrap();
            assert_eq!(r.prompt.unwrap(), want);
            assert_eq!(r.params.logprobs, Some(2));
        }
        assert_eq!(
            refused(completion(json!({"prompt": "x", "logprobs": true}))).0,
            "logprobs"
        );
        assert_eq!(
            refused(completion(json!({"prompt": "x", "tools": []}))).0,
            "tools"
        );
        assert!(completion(json!({"prompt": "x", "tools": null})).is_ok());
    }

    #[test]
    fn parses_names_objects_and_errors() {
        assert!(parse_refine(None).unwrap().is_none());
        assert_eq!(
            parse_refine(Some(&json!("edge")))
                .unwrap()
                .unwrap()
                .iterations,
            3
        );
        let p = parse_refine(Some(&json!({"profile": "research", "iterations": 2, "mode": "refine", "model_keep_alive": true})))
            .unwrap()
            .unwrap();
        assert_eq!(p.iterations, 2);
        assert_eq!(p.mode, kiln_irp::Mode::Refine);
        let e = parse_refine(Some(&json!({"iterations": 0}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("refine.iterations"));
        assert!(
            e.message.contains("request field `refine`"),
            "{}",
            e.message
        );
        let e = parse_refine(Some(&json!({"itterations": 3}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("refine.itterations"));
        let e = parse_refine(Some(&json!("laptop"))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("refine.profile"));
        assert!(parse_refine(Some(&json!([1]))).is_err());
        assert!(parse_refine(Some(&json!({"iterations": [1]}))).is_err());
    }
}
