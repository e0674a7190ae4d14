//! The safetensors format: an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the data. Read over a memory map; every offset
//! and size in the header is checked before any byte is used, so a hostile file errors
//! instead of panicking.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

/// Largest JSON header accepted (the reference implementation's limit).
pub const MAX_HEADER_BYTES: usize = 100 << 20;

/// Errors reading a safetensors file.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The file could not be opened or mapped.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The header or a tensor is malformed.
    #[error("{}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Element types a safetensors header may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// Signed integers.
    I64,
    /// Signed 32-bit integers.
    I32,
    /// Signed 16-bit integers.
    I16,
    /// Signed bytes.
    I8,
    /// Unsigned bytes.
    U8,
    /// Booleans, one byte each.
    Bool,
    /// Unsigned 16-, 32- and 64-bit integers.
    U16,
    /// Unsigned 32-bit integers.
    U32,
    /// Unsigned 64-bit integers.
    U64,
    /// 8-bit floats (e4m3).
    F8E4M3,
    /// 8-bit floats (e5m2).
    F8E5M2,
}

impl Dtype {
    /// Parses a header's dtype name.
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => Self::F32,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "F64" => Self::F64,
            "I64" => Self::I64,
            "I32" => Self::I32,
            "I16" => Self::I16,
            "I8" => Self::I8,
            "U8" => Self::U8,
            "BOOL" => Self::Bool,
            "U16" => Self::U16,
            "U32" => Self::U32,
            "U64" => Self::U64,
            "F8_E4M3" => Self::F8E4M3,
            "F8_E5M2" => Self::F8E5M2,
            _ => return None,
        })
    }

    /// The header's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F64 => "F64",
            Self::I64 => "I64",
            Self::I32 => "I32",
            Self::I16 => "I16",
            Self::I8 => "I8",
            Self::U8 => "U8",
            Self::Bool => "BOOL",
            Self::U16 => "U16",
            Self::U32 => "U32",
            Self::U64 => "U64",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E5M2 => "F8_E5M2",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 | Self::U64 => 8,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::F16 | Self::BF16 | Self::I16 | Self::U16 => 2,
            Self::I8 | Self::U8 | Self::Bool | Self::F8E4M3 | Self::F8E5M2 => 1,
        }
    }

    /// The ggml type that stores this dtype unchanged, for the float types kiln computes with.
    pub fn ggml(self) -> Option<crate::gguf::GgmlType> {
        match self {
            Self::F32 => Some(crate::gguf::GgmlType::F32),
            Self::F16 => Some(crate::gguf::GgmlType::F16),
            Self::BF16 => Some(crate::gguf::GgmlType::BF16),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost first (a Linear weight is `[out, in]`).
    pub shape: Vec<usize>,
    /// Byte range within the file (already offset past the header).
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An open safetensors file.
pub struct SafeTensors {
    path: PathBuf,
    backing: Backing,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafeTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SafeTensors({}, {} tensors)",
            self.path.display(),
            self.tensors.len()
        )
    }
}

impl SafeTensors {
    /// Opens and validates a file over a read-only memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref();
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: read-only map; kiln never writes model files while they are open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Backing::Mmap(map))
    }

    /// Validates an image held in memory; `name` stands for the path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, SafetensorsError> {
        Self::parse(name.into(), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, backing: Backing) -> Result<Self, SafetensorsError> {
        let bytes: &[u8] = match &backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        };
        let bad = |what: String| SafetensorsError::Invalid {
            path: path.clone(),
            what,
        };
        let Some(len_bytes) = bytes.get(..8) else {
            return Err(bad(format!(
                "{} bytes is too short for a safetensors file (8-byte header length first)",
                bytes.len()
            )));
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(len_bytes);
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES as u64 || n > (bytes.len() - 8) as u64 {
            return Err(bad(format!(
                "header length {n} is larger than the file ({} bytes) or the {MAX_HEADER_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let header_end = 8 + n as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..header_end])
            .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let serde_json::Value::Object(entries) = header else {
            return Err(bad("header is not a JSON object".into()));
        };
        let data_len = bytes.len() - header_end;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, entry) in &entries {
            if name == "__metadata__" {
                let serde_json::Value::Object(m) = entry else {
                    return Err(bad("__metadata__ is not an object".into()));
                };
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| bad(format!("__metadata__.{k} is not a string")))?;
                    metadata.insert(k.clone(), v.to_owned());
                }
                continue;
            }
            let what = |s: &str| bad(format!("tensor `{name}`: {s}"));
            let dtype_name = entry
                .get("dtype")
                .and_then(|v| v.as_str())
                .ok_or_else(|| what("no string `dtype`"))?;
            let dtype = Dtype::from_name(dtype_name)
                .ok_or_else(|| what(&format!("unknown dtype `{dtype_name}`")))?;
            let shape = entry
                .get("shape")
                .and_then(|v| v.as_array())
                .ok_or_else(|| what("no `shape` array"))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| what("shape holds something other than non-negative integers"))?;
            let offsets = entry
                .get("data_offsets")
                .and_then(|v| v.as_array())
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
                .ok_or_else(|| what("`data_offsets` is not two non-negative integers"))?;
            let (start, end) = offsets;
            if start > end || end > data_len as u64 {
                return Err(what(&format!(
                    "data_offsets [{start}, {end}] fall outside the {data_len} data bytes"
                )));
            }
            let want = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| what(&format!("shape {shape:?} overflows")))?;
            if (end - start) as usize != want {
                return Err(what(&format!(
                    "{} bytes for shape {shape:?} of {}, expected {want}",
                    end - start,
                    dtype.name()
                )));
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    dtype,
                    shape,
                    start: header_end + start as usize,
                    end: header_end + end as usize,
                },
            );
        }
        // Ranges must not overlap: a hostile header could alias one tensor's bytes as another's.
        let mut ranges: Vec<(usize, usize, &str)> = tensors
            .iter()
            .filter(|(_, t)| t.end > t.start)
            .map(|(n, t)| (t.start, t.end, n.as_str()))
            .collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(bad(format!(
                    "tensors `{}` and `{}` overlap",
                    w[0].2, w[1].2
                )));
            }
        }
        Ok(SafeTensors {
            path,
            backing,
            tensors,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The header's `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// A tensor's entry.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// A tensor's entry, or an error naming the file and tensor.
    pub fn info(&self, name: &str) -> Result<&TensorInfo, SafetensorsError> {
        self.get(name).ok_or_else(|| SafetensorsError::Invalid {
            path: self.path.clone(),
            what: format!("no tensor `{name}`"),
        })
    }

    /// A tensor's raw bytes (ranges were checked when the file was opened).
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        &self.as_ref()[info.start..info.end]
    }

    /// A float tensor's values widened to f32.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        let info = self.info(name)?;
        to_f32(info.dtype, self.data(info)).ok_or_else(|| SafetensorsError::Invalid {
            path: self.path.clone(),
            what: format!(
                "tensor `{name}` is {}, expected F32, F16 or BF16",
                info.dtype.name()
            ),
        })
    }
}

impl AsRef<[u8]> for SafeTensors {
    /// The whole file, header included (tensor ranges index into it).
    fn as_ref(&self) -> &[u8] {
        match &self.backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Widens F32, F16 or BF16 little-endian bytes to f32; `None` for other types.
pub fn to_f32(dtype: Dtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Encodes f32 values as `dtype` (F32, F16 or BF16) little-endian bytes.
pub fn from_f32(dtype: Dtype, v: &[f32]) -> Option<Vec<u8>> {
    Some(match dtype {
        Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => v
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect(),
        Dtype::BF16 => v
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        _ => return None,
    })
}

/// One tensor to write: name, dtype, shape and its little-endian bytes.
pub type TensorToWrite<'a> = (&'a str, Dtype, &'a [usize], &'a [u8]);

/// Serialises tensors into a safetensors image (used by tests and tools that make models).
pub fn to_bytes(tensors: &[TensorToWrite<'_>], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            (*name).to_owned(),
            serde_json::json!({
                "dtype": dtype.name(),
                "shape": shape,
                "data_offsets": [offset, offset + data.len()],
            }),
        );
        offset += data.len();
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
    while (8 + h.len()) % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

/// Writes tensors to a safetensors file.
pub fn write(
    path: &Path,
    tensors: &[TensorToWrite<'_>],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    std::fs::write(path, to_bytes(tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn err(bytes: Vec<u8>) -> String {
        SafeTensors::from_bytes("t.safetensors", bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn round_trip_through_writer() {
        let a: Vec<u8> = from_f32(Dtype::F32, &[1.0, -2.0, 3.5, 0.25, 5.0, 6.0]).unwrap();
        let b: Vec<u8> = from_f32(Dtype::BF16, &[1.5, -0.5]).unwrap();
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let bytes = to_bytes(
            &[("a", Dtype::F32, &[2, 3], &a), ("b", Dtype::BF16, &[2], &b)],
            &meta,
        );
        let st = SafeTensors::from_bytes("t", bytes).unwrap();
        assert_eq!(st.get("a").unwrap().shape, vec![2, 3]);
        assert_eq!(
            st.to_f32("a").unwrap(),
            vec![1.0, -2.0, 3.5, 0.25, 5.0, 6.0]
        );
        assert_eq!(st.to_f32("b").unwrap(), vec![1.5, -0.5]);
        assert_eq!(st.metadata()["format"], "pt");
        assert!(st
            .to_f32("missing")
            .unwrap_err()
            .to_string()
            .contains("no tensor `missing`"));
    }

    #[test]
    fn hostile_headers_are_errors() {
        assert!(err(vec![1, 2, 3]).contains("too short"));
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(err(huge).contains("header length"));
        assert!(err(image("{not json", &[])).contains("not valid JSON"));
        assert!(err(image("[1,2]", &[])).contains("not a JSON object"));
        let e = err(image(
            r#"{"x":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("unknown dtype `Q9`"), "{e}");
        let e = err(image(
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("fall outside"), "{e}");
        let e = err(image(
            r#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("expected 12"), "{e}");
        let e = err(image(
            r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("overflows"), "{e}");
        let e = err(image(
            r#"{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("non-negative"), "{e}");
        let e = err(image(
            r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("fall outside"), "{e}");
        let e = err(image(
            r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
        ));
        assert!(e.contains("overlap"), "{e}");
        let e = err(image(r#"{"__metadata__":{"a":1}}"#, &[]));
        assert!(e.contains("not a string"), "{e}");
    }

    #[test]
    fn wrong_dtype_for_floats_is_named() {
        let bytes = to_bytes(&[("ids", Dtype::I64, &[1], &[0; 8])], &BTreeMap::new());
        let st = SafeTensors::from_bytes("t", bytes).unwrap();
        let e = st.to_f32("ids").unwrap_err().to_string();
        assert!(e.contains("`ids` is I64"), "{e}");
    }
}
