//! A small GGUF writer, for tests and tools that need tiny synthetic model files.
//!
//! It writes exactly what it is given, in the version 2/3 layout: metadata in the order
//! added, then the tensor directory, then each tensor's bytes at the next multiple of the
//! alignment (the file's `general.alignment`, or 32). It checks nothing, so tests can use
//! it to build broken files too (duplicate keys, wrong data lengths, an alignment that is
//! not a power of two); [`GgufFile`](crate::gguf::GgufFile) is what checks.
//!
//! ```
//! use kiln_formats::gguf::{writer::GgufWriter, GgmlType, GgufFile, Value};
//!
//! let bytes = GgufWriter::new()
//!     .metadata("general.architecture", Value::String("llama".into()))
//!     .tensor_f32("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0])
//!     .to_bytes();
//! let file = GgufFile::from_bytes("tiny.gguf", bytes).unwrap();
//! assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
//! assert_eq!(file.tensor_f32("w").unwrap(), [1.0, 2.0, 3.0, 4.0]);
//! ```

use std::io::Write;
use std::path::Path;

use crate::gguf::quant::GgmlType;
use crate::gguf::Value;

/// Alignment of tensor data when the metadata does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor to write.
#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory: add metadata and tensors, then write it out.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty version 3 file.
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the version number written in the header (2 and 3 share one layout).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Adds a metadata key (array elements must all be of the array's element type).
    pub fn metadata(mut self, key: impl Into<String>, value: Value) -> Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Sets `general.alignment` (as a u32, as llama.cpp writes it), replacing any earlier one.
    pub fn alignment(mut self, alignment: u32) -> Self {
        self.metadata.retain(|(k, _)| k != "general.alignment");
        self.metadata
            .push(("general.alignment".into(), Value::U32(alignment)));
        self
    }

    /// Adds a tensor: dimensions innermost first, and its data already in format `ty`.
    pub fn tensor(
        mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data: data.into(),
        });
        self
    }

    /// Adds an F32 tensor from its values.
    pub fn tensor_f32(self, name: impl Into<String>, dims: &[u64], values: &[f32]) -> Self {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    /// The alignment tensor data will be written at: `general.alignment` if it is a
    /// positive integer (the last one, if set twice), else [`DEFAULT_ALIGNMENT`].
    pub fn data_alignment(&self) -> u64 {
        self.metadata
            .iter()
            .rev()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|&a| a > 0)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        self.write_data(&mut out)
            .expect("writing to a Vec does not fail");
        out
    }

    /// Writes the file to `path` without holding a second copy of the tensor data.
    pub fn write_to(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        f.write_all(&self.header())?;
        self.write_data(&mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    }

    /// The tensors' data, each padded to the alignment, after the header.
    fn write_data(&self, out: &mut impl Write) -> std::io::Result<()> {
        let align = self.data_alignment();
        let zeros = vec![0u8; align as usize];
        for t in &self.tensors {
            out.write_all(&t.data)?;
            let len = t.data.len() as u64;
            let p = (len.div_ceil(align) * align - len) as usize;
            out.write_all(&zeros[..p])?;
        }
        Ok(())
    }

    /// Everything before the tensor data: magic, version, metadata, tensor directory, padding.
    fn header(&self) -> Vec<u8> {
        let align = self.data_alignment();
        let pad = |len: u64| len.div_ceil(align) * align - len;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&value.value_type().tag().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            out.extend_from_slice(&t.ty.tag().to_le_bytes());
            put_u64(&mut out, offset);
            let len = t.data.len() as u64;
            offset += len + pad(len);
        }
        let header_pad = pad(out.len() as u64) as usize;
        out.resize(out.len() + header_pad, 0);
        out
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (its type tag is written by the caller, or by the array).
fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_str(out, s),
        Value::Array(ty, items) => {
            out.extend_from_slice(&ty.tag().to_le_bytes());
            put_u64(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}
