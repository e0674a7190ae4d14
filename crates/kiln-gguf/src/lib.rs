//! Model files: the GGUF container (read over a memory map) and the ggml block formats.
//!
//! This crate knows formats, not architectures: it hands out metadata values and
//! tensor bytes, and decodes blocks to f32 as the reference every kernel is tested
//! against.

mod error;
mod file;
pub mod quant;
mod value;
pub mod writer;

pub use error::GgufError;
pub use file::{GgufFile, TensorInfo};
pub use quant::GgmlType;
pub use value::{Value, ValueType};
pub use writer::GgufWriter;
