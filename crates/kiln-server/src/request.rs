//! Reading OpenAI-style request bodies field by field, so that every error names its field.

use kiln_engine::SamplingParams;
use kiln_irp::Profile;
use kiln_tokenizer::chat::Message;
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

/// Reads field `param` as OpenAI's completions and embeddings endpoints take their input: a
/// string, an array of strings, an array of token ids, or an array of arrays of token ids (at
/// most `max` of them).
pub(crate) fn texts_or_ids(
    v: Option<&Value>,
    param: &str,
    max: usize,
) -> Result<Prompts, ApiError> {
    let ids = |a: &[Value], p: &str| -> Result<Vec<u32>, ApiError> {
        if a.is_empty() {
            return Err(ApiError::bad(
                param,
                format!("`{p}` is an empty list of tokens"),
            ));
        }
        a.iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&t| t <= u64::from(u32::MAX))
                    .map(|t| t as u32)
                    .ok_or_else(|| {
                        ApiError::bad(param, format!("`{p}` holds {t}, which is not a token id"))
                    })
            })
            .collect()
    };
    let a = match v {
        Some(Value::String(s)) => return Ok(Prompts::Texts(vec![s.clone()])),
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => {
            return Err(ApiError::bad(param, format!("`{param}` is required")))
        }
        Some(v) => {
            return Err(ApiError::bad(
                param,
                format!("`{param}` must be a string, an array of strings or token ids, got {v}"),
            ))
        }
    };
    if a.is_empty() {
        return Err(ApiError::bad(param, format!("`{param}` is an empty list")));
    }
    if a.len() > max && !a[0].is_number() {
        return Err(ApiError::bad(
            param,
            format!("`{param}` holds {} inputs, at most {max}", a.len()),
        ));
    }
    match &a[0] {
        Value::String(_) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad(
                        param,
                        format!("`{param}[{i}]` must be a string like the first"),
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Prompts::Texts),
        Value::Number(_) => Ok(Prompts::Tokens(vec![ids(a, param)?])),
        Value::Array(_) => a
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::Array(t) => ids(t, &format!("{param}[{i}]")),
                _ => Err(ApiError::bad(
                    param,
                    format!("`{param}[{i}]` must be a list of token ids like the first"),
                )),
            })
            .collect::<Result<_, _>>()
            .map(Prompts::Tokens),
        v => Err(ApiError::bad(
            param,
            format!("`{param}[0]` must be a string or token ids, got {v}"),
        )),
    }
}

/// Reads `messages`: roles, text contents (or text parts), and earlier tool calls and results.
pub(crate) fn chat_messages(v: Option<&Value>) -> Result<Vec<Message>, ApiError> {
    let arr = match v {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(ApiError::bad("messages", "`messages` is empty")),
        None => return Err(ApiError::bad("messages", "`messages` is required")),
        Some(v) => {
            return Err(ApiError::bad(
                "messages",
                format!("`messages` must be an array, got {v}"),
            ))
        }
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, msg) in arr.iter().enumerate() {
        let p = format!("messages[{i}]");
        let o = msg
            .as_object()
            .ok_or_else(|| ApiError::bad(&p, format!("`{p}` must be an object")))?;
        let role = o.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad(&format!("{p}.role"), format!("`{p}.role` must be a string"))
        })?;
        if !matches!(role, "system" | "user" | "assistant" | "developer" | "tool") {
            return Err(ApiError::bad(
                &format!("{p}.role"),
                format!("`{p}.role` is `{role}`, expected system, user or assistant"),
            ));
        }
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for part in parts {
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            s.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                        }
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
            None | Some(Value::Null) => String::new(),
            Some(v) => {
                return Err(ApiError::bad(
                    &format!("{p}.content"),
                    format!("`{p}.content` must be a string, got {v}"),
                ))
            }
        };
        // Earlier calls and the results that answer them, for the template (or, on a
        // template without tools, as the text that made the calls: `Tools::add_to`).
        let tool_calls = match o.get("tool_calls") {
            Some(calls) if role == "assistant" && !calls.is_null() => {
                Some(crate::tools::normalize_calls(&p, calls)?)
            }
            _ => None,
        };
        let text_field = |k: &str| -> Result<Option<String>, ApiError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(ApiError::bad(
                    &format!("{p}.{k}"),
                    format!("`{p}.{k}` must be a string, got {v}"),
                )),
            }
        };
        let role = if role == "developer" { "system" } else { role };
        out.push(Message {
            tool_calls,
            tool_call_id: text_field("tool_call_id")?,
            name: text_field("name")?,
            ..Message::new(role, content)
        });
    }
    Ok(out)
}

pub(crate) fn obj(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("the request body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad(
            "body",
            "the request body must be a JSON object",
        )),
    }
}

fn num(m: &Map<String, Value>, k: &str) -> Result<Option<f64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| ApiError::bad(k, format!("`{k}` must be a number, got {v}"))),
    }
}

fn int(m: &Map<String, Value>, k: &str) -> Result<Option<u64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad(k, format!("`{k}` must be a non-negative integer, got {v}"))
        }),
    }
}

pub(crate) fn boolean(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad(
            k,
            format!("`{k}` must be true or false, got {v}"),
        )),
    }
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
    let m = obj(body)?;
    crate::guard::refuse_unimplemented(&m)?;
    let parse_special = crate::guard::parse_special(&m, chat)?;
    let model = match m.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::bad(
                "model",
                format!("`model` must be a string, got {v}"),
            ))
        }
    };
    let mut messages = None;
    let mut prompt = None;
    if chat {
        messages = Some(chat_messages(m.get("messages"))?);
    } else {
        prompt = Some(texts_or_ids(m.get("prompt"), "prompt", MAX_PROMPTS)?);
    }
    let format = crate::tools::response_format(&m)?;
    let tools = if chat {
        crate::tools::parse(&m)?
    } else if m.get("tools").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad(
            "tools",
            "`tools` is available on /v1/chat/completions only",
        ));
    } else {
        None
    };
    let shaped = format.is_some() || tools.as_ref().is_some_and(|t| t.active());
    for field in ["prompt_lookup", "draft_max"] {
        if shaped
            && m.get(field)
                .is_some_and(|v| v.as_u64().is_some_and(|k| k > 0))
        {
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
    let mut refine = parse_refine(m.get("refine"))?;
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
    if let Some(v) = num(&m, "temperature")? {
        p.temperature = in_range("temperature", v, 0.0, 2.0)?;
    }
    if let Some(v) = num(&m, "top_p")? {
        if v <= 0.0 || v > 1.0 {
            return Err(ApiError::bad(
                "top_p",
                format!("`top_p` is {v}, expected (0, 1]"),
            ));
        }
        p.top_p = v as f32;
    }
    if let Some(v) = int(&m, "top_k")? {
        p.top_k = v.min(1 << 20) as usize;
    }
    if let Some(v) = num(&m, "min_p")? {
        p.min_p = in_range("min_p", v, 0.0, 0.999)?;
    }
    if let Some(v) = num(&m, "frequency_penalty")? {
        p.frequency_penalty = in_range("frequency_penalty", v, -2.0, 2.0)?;
    }
    if let Some(v) = num(&m, "presence_penalty")? {
        p.presence_penalty = in_range("presence_penalty", v, -2.0, 2.0)?;
    }
    if let Some(v) = num(&m, "repetition_penalty")? {
        if v <= 0.0 || v > 10.0 {
            return Err(ApiError::bad(
                "repetition_penalty",
                format!("`repetition_penalty` is {v}, expected (0, 10]"),
            ));
        }
        p.repetition_penalty = v as f32;
    }
    if let Some(v) = int(&m, "seed").or_else(|_| {
        // Negative seeds are accepted, as OpenAI does.
        match m.get("seed").and_then(Value::as_i64) {
            Some(s) => Ok(Some(s as u64)),
            None => Err(ApiError::bad("seed", "`seed` must be an integer")),
        }
    })? {
        p.seed = Some(v);
    }
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = int(&m, key)? {
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
    match m.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => p.stop = vec![s.clone()],
        Some(Value::Array(a)) => {
            p.stop = a
                .iter()
                .map(|s| {
                    s.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ApiError::bad("stop", "`stop` entries must be strings"))
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => {
            return Err(ApiError::bad(
                "stop",
                format!("`stop` must be a string or an array of strings, got {v}"),
            ))
        }
    }
    match m.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            if o.len() > 1024 {
                return Err(ApiError::bad(
                    "logit_bias",
                    format!("`logit_bias` has {} entries, at most 1024", o.len()),
                ));
            }
            for (k, v) in o {
                let t: u32 = k.parse().map_err(|_| {
                    ApiError::bad(
                        "logit_bias",
                        format!("`logit_bias` key `{k}` is not a token id"),
                    )
                })?;
                let b = v.as_f64().filter(|b| b.is_finite()).ok_or_else(|| {
                    ApiError::bad(
                        "logit_bias",
                        format!("`logit_bias[{k}]` must be a number, got {v}"),
                    )
                })?;
                p.logit_bias
                    .push((t, in_range("logit_bias", b, -100.0, 100.0)?));
            }
        }
        Some(v) => {
            return Err(ApiError::bad(
                "logit_bias",
                format!("`logit_bias` must be an object of token ids to biases, got {v}"),
            ))
        }
    }
    // A kiln extension (as in vLLM and llama.cpp's server): keep generating through end
    // tokens, for benchmarks of equal-length answers.
    p.ignore_eos = boolean(&m, "ignore_eos")?.unwrap_or(false);
    // kiln's extension: speculative decoding by prompt lookup (greedy requests only).
    if let Some(k) = int(&m, "prompt_lookup")? {
        p.prompt_lookup = k.min(1 << 20) as usize;
    }
    if p.prompt_lookup > 0 && refine.is_some() {
        return Err(ApiError::bad(
            "prompt_lookup",
            "`prompt_lookup` does not combine with `refine` (which samples its candidates)",
        ));
    }
    // kiln's extension: speculative decoding with the server's draft model (`--draft`).
    match int(&m, "draft_max")? {
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
    let n = int(&m, "n")?.unwrap_or(1);
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
    let stream = boolean(&m, "stream")?.unwrap_or(false);
    let include_usage = match m.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?.unwrap_or(false),
        Some(v) => {
            return Err(ApiError::bad(
                "stream_options",
                format!("`stream_options` must be an object, got {v}"),
            ))
        }
    };
    let logprobs = if chat {
        let on = boolean(&m, "logprobs")?.unwrap_or(false);
        let top = int(&m, "top_logprobs")?.unwrap_or(0);
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
    } else {
        match int(&m, "logprobs")? {
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
        }
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
