//! `/tokenize` and `/detokenize`: the model's tokenizer over HTTP, in the shapes llama.cpp's
//! server (`content`, `add_special`, `with_pieces`) and vLLM (`prompt` or `messages`,
//! `add_special_tokens`) take.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::request::{boolean as flag, chat_messages, obj as object};
use crate::{blocking, check_model_name, read_body, Shared};

/// Most token ids `/detokenize` takes.
const MAX_IDS: usize = 1 << 20;

/// `POST /tokenize`: `{"content": TEXT}` (llama.cpp; special tokens added only with
/// `add_special`), `{"prompt": TEXT}` (vLLM; added unless `add_special_tokens` is false), or
/// `{"messages": [...]}` (with `tools` if any, rendered as the chat endpoint renders them,
/// with `add_generation_prompt`, default true). Answers `tokens` (with `with_pieces`, objects of `id` and `piece`), `count`
/// and `max_model_len`.
pub async fn tokenize(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    let m = object(&body)?;
    let lm = st.lm()?;
    if let Some(name) = m.get("model").and_then(Value::as_str) {
        check_model_name(&st, lm, name)?;
    }
    let pieces = flag(&m, "with_pieces")?.unwrap_or(false);
    enum Input {
        Text(String, bool),
        Chat(Vec<kiln_tokenizer::chat::Message>, Option<Value>, bool),
    }
    let input = if let Some(v) = m.get("messages").filter(|v| !v.is_null()) {
        let messages = chat_messages(Some(v))?;
        let tools = crate::tools::parse(&m)?;
        let gen = flag(&m, "add_generation_prompt")?.unwrap_or(true);
        // As the chat endpoint renders them: tools in the template, or described in a system
        // message for a template without tools.
        let mut messages = messages;
        let native = lm.template.tool_format();
        let tools = match tools {
            Some(mut t) => {
                t.format = native;
                t.add_to(&mut messages);
                t.for_template()
            }
            None => {
                if native == kiln_tokenizer::chat::ToolFormat::Generic {
                    crate::tools::inline_calls(&mut messages);
                }
                None
            }
        };
        Input::Chat(messages, tools, gen)
    } else {
        // llama.cpp's `add_special` (default false, with `content`) or vLLM's
        // `add_special_tokens` (default true, with `prompt`), whichever is given.
        let asked = match (flag(&m, "add_special")?, flag(&m, "add_special_tokens")?) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::bad(
                    "add_special",
                    "`add_special` and `add_special_tokens` disagree",
                ))
            }
            (a, b) => a.or(b),
        };
        let (key, special) = match (m.get("content"), m.get("prompt")) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "content",
                    "give `content` or `prompt`, not both",
                ))
            }
            (Some(_), None) => ("content", asked.unwrap_or(false)),
            (None, Some(_)) => ("prompt", asked.unwrap_or(true)),
            (None, None) => {
                return Err(ApiError::bad(
                    "content",
                    "`content` (or `prompt`, or `messages`) is required",
                ))
            }
        };
        match &m[key] {
            Value::String(s) => Input::Text(s.clone(), special),
            v => {
                return Err(ApiError::bad(
                    key,
                    format!("`{key}` must be a string, got {v}"),
                ))
            }
        }
    };
    let out = blocking(st.clone(), move |lm| {
        let ids = match input {
            Input::Text(t, special) => lm.tokenizer.encode(&t, special, false),
            Input::Chat(msgs, tools, gen) => lm
                .template
                .encode_with(&lm.tokenizer, &msgs, tools.as_ref(), gen)
                .map_err(|e| ApiError::bad("messages", e.to_string()))?,
        };
        let tokens: Vec<Value> = if pieces {
            ids.iter()
                .map(|&id| {
                    let mut b = Vec::new();
                    lm.tokenizer.token_bytes(id, true, &mut b);
                    let piece = match String::from_utf8(b) {
                        Ok(s) => json!(s),
                        Err(e) => json!(e.into_bytes()),
                    };
                    json!({"id": id, "piece": piece})
                })
                .collect()
        } else {
            ids.iter().map(|&id| json!(id)).collect()
        };
        Ok(json!({
            "tokens": tokens,
            "count": ids.len(),
            "max_model_len": lm.context_length,
        }))
    })
    .await?;
    Ok(Json(out).into_response())
}

/// `POST /detokenize`: `{"tokens": [ids]}`; answers the text as `content` (llama.cpp) and
/// `prompt` (vLLM). Control tokens are written out.
pub async fn detokenize(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    let m = object(&body)?;
    let lm = st.lm()?;
    let arr = match m.get("tokens") {
        Some(Value::Array(a)) => a,
        None => return Err(ApiError::bad("tokens", "`tokens` is required")),
        Some(v) => {
            return Err(ApiError::bad(
                "tokens",
                format!("`tokens` must be an array of token ids, got {v}"),
            ))
        }
    };
    if arr.len() > MAX_IDS {
        return Err(ApiError::bad(
            "tokens",
            format!("`tokens` holds {} ids, at most {MAX_IDS}", arr.len()),
        ));
    }
    let vocab = lm.tokenizer.vocab_size();
    let ids = arr
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .filter(|&t| (t as usize) < vocab)
                .map(|t| t as u32)
                .ok_or_else(|| {
                    ApiError::bad(
                        "tokens",
                        format!("`tokens[{i}]` is {v}, not a token id of this model's vocabulary of {vocab}"),
                    )
                })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let text = blocking(st.clone(), move |lm| Ok(lm.tokenizer.decode(&ids, true))).await?;
    Ok(Json(json!({"content": text, "prompt": text})).into_response())
}
