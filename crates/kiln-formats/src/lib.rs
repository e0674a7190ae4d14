//! Model files: the GGUF container (read over a memory map, and written) with the ggml block
//! formats, and safetensors files (read over a memory map, and written).
//!
//! This crate knows formats, not architectures: it hands out metadata values and tensor
//! bytes, and decodes blocks to f32 as the reference every kernel is tested against. What a
//! Hugging Face folder or a LoRA adapter means for a model (its configuration, its tensor
//! names) is the model's business (`kiln-model`'s `hf` and `lora`).

pub mod gguf;
pub mod safetensors;
