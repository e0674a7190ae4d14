//! The JSON kiln answers with, as typed structs (serde). Fields are declared in the order they
//! go on the wire; a field that some answers leave out is skipped when `None`, and one that
//! is `null` in some answers is an `Option` that is not skipped. Log-probabilities and
//! embeddings are written as `f64` (the `f32` widened), as they always have been.

use kiln_engine::EngineStats;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::tools::CallOut;

/// A chat completion, a completion, or one chunk of either streamed (`Default`: every
/// optional field left out, no choices, no object: the constructions name what they set).
#[derive(Debug, Default, Serialize)]
pub struct Completion<'a> {
    /// `chatcmpl-N` or `cmpl-N` (left out of a refinement's usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// `chat.completion`, `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// The model's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    /// kiln's version (refinements leave it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<&'static str>,
    /// The choices.
    pub choices: Vec<Choice<'a>>,
    /// Tokens counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// A refinement's summary (`refine`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refinement: Option<&'a Value>,
    /// A refinement's SNARC scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snarc: Option<&'a Value>,
}

/// One choice of an answer, or of a chunk.
///
/// An answer's choice has `message` (chat) or `text`, then `finish_reason` and `logprobs`; a
/// chunk's has `delta` (chat) or `text`, `logprobs` when tokens come with it, then
/// `finish_reason`.
#[derive(Debug, Serialize)]
pub struct Choice<'a> {
    /// Its place among the choices.
    pub index: usize,
    /// The whole answer (chat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<ChatMessage<'a>>,
    /// What a chunk adds (chat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta<'a>>,
    /// The text (completions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    /// A chunk's log-probabilities: absent, `null`, or given.
    #[serde(rename = "logprobs", skip_serializing_if = "Option::is_none")]
    pub chunk_logprobs: Option<Option<Logprobs>>,
    /// `stop`, `length`, `tool_calls`, or `null` while it runs.
    pub finish_reason: Option<&'static str>,
    /// An answer's log-probabilities: `null` unless asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Option<Logprobs>>,
}

impl<'a> Choice<'a> {
    /// An answer's choice.
    pub fn answer(
        index: usize,
        message: Option<ChatMessage<'a>>,
        text: Option<&'a str>,
        finish_reason: Option<&'static str>,
        logprobs: Option<Logprobs>,
    ) -> Self {
        Choice {
            index,
            message,
            delta: None,
            text,
            chunk_logprobs: None,
            finish_reason,
            logprobs: Some(logprobs),
        }
    }

    /// A chat chunk's choice that only adds `delta`.
    pub fn delta(index: usize, delta: Delta<'a>) -> Self {
        Self::chunk(index, Some(delta), None, None, None)
    }

    /// A chunk's choice: a `delta` (chat) or `text`, with `logprobs` when given (`Some(None)`
    /// writes `null`).
    pub fn chunk(
        index: usize,
        delta: Option<Delta<'a>>,
        text: Option<&'a str>,
        logprobs: Option<Option<Logprobs>>,
        finish_reason: Option<&'static str>,
    ) -> Self {
        Choice {
            index,
            message: None,
            delta,
            text,
            chunk_logprobs: logprobs,
            finish_reason,
            logprobs: None,
        }
    }
}

/// The assistant's message in a chat answer: its text, or `null` and the calls it makes.
#[derive(Debug, Serialize)]
pub struct ChatMessage<'a> {
    /// `assistant`.
    pub role: &'static str,
    /// The text; `null` with tool calls.
    pub content: Option<&'a str>,
    /// The calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<CallOut>>,
}

/// What a chat chunk adds to the message.
#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    /// `assistant`, in a choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// More text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    /// The calls, whole, in one chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<CallOut>>,
}

/// Tokens counted, with kiln's extensions.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// Prompt tokens, once per prompt.
    pub prompt_tokens: usize,
    /// Tokens generated, over the choices.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// The prompt tokens served from the prefix cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Speculative decoding by prompt lookup, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_lookup: Option<Proposals>,
    /// Speculative decoding with the draft model, when used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<Proposals>,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens every choice took from the prefix cache.
    pub cached_tokens: usize,
}

/// Tokens speculative decoding proposed, and those the model took.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Proposals {
    /// Proposed.
    pub proposed_tokens: usize,
    /// Taken.
    pub accepted_tokens: usize,
}

impl Usage {
    /// Counts of prompt and generated tokens, the cached prompt tokens, and speculative
    /// decoding's proposals under its proposer's name (`prompt_lookup` or `draft`) when it
    /// was asked for.
    pub fn new(
        prompt: usize,
        completion: usize,
        cached: usize,
        lookup: (Option<&str>, usize, usize),
    ) -> Self {
        let proposals = Proposals {
            proposed_tokens: lookup.1,
            accepted_tokens: lookup.2,
        };
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: cached,
            }),
            prompt_lookup: (lookup.0 == Some("prompt_lookup")).then_some(proposals),
            draft: (lookup.0 == Some("draft")).then_some(proposals),
        }
    }
}

/// Log-probabilities: chat's (`content`, a list per token) or completions' (lists side by
/// side).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Logprobs {
    /// Chat's.
    Chat {
        /// One per token.
        content: Vec<ChatLogprob>,
    },
    /// Completions'.
    Completion {
        /// The tokens' texts.
        tokens: Vec<String>,
        /// Their log-probabilities.
        token_logprobs: Vec<f64>,
        /// Per token, the most likely tokens' texts to their log-probabilities.
        top_logprobs: Vec<TopLogprobs>,
    },
}

/// A token's log-probability in a chat answer, with the most likely tokens'.
#[derive(Debug, Serialize)]
pub struct ChatLogprob {
    /// Its text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f64,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens (each without `top_logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<ChatLogprob>>,
}

/// The most likely tokens at a place of a completion, as an object of their texts to their
/// log-probabilities: a text that comes twice keeps its first place and its last value.
#[derive(Debug, Default)]
pub struct TopLogprobs(Vec<(String, f64)>);

impl TopLogprobs {
    /// Adds a token.
    pub fn push(&mut self, text: String, logprob: f64) {
        match self.0.iter_mut().find(|(t, _)| *t == text) {
            Some(e) => e.1 = logprob,
            None => self.0.push((text, logprob)),
        }
    }
}

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (t, l) in &self.0 {
            m.serialize_entry(t, l)?;
        }
        m.end()
    }
}

/// An error in a stream, after its first chunk went out.
#[derive(Debug, Serialize)]
pub struct StreamError<'a> {
    /// What went wrong.
    pub error: StreamErrorBody<'a>,
}

/// See [`StreamError`].
#[derive(Debug, Serialize)]
pub struct StreamErrorBody<'a> {
    /// The message.
    pub message: &'a str,
    /// `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `/health`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Health<'a> {
    /// Ready.
    Ready {
        /// `ok`.
        status: &'static str,
        /// `true`.
        ready: bool,
        /// The model's id (`null` without one).
        model: Option<&'a str>,
        /// The engine's counters (`null` without a model).
        engine: Option<Box<EngineStats>>,
    },
    /// Loading, draining or failed.
    NotReady {
        /// `loading`, `draining` or `failed`.
        status: &'static str,
        /// `false`.
        ready: bool,
        /// Why.
        error: &'a str,
    },
}

/// `/get_load`.
#[derive(Debug, Serialize)]
pub struct Load {
    /// Requests running and waiting.
    pub load: usize,
    /// Running.
    pub running: usize,
    /// Waiting.
    pub waiting: usize,
    /// The KV cache's use, 0 to 1.
    pub kv_cache_usage: f64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_cache_queries: u64,
    /// Those found.
    pub prefix_cache_hits: u64,
}

/// A list (`/v1/models`, `/v1/embeddings`).
#[derive(Debug, Serialize)]
pub struct List<T, U = ()> {
    /// `list`.
    pub object: &'static str,
    /// The items.
    pub data: Vec<T>,
    /// The model (embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens counted (embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<U>,
}

/// A model of `/v1/models`.
#[derive(Debug, Serialize)]
pub struct Model<'a> {
    /// The name it answers to.
    pub id: &'a str,
    /// `model`.
    pub object: &'static str,
    /// When the server started, Unix seconds.
    pub created: u64,
    /// `kiln`.
    pub owned_by: &'static str,
    /// The model's own id (for an alias).
    pub root: &'a str,
    /// Its context length.
    pub max_model_len: usize,
    /// What it can do.
    pub capabilities: Capabilities,
}

/// What a model of `/v1/models` can do.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Capabilities {
    /// `/v1/completions`.
    pub completion: bool,
    /// `/v1/chat/completions`.
    pub chat: bool,
    /// `/tokenize`.
    pub tokenize: bool,
    /// `/v1/embeddings`.
    pub embeddings: bool,
    /// `tools`.
    pub tools: bool,
    /// `response_format`.
    pub response_format: bool,
    /// Whether the chat template renders tools itself.
    pub native_tool_template: bool,
}

/// An embedding of `/v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct Embedding {
    /// `embedding`.
    pub object: &'static str,
    /// Its input's place.
    pub index: usize,
    /// The vector.
    pub embedding: Vector,
}

/// An embedding's vector: numbers, or base64 of its little-endian `f32`s.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    /// `encoding_format: float`.
    Floats(Vec<f64>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// The usage of `/v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    /// Tokens of the inputs.
    pub prompt_tokens: usize,
    /// The same.
    pub total_tokens: usize,
}

/// `/tokenize`'s answer.
#[derive(Debug, Serialize)]
pub struct Tokenized {
    /// The ids, or ids with their pieces.
    pub tokens: Vec<Token>,
    /// How many.
    pub count: usize,
    /// The model's context length.
    pub max_model_len: usize,
}

/// A token of `/tokenize`: its id, or its id and text (`with_pieces`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Token {
    /// The id.
    Id(u32),
    /// The id and its text.
    Piece {
        /// The id.
        id: u32,
        /// Its text, or its bytes when they are not UTF-8.
        piece: Piece,
    },
}

/// A token's text, or its bytes when they are not UTF-8.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Piece {
    /// UTF-8.
    Text(String),
    /// Not.
    Bytes(Vec<u8>),
}

/// `/detokenize`'s answer: the text under llama.cpp's name and vLLM's.
#[derive(Debug, Serialize)]
pub struct Detokenized<'a> {
    /// llama.cpp's.
    pub content: &'a str,
    /// vLLM's.
    pub prompt: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `v` as JSON text, to compare with the text of `json!` as the answers were written
    /// before they were typed (field order and all).
    fn text(v: &impl Serialize) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn answers_keep_their_bytes() {
        let calls = crate::tools::calls_json(
            &[crate::tools::ToolCall {
                name: "f".into(),
                arguments: "{}".into(),
            }],
            "chatcmpl-1_0",
            false,
        );
        let chat_lp = ChatLogprob {
            token: "a".into(),
            logprob: f64::from(-0.1f32),
            bytes: vec![97],
            top_logprobs: Some(vec![ChatLogprob {
                token: "b".into(),
                logprob: f64::from(-2.5f32),
                bytes: vec![98],
                top_logprobs: None,
            }]),
        };
        let mut top = TopLogprobs::default();
        top.push("x".into(), f64::from(-1.25f32));
        top.push("y".into(), f64::from(-3.0f32));
        top.push("x".into(), f64::from(-0.5f32));
        let choices = vec![
            Choice::answer(
                0,
                Some(ChatMessage {
                    role: "assistant",
                    content: Some("hi"),
                    tool_calls: None,
                }),
                None,
                Some("stop"),
                Some(Logprobs::Chat {
                    content: vec![chat_lp],
                }),
            ),
            Choice::answer(
                1,
                Some(ChatMessage {
                    role: "assistant",
                    content: None,
                    tool_calls: Some(calls),
                }),
                None,
                Some("tool_calls"),
                None,
            ),
            Choice::answer(
                2,
                None,
                Some("text"),
                None,
                Some(Logprobs::Completion {
                    tokens: vec!["x".into()],
                    token_logprobs: vec![f64::from(-0.5f32)],
                    top_logprobs: vec![top],
                }),
            ),
        ];
        let body = Completion {
            id: Some("chatcmpl-1"),
            object: "chat.completion",
            created: Some(7),
            model: Some("m"),
            system_fingerprint: Some("kiln-0"),
            choices,
            usage: Some(Usage::new(3, 4, 1, (Some("prompt_lookup"), 5, 2))),
            refinement: None,
            snarc: None,
        };
        let lp = |x: f32| json!(x);
        let mut top = serde_json::Map::new();
        top.insert("x".into(), json!(-1.25f32));
        top.insert("y".into(), json!(-3.0f32));
        top.insert("x".into(), json!(-0.5f32));
        let mut usage = json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                               "prompt_tokens_details": {"cached_tokens": 1}});
        usage["prompt_lookup"] = json!({"proposed_tokens": 5, "accepted_tokens": 2});
        let mut call = json!({"id": "call_chatcmpl-1_0_0", "type": "function",
                              "function": {"name": "f", "arguments": "{}"}});
        assert_eq!(
            text(&body),
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
                "system_fingerprint": "kiln-0",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop",
                     "logprobs": {"content": [{"token": "a", "logprob": lp(-0.1), "bytes": [97],
                         "top_logprobs": [{"token": "b", "logprob": lp(-2.5), "bytes": [98]}]}]}},
                    {"index": 1, "message": {"role": "assistant", "content": null,
                                             "tool_calls": [call.clone()]},
                     "finish_reason": "tool_calls", "logprobs": null},
                    {"index": 2, "text": "text", "finish_reason": null,
                     "logprobs": {"tokens": ["x"], "token_logprobs": [lp(-0.5)],
                                  "top_logprobs": [top]}},
                ],
                "usage": usage,
            })
            .to_string()
        );
        // Chunks.
        let chunk = |c: Choice| {
            text(&Completion {
                id: Some("cmpl-2"),
                object: "text_completion",
                created: Some(7),
                model: Some("m"),
                system_fingerprint: Some("kiln-0"),
                choices: vec![c],
                usage: None,
                refinement: None,
                snarc: None,
            })
        };
        let head = |choice: Value| {
            json!({"id": "cmpl-2", "object": "text_completion", "created": 7, "model": "m",
                   "system_fingerprint": "kiln-0", "choices": [choice]})
            .to_string()
        };
        let role = Delta {
            role: Some("assistant"),
            content: Some(""),
            tool_calls: None,
        };
        assert_eq!(
            chunk(Choice::chunk(0, Some(role), None, None, None)),
            head(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""},
                        "finish_reason": null})
            )
        );
        let more = Delta {
            content: Some("a"),
            ..Default::default()
        };
        assert_eq!(
            chunk(Choice::chunk(1, Some(more), None, Some(None), None)),
            head(
                json!({"index": 1, "delta": {"content": "a"}, "logprobs": null,
                        "finish_reason": null})
            )
        );
        assert_eq!(
            chunk(Choice::chunk(0, None, Some("a"), Some(None), None)),
            head(json!({"index": 0, "text": "a", "logprobs": null, "finish_reason": null}))
        );
        assert_eq!(
            chunk(Choice::chunk(
                0,
                Some(Delta::default()),
                None,
                None,
                Some("length")
            )),
            head(json!({"index": 0, "delta": {}, "finish_reason": "length"}))
        );
        assert_eq!(
            chunk(Choice::chunk(0, None, Some(""), None, Some("stop"))),
            head(json!({"index": 0, "text": "", "finish_reason": "stop"}))
        );
        let streamed = crate::tools::calls_json(
            &[crate::tools::ToolCall {
                name: "f".into(),
                arguments: "{}".into(),
            }],
            "chatcmpl-1_0",
            true,
        );
        call["index"] = json!(0);
        let calls = Delta {
            tool_calls: Some(streamed),
            ..Default::default()
        };
        assert_eq!(
            chunk(Choice::chunk(0, Some(calls), None, None, None)),
            head(json!({"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}))
        );
        // A usage chunk without speculation, and a refinement's.
        let usage = Completion {
            id: None,
            object: "chat.completion.chunk",
            created: None,
            model: None,
            system_fingerprint: None,
            choices: Vec::new(),
            usage: Some(Usage {
                prompt_tokens_details: None,
                ..Usage::new(1, 2, 0, (None, 0, 0))
            }),
            refinement: None,
            snarc: None,
        };
        assert_eq!(
            text(&usage),
            json!({"object": "chat.completion.chunk", "choices": [],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
            .to_string()
        );
        let draft = Usage::new(1, 2, 0, (Some("draft"), 4, 3));
        assert_eq!(
            text(&draft),
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                   "prompt_tokens_details": {"cached_tokens": 0},
                   "draft": {"proposed_tokens": 4, "accepted_tokens": 3}})
            .to_string()
        );
        assert_eq!(
            text(&StreamError {
                error: StreamErrorBody {
                    message: "m",
                    kind: "server_error"
                }
            }),
            json!({"error": {"message": "m", "type": "server_error"}}).to_string()
        );
    }

    #[test]
    fn the_other_endpoints_keep_their_bytes() {
        let stats = EngineStats::default();
        assert_eq!(
            text(&Health::Ready {
                status: "ok",
                ready: true,
                model: None,
                engine: Some(Box::new(stats.clone())),
            }),
            json!({"status": "ok", "ready": true, "model": null, "engine": stats}).to_string()
        );
        assert_eq!(
            text(&Health::NotReady {
                status: "loading",
                ready: false,
                error: "e",
            }),
            json!({"status": "loading", "ready": false, "error": "e"}).to_string()
        );
        let caps = Capabilities {
            completion: true,
            chat: true,
            tokenize: true,
            embeddings: false,
            tools: true,
            response_format: true,
            native_tool_template: false,
        };
        let models = List::<_> {
            object: "list",
            data: vec![Model {
                id: "a",
                object: "model",
                created: 1,
                owned_by: "kiln",
                root: "m",
                max_model_len: 8,
                capabilities: caps,
            }],
            model: None,
            usage: None,
        };
        assert_eq!(
            text(&models),
            json!({"object": "list", "data": [{"id": "a", "object": "model", "created": 1,
                "owned_by": "kiln", "root": "m", "max_model_len": 8, "capabilities": {
                    "completion": true, "chat": true, "tokenize": true, "embeddings": false,
                    "tools": true, "response_format": true, "native_tool_template": false}}]})
            .to_string()
        );
        let v = [0.1f32, -2.0];
        let embeddings = List {
            object: "list",
            data: vec![
                Embedding {
                    object: "embedding",
                    index: 0,
                    embedding: Vector::Floats(v.iter().map(|&x| f64::from(x)).collect()),
                },
                Embedding {
                    object: "embedding",
                    index: 1,
                    embedding: Vector::Base64("AA==".into()),
                },
            ],
            model: Some("m".into()),
            usage: Some(EmbeddingUsage {
                prompt_tokens: 3,
                total_tokens: 3,
            }),
        };
        assert_eq!(
            text(&embeddings),
            json!({"object": "list", "data": [
                {"object": "embedding", "index": 0, "embedding": json!(v)},
                {"object": "embedding", "index": 1, "embedding": "AA=="}],
                "model": "m", "usage": {"prompt_tokens": 3, "total_tokens": 3}})
            .to_string()
        );
        let tokens = Tokenized {
            tokens: vec![
                Token::Id(1),
                Token::Piece {
                    id: 2,
                    piece: Piece::Text("a".into()),
                },
                Token::Piece {
                    id: 3,
                    piece: Piece::Bytes(vec![255]),
                },
            ],
            count: 3,
            max_model_len: 8,
        };
        assert_eq!(
            text(&tokens),
            json!({"tokens": [1, {"id": 2, "piece": "a"}, {"id": 3, "piece": [255]}],
                   "count": 3, "max_model_len": 8})
            .to_string()
        );
        assert_eq!(
            text(&Load {
                load: 1,
                running: 1,
                waiting: 0,
                kv_cache_usage: 0.5,
                prefix_cache_queries: 2,
                prefix_cache_hits: 1,
            }),
            json!({"load": 1, "running": 1, "waiting": 0, "kv_cache_usage": 0.5,
                   "prefix_cache_queries": 2, "prefix_cache_hits": 1})
            .to_string()
        );
    }
}
