//! The `refine` request field: a chat completion answered by iterative refinement (kiln-irp)
//! and scored with SNARC.
//!
//! `"refine": "edge"` or `"refine": {"profile": "edge", "iterations": 3, "mode": "refine"}`
//! (any profile key; built-in profiles only, no files). The profile drives sampling (the
//! temperature schedule, `top_k`, `top_p`, `max_tokens`); a top-level `seed` seeds candidate 0.
//! The response is the usual `chat.completion` with one choice plus `refinement` (iterations,
//! energies, temperatures, best index, halt reason, energy terms) and `snarc`. Streaming sends
//! the whole answer in one content chunk that also carries `refinement` and `snarc`, then the
//! finish chunk, the usage chunk if asked, and `[DONE]`. The server keeps no memory store:
//! exchanges are scored against the conversation in the request, not stored.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use kiln_irp::{CandidateSpec, EngineGenerator, Generated, Generator, Irp, NewExchange, Refiner};

use crate::request::GenRequest;
use crate::{event, finish_str, now_s, response, sse, ApiError, Shared};

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The engine's generator, abandoned once `gone` is set.
struct Watched<'a> {
    inner: EngineGenerator<'a>,
    gone: Arc<AtomicBool>,
}

impl Generator for Watched<'_> {
    fn generate(&self, specs: &[CandidateSpec]) -> Result<Vec<Generated>, kiln_irp::IrpError> {
        self.inner.generate_unless(specs, Some(&self.gone))
    }
}

/// Answers a chat request by refinement.
pub async fn chat(st: Shared, req: GenRequest) -> Result<Response, ApiError> {
    let Some(profile) = req.refine.clone() else {
        return Err(ApiError::bad("refine", "no refinement profile"));
    };
    let msgs = req.messages.clone().unwrap_or_default();
    let last = msgs
        .iter()
        .rposition(|m| m.role == "user")
        .ok_or_else(|| ApiError::bad("messages", "`refine` needs a user message to answer"))?;
    let question = msgs[last].content.clone();
    let context = msgs[..last].to_vec();
    let worker = st.clone();
    // Set when this handler is dropped, which is what happens when the client goes away:
    // the refinement's candidates are then cancelled rather than generated for nobody.
    let gone = Arc::new(AtomicBool::new(false));
    let _on_drop = SetOnDrop(gone.clone());
    // A slot first, waiting here (not on a blocking thread); it is released when the
    // refinement's thread is done, even if this handler was dropped before.
    let slot = st.refine_slots.clone().acquire_owned().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
            Some("shutting_down"),
        )
    })?;
    let (r, rec) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let _slot = slot;
        let lm = worker.lm()?;
        let irp = Irp::new(
            profile.clone(),
            Watched {
                inner: EngineGenerator {
                    engine: &lm.engine,
                    tokenizer: &lm.tokenizer,
                    template: &lm.template,
                },
                gone,
            },
        );
        let r = irp.run(&question, &context).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                Some("engine_error"),
            )
        })?;
        let gen = EngineGenerator {
            engine: &lm.engine,
            tokenizer: &lm.tokenizer,
            template: &lm.template,
        };
        let rec = kiln_irp::score_and_store_with_model(
            &profile,
            None,
            &NewExchange {
                source: "server",
                session: None,
                question: &question,
                answer: &r.answer,
                irp: Some(&r.info),
            },
            &context,
            &gen,
        )
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
        Ok((r, rec))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))??;

    let info = &r.info;
    let prompt_tokens = info.prompt_tokens;
    let completion_tokens = info.completion_tokens;
    st.metrics.prompt_tokens.inc_by(prompt_tokens as u64);
    st.metrics.generated_tokens.inc_by(completion_tokens as u64);
    let finish = info
        .candidates
        .get(info.best_index)
        .map_or("stop", |c| finish_str(c.finish));
    let id = format!("chatcmpl-{}", st.next_id.fetch_add(1, Ordering::Relaxed));
    // The refinement is done: its answer goes out even if shutdown began meanwhile.
    let model = st.loaded().map_or_else(String::new, |l| l.id.clone());
    let created = now_s();
    let refinement = info.summary_json();
    let snarc = rec.snarc.to_json();
    let usage = response::Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        prompt_tokens_details: None,
        prompt_lookup: None,
        draft: None,
    };
    let message = |content| response::ChatMessage {
        role: "assistant",
        content: Some(content),
        tool_calls: None,
    };
    // `extra`: with the refinement's summary and scores.
    let body = |choices, usage, extra: bool| response::Completion {
        id: Some(&id),
        object: if req.stream {
            "chat.completion.chunk"
        } else {
            "chat.completion"
        },
        created: Some(created),
        model: Some(&model),
        system_fingerprint: None,
        choices,
        usage,
        refinement: extra.then_some(&refinement),
        snarc: extra.then_some(&snarc),
    };
    if !req.stream {
        let choice =
            response::Choice::answer(0, Some(message(&r.answer)), None, Some(finish), None);
        return Ok(Json(body(vec![choice], Some(usage), true)).into_response());
    }
    let delta = |role, content| response::Delta {
        role,
        content,
        tool_calls: None,
    };
    let chunk = |d, finish, extra| {
        let choice = response::Choice::chunk(0, Some(d), None, None, finish);
        event(&body(vec![choice], None, extra))
    };
    let mut events = vec![
        chunk(delta(Some("assistant"), Some("")), None, false),
        chunk(delta(None, Some(&r.answer)), None, true),
        chunk(delta(None, None), Some(finish), false),
    ];
    if req.include_usage {
        events.push(event(&response::Completion {
            object: "chat.completion.chunk",
            usage: Some(usage),
            ..Default::default()
        }));
    }
    events.push(SseEvent::default().data("[DONE]"));
    Ok(sse(stream::iter(
        events.into_iter().map(Ok::<_, Infallible>),
    )))
}
