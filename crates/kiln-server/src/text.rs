//! `/tokenize` and `/detokenize`: the model's tokenizer over HTTP, in the shapes llama.cpp's
//! server (`content`, `add_special`, `with_pieces`) and vLLM (`prompt` or `messages`,
//! `add_special_tokens`) take.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::request::{chat_messages, lenient, read, Lenient, MessageIn};
use crate::response::{Detokenized, Piece, Token, Tokenized};
use crate::tools::{ToolChoiceIn, ToolIn};
use crate::{blocking, check_model_name, read_body, Shared};

/// A `/tokenize` body: a text, or messages (with tools) rendered by the chat template.
#[derive(Deserialize)]
struct TokenizeRequest {
    /// Checked when it is a string.
    model: Option<Lenient<String>>,
    /// llama.cpp's text.
    content: Option<String>,
    /// vLLM's text.
    prompt: Option<String>,
    /// llama.cpp's: add the special tokens (default false).
    add_special: Option<bool>,
    /// vLLM's: add the special tokens (default true).
    add_special_tokens: Option<bool>,
    /// Answer each token's text beside its id.
    with_pieces: Option<bool>,
    messages: Option<Vec<MessageIn>>,
    tools: Option<Vec<ToolIn>>,
    tool_choice: Option<ToolChoiceIn>,
    parallel_tool_calls: Option<bool>,
    /// Whether the template adds the assistant turn's opening (default true).
    add_generation_prompt: Option<bool>,
}

/// A `/detokenize` body.
#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Option<Vec<u64>>,
}

/// Most token ids `/detokenize` takes.
const MAX_IDS: usize = 1 << 20;

/// `POST /tokenize`: `{"content": TEXT}` (llama.cpp; special tokens added only with
/// `add_special`), `{"prompt": TEXT}` (vLLM; added unless `add_special_tokens` is false), or
/// `{"messages": [...]}` (with `tools` if any, rendered as the chat endpoint renders them,
/// with `add_generation_prompt`, default true). Answers `tokens` (with `with_pieces`, objects of `id` and `piece`), `count`
/// and `max_model_len`.
pub async fn tokenize(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    let m: TokenizeRequest = read(&body)?;
    let lm = st.lm()?;
    if let Some(name) = lenient(m.model) {
        check_model_name(&st, lm, &name)?;
    }
    let pieces = m.with_pieces.unwrap_or(false);
    enum Input {
        Text(String, bool),
        Chat(Vec<kiln_tokenizer::chat::Message>, Option<Value>, bool),
    }
    let input = if m.messages.is_some() {
        let messages = chat_messages(m.messages)?;
        let tools = crate::tools::parse(m.tools, m.tool_choice, m.parallel_tool_calls)?;
        let gen = m.add_generation_prompt.unwrap_or(true);
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
        let asked = match (m.add_special, m.add_special_tokens) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::bad(
                    "add_special",
                    "`add_special` and `add_special_tokens` disagree",
                ))
            }
            (a, b) => a.or(b),
        };
        match (m.content, m.prompt) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "content",
                    "give `content` or `prompt`, not both",
                ))
            }
            (Some(t), None) => Input::Text(t, asked.unwrap_or(false)),
            (None, Some(t)) => Input::Text(t, asked.unwrap_or(true)),
            (None, None) => {
                return Err(ApiError::bad(
                    "content",
                    "`content` (or `prompt`, or `messages`) is required",
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
        let tokens = ids
            .iter()
            .map(|&id| {
                if !pieces {
                    return Token::Id(id);
                }
                let mut b = Vec::new();
                lm.tokenizer.token_bytes(id, true, &mut b);
                let piece = match String::from_utf8(b) {
                    Ok(s) => Piece::Text(s),
                    Err(e) => Piece::Bytes(e.into_bytes()),
                };
                Token::Piece { id, piece }
            })
            .collect();
        Ok(Tokenized {
            tokens,
            count: ids.len(),
            max_model_len: lm.context_length,
        })
    })
    .await?;
    Ok(Json(out).into_response())
}

/// `POST /detokenize`: `{"tokens": [ids]}`; answers the text as `content` (llama.cpp) and
/// `prompt` (vLLM). Control tokens are written out.
pub async fn detokenize(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    let m: DetokenizeRequest = read(&body)?;
    let lm = st.lm()?;
    let Some(arr) = m.tokens else {
        return Err(ApiError::bad("tokens", "`tokens` is required"));
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
        .map(|(i, &v)| {
            usize::try_from(v)
                .ok()
                .filter(|&t| t < vocab)
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
    Ok(Json(Detokenized {
        content: &text,
        prompt: &text,
    })
    .into_response())
}
