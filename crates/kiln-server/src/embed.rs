//! `/v1/embeddings`: each input's final hidden states pooled (mean by default, or the last
//! token's) and scaled to length 1, computed in the engine's batches beside generation.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_engine::{EmbedRequest, Pooling};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::request::{read, Prompts, TextsOrIds};
use crate::response::{Embedding, EmbeddingUsage, List, Vector};
use crate::{blocking, check_model_name, read_body, Shared};

/// A `/v1/embeddings` body.
#[derive(Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Option<TextsOrIds>,
    /// `float` or `base64`.
    encoding_format: Option<String>,
    /// The vectors' size: only the model's own.
    dimensions: Option<u64>,
    /// kiln's: `mean` or `last`.
    pooling: Option<String>,
    /// kiln's: scale to length 1 (default true).
    normalize: Option<bool>,
}

/// Most inputs one request may carry.
const MAX_INPUTS: usize = 256;

fn too_long(i: usize, tokens: usize, ctx: usize, at_least: bool) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!(
            "`input[{i}]` has {}{tokens} tokens; this model's context is {ctx} tokens",
            if at_least { "at least " } else { "" }
        ),
        param: Some("input".into()),
        code: Some("context_length_exceeded"),
    }
}

/// Standard base64 of the vector's little-endian `f32` bytes (`encoding_format: base64`,
/// which OpenAI's Python client asks for by default).
fn base64_f32(v: &[f32]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST /v1/embeddings`: OpenAI's `input` (a string, strings, token ids or lists of them),
/// `encoding_format` (`float` or `base64`), `dimensions` (only the model's own); kiln's
/// `pooling` (`mean`, the default, or `last`) and `normalize` (default true).
pub async fn embeddings(State(st): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&st, body).await?;
    let req: EmbeddingRequest = read(&body)?;
    let lm = st.lm()?;
    let model = match req.model {
        None => lm.id.clone(),
        Some(s) => {
            check_model_name(&st, lm, &s)?;
            s
        }
    };
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(v) => {
            return Err(ApiError::bad(
                "encoding_format",
                format!(
                    "`encoding_format` is {}, expected float or base64",
                    Value::from(v)
                ),
            ))
        }
    };
    let pooling = match req.pooling.as_deref() {
        None => Pooling::Mean,
        Some(s) => Pooling::from_name(s).ok_or_else(|| {
            ApiError::bad(
                "pooling",
                format!("`pooling` is `{s}`, expected mean or last"),
            )
        })?,
    };
    let normalize = req.normalize.unwrap_or(true);
    let dim = lm.engine.hidden_size();
    match req.dimensions {
        None => {}
        Some(v) if v == dim as u64 => {}
        Some(v) => {
            return Err(ApiError::bad(
                "dimensions",
                format!("`dimensions` is {v}; this model's embeddings have {dim} (no other size is supported)"),
            ))
        }
    }
    let input = match req.input {
        Some(i) => i.prompts("input", MAX_INPUTS)?,
        None => return Err(ApiError::bad("input", "`input` is required")),
    };
    let ctx = lm.context_length;
    if let Prompts::Texts(t) = &input {
        for (i, t) in t.iter().enumerate() {
            if t.is_empty() {
                return Err(ApiError::bad("input", format!("`input[{i}]` is empty")));
            }
            // Refused before tokenizing: no token covers more than the longest token's text.
            let at_least = t.len() / lm.tokenizer.max_token_bytes();
            if at_least > ctx {
                return Err(too_long(i, at_least, ctx, true));
            }
        }
    }
    let token_lists = blocking(st.clone(), move |lm| {
        Ok(match input {
            Prompts::Texts(t) => t
                .iter()
                .map(|t| lm.tokenizer.encode(t, true, false))
                .collect::<Vec<_>>(),
            Prompts::Tokens(t) => t,
        })
    })
    .await?;
    let vocab = lm.tokenizer.vocab_size();
    for (i, t) in token_lists.iter().enumerate() {
        if t.is_empty() {
            return Err(ApiError::bad(
                "input",
                format!("`input[{i}]` has no tokens"),
            ));
        }
        if t.len() > ctx {
            return Err(too_long(i, t.len(), ctx, false));
        }
        if let Some(bad) = t.iter().find(|&&id| id as usize >= vocab) {
            return Err(ApiError::bad(
                "input",
                format!("`input[{i}]` holds {bad}, not a token id of this model's vocabulary of {vocab}"),
            ));
        }
    }
    let prompt_tokens: usize = token_lists.iter().map(Vec::len).sum();
    let mut waits = Vec::with_capacity(token_lists.len());
    for tokens in token_lists {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lm.engine.submit_embed(
            EmbedRequest {
                tokens,
                pooling,
                normalize,
            },
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        waits.push(rx);
    }
    let mut data = Vec::with_capacity(waits.len());
    for (i, rx) in waits.into_iter().enumerate() {
        let v = rx
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine stopped before finishing this request",
                    Some("engine_error"),
                )
            })?
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e, Some("engine_error"))
            })?;
        let embedding = if base64 {
            Vector::Base64(base64_f32(&v))
        } else {
            Vector::Floats(v.iter().map(|&x| f64::from(x)).collect())
        };
        data.push(Embedding {
            object: "embedding",
            index: i,
            embedding,
        });
    }
    st.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
    Ok(Json(List {
        object: "list",
        data,
        model: Some(model),
        usage: Some(EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        }),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        // 1.0f32 = 00 00 80 3f; two floats make 8 bytes (one '=' of padding).
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64_f32(&[]), "");
    }
}
