//! Ising empathy engine: agents whose internal state is a spin system, with empathy between
//! agents defined by physics (the spec in `shared/specs/ising-empathy.md`).
//!
//! Data flows one way: a [`system::IsingSystem`] is annealed ([`anneal`]), read as an
//! [`emotion::Emotion`], compared with another system ([`empathy`]), acted on ([`response`],
//! [`memory`]), and scaled to many agents ([`social`], [`batch`]). [`api`] is a thin shell over
//! those (the command line, its plots and benchmark are `kiln ising`'s, in `kiln-cli`). Every random draw comes from [`rng`]'s counter-based Philox generator, so the
//! same seed gives the same bits on any thread count. With the `cuda` feature, the `cuda` module runs the
//! swarm's all-pairs empathy on a GPU and gets the same bits as the CPU.

pub mod anneal;
pub mod api;
pub mod batch;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod emotion;
pub mod empathy;
pub mod error;
pub mod memory;
pub mod response;
pub mod rng;
pub mod social;
pub mod system;

pub use anneal::{anneal, AnnealReport, TracePoint, Workspace};
pub use emotion::{emotion, Emotion};
pub use empathy::{empathy, Empathy, EmpathyOptions, SimilarityCache, Weights};
pub use error::IsingError;
pub use system::IsingSystem;
