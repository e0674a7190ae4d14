//! Llama-family decoder: the configuration of each architecture, the weights, the backend
//! contract every compute backend implements (`kiln-cpu`, `kiln-cuda`), loading from GGUF
//! files and Hugging Face folders (with LoRA adapters), quantizing, and the host sampler.
//!
//! Data flows one way: a model file ([`kiln_formats::gguf`]) gives a [`ModelConfig`] and
//! [`Weights`]; a [`Backend`] takes them in as a [`Model`]; the engine (crate `kiln-engine`) drives it,
//! choosing tokens with [`sample`] where the logits are.

pub mod backend;
pub mod config;
pub mod convert;
pub mod decoder;
pub mod fetch;
pub mod hf;
pub mod loader;
pub mod lora;
pub mod quantize;
pub mod sample;
pub mod weights;

pub use backend::{
    Backend, DeviceMemory, FusedLayer, FusedRef, HostWords, PagedSeq, PassKey, RawTensor,
    TensorBytes,
};
pub use config::{Arch, ModelConfig, RopeStyle};
pub use decoder::{Breakdown, KvCache, Logits, Model, SeqInput, State, KV_BLOCK};
pub use weights::{LayerWeights, Weights};

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file is unreadable or malformed.
    #[error(transparent)]
    Gguf(#[from] kiln_formats::gguf::GgufError),
    /// The tokenizer metadata is unusable.
    #[error(transparent)]
    Tokenizer(#[from] kiln_tokenizer::TokenizerError),
    /// A safetensors file is unreadable or malformed.
    #[error(transparent)]
    Safetensors(#[from] kiln_formats::safetensors::SafetensorsError),
    /// A file of a model folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The model's shape is inconsistent.
    #[error("{0}")]
    Config(String),
    /// A feature of the model that kiln does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// A caller's input is out of range.
    #[error("{0}")]
    Input(String),
    /// The sequence does not fit in its key/value cache.
    #[error("context full: {needed} positions needed, the cache holds {capacity}")]
    ContextFull {
        /// Positions the pass needs.
        needed: usize,
        /// Positions the cache holds.
        capacity: usize,
    },
    /// The compute device failed (a GPU call, a kernel launch).
    #[error("device: {0}")]
    Device(String),
    /// Memory for a buffer could not be had.
    #[error("out of memory allocating {0}")]
    OutOfMemory(String),
    /// The chat template failed.
    #[error(transparent)]
    Template(#[from] kiln_tokenizer::chat::TemplateError),
}
