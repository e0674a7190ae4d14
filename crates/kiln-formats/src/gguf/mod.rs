//! The GGUF container (read over a memory map and written) and the ggml block formats.

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
