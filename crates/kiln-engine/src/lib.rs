//! kiln's engine: many callers share one model through continuous batching over a paged
//! KV cache. It knows nothing of HTTP; the server, the CLI and refinement use this API.
//! Besides generating, it scores texts ([`ScoreRequest`]): the log-probability of each token
//! given those before it, in the same batches.
//!
//! [`device`] opens the backend chosen at run time (`kiln_cpu`, or `kiln_cuda` with the
//! `cuda` feature) and [`with_backend!`] dispatches generic code to it, once.

pub mod blocks;
pub mod builder;
pub mod constraint;
pub mod device;
pub mod engine;
pub mod error;
pub mod handle;
pub mod runner;
pub mod sampling;
pub mod score;

pub use blocks::BlockManager;
pub use builder::{EngineBuilder, EngineSize};
pub use constraint::{Constraint, Grammar, GrammarError, Grammars};
pub use engine::{
    Engine, EngineConfig, EngineStats, Event, FinishReason, Limits, Request, Runner, Sink, Slice,
    Usage,
};
pub use error::SubmitError;
pub use handle::EngineHandle;
pub use runner::ModelRunner;
pub use sampling::{ParamError, RequestSampler, SamplingParams, TokenLogprob};
pub use score::{
    EmbedRequest, EmbedSink, Pooling, PromptScore, ScoreError, ScoreRequest, ScoreSink,
};
