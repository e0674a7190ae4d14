use std::collections::BTreeMap;
use std::fmt::{self, Display};
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::gguf::quant::GgmlType;
use crate::gguf::{GgufError, Value, ValueType};

const MAGIC: &[u8; 4] = b"GGUF";
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are refused (the format allows nesting; models use none).
const MAX_DEPTH: u32 = 3;
/// Most metadata values (keys plus array elements, all levels) one file may hold.
///
/// Each decoded value takes 32 bytes of memory for as little as one byte of file, so
/// without a cap a hostile file could ask for 32 times its size. The largest real
/// vocabularies (about 260k tokens, with scores, types and merges) use a few million.
const MAX_VALUES: u64 = 1 << 24;
/// Largest `general.alignment` accepted.
const MAX_ALIGNMENT: u64 = 1 << 20;

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Where one tensor lives in the file and how it is stored.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as ggml orders them.
    pub dims: Vec<u64>,
    /// Block format of the data.
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the file.
    pub offset: u64,
    /// Byte length of the data.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Length of one row (the innermost dimension).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (the product of the outer dimensions).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

/// A parsed GGUF file: metadata, tensor directory and the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    backing: Backing,
    /// Format version (2 or 3).
    pub version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    by_name: BTreeMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Names a metadata key in messages: ``key `name` ``.
struct Key<'a>(&'a str);

impl Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`", self.0)
    }
}

/// Names a tensor in messages: ``tensor `name` ``.
struct Tensor<'a>(&'a str);

impl Display for Tensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tensor `{}`", self.0)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// Metadata values decoded so far, against [`MAX_VALUES`].
    values: u64,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl Into<String>) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take<W: Display + ?Sized>(&mut self, n: u64, what: &W) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated at byte {} reading {what}: need {n} bytes, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize, W: Display + ?Sized>(
        &mut self,
        what: &W,
    ) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32<W: Display + ?Sized>(&mut self, what: &W) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64<W: Display + ?Sized>(&mut self, what: &W) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a count and checks that `count * min_size` bytes could still follow.
    fn count<W: Display + ?Sized>(
        &mut self,
        version: u32,
        min_size: u64,
        what: &W,
    ) -> Result<u64, GgufError> {
        let n = if version == 1 {
            self.u32(what)? as u64
        } else {
            self.u64(what)?
        };
        if n.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err(self.err(format!(
                "{what}: length {n} is more than the {} bytes left in the file can hold",
                self.remaining()
            )));
        }
        Ok(n)
    }

    /// Counts `n` more metadata values against [`MAX_VALUES`].
    fn add_values(&mut self, n: u64, key: &str) -> Result<(), GgufError> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_VALUES {
            return Err(self.err(format!(
                "key `{key}`: the metadata holds more than {MAX_VALUES} values in all"
            )));
        }
        Ok(())
    }

    fn string<W: Display + ?Sized>(&mut self, version: u32, what: &W) -> Result<String, GgufError> {
        let n = self.count(version, 1, what)?;
        let pos = self.pos;
        let bytes = self.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.err(format!("{what} at byte {pos} is not valid UTF-8"))),
        }
    }

    fn value(
        &mut self,
        ty: ValueType,
        version: u32,
        depth: u32,
        key: &str,
    ) -> Result<Value, GgufError> {
        let what = &Key(key);
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1, _>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1, _>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1, _>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("key `{key}`: boolean byte is {b}, not 0 or 1"))),
            },
            ValueType::String => Value::String(self.string(version, what)?),
            ValueType::Array => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!("key `{key}`: arrays nested too deep")));
                }
                let tag = self.u32(what)?;
                let ety = ValueType::from_tag(tag).ok_or_else(|| {
                    self.err(format!("key `{key}`: unknown array element type {tag}"))
                })?;
                let n = self.count(version, min_size(ety, version), what)?;
                self.add_values(n, key)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(ety, version, depth + 1, key)?);
                }
                Value::Array(ety, items)
            }
        })
    }
}

/// The smallest on-disk size of one value of type `ty` in a file of `version`.
fn min_size(ty: ValueType, version: u32) -> u64 {
    match ty {
        // Version 1 wrote string and array lengths as u32.
        ValueType::String | ValueType::Array if version == 1 => ty.min_size() - 4,
        _ => ty.min_size(),
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file over a read-only memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; kiln never writes model files while they are open.
        // A file truncated underneath us by another process is outside what we can guard.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Backing::Mmap(mmap))
    }

    /// Parses a GGUF image held in memory; `name` stands for the path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(name.into(), Backing::Owned(bytes))
    }

    fn parse(path: PathBuf, backing: Backing) -> Result<Self, GgufError> {
        let buf = backing.bytes();
        let mut c = Cursor {
            buf,
            pos: 0,
            path: &path,
            values: 0,
        };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(c.err(format!(
                "bad magic {:02x?}, expected \"GGUF\"",
                magic.to_vec()
            )));
        }
        let version = c.u32("version")?;
        if !(1..=3).contains(&version) {
            return Err(c.err(format!("unsupported version {version} (kiln reads 1 to 3)")));
        }
        // Version 1 wrote counts, lengths and dimensions as u32, later versions as u64.
        let word = if version == 1 { 4 } else { 8 };
        // A tensor info is at least: name length, dims count, one dim, type, offset.
        let n_tensors = c.count(version, word + 4 + word + 4 + 8, "tensor count")?;
        // A key/value is at least: key length, type tag, one byte.
        let n_kv = c.count(version, word + 4 + 1, "metadata count")?;
        c.add_values(n_kv, "metadata count")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(version, &format!("metadata key #{i}"))?;
            let tag = c.u32(&Key(&key))?;
            let ty = ValueType::from_tag(tag)
                .ok_or_else(|| c.err(format!("key `{key}`: unknown value type {tag}")))?;
            let v = c.value(ty, version, 0, &key)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(c.err(format!("key `{key}` appears twice")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => a,
                _ => {
                    return Err(c.err(format!(
                        "general.alignment is {v:?}, expected a power of two up to {MAX_ALIGNMENT}"
                    )))
                }
            },
        };

        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(version, &format!("tensor #{i} name"))?;
            let n_dims = c.u32(&Tensor(&name))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!(
                    "tensor `{name}` has {n_dims} dimensions (expected 1 to {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = if version == 1 {
                    c.u32(&Tensor(&name))? as u64
                } else {
                    c.u64(&Tensor(&name))?
                };
                dims.push(d);
            }
            let tag = c.u32(&Tensor(&name))?;
            let ty = GgmlType::from_tag(tag)
                .ok_or_else(|| c.err(format!("tensor `{name}` has unknown type {tag}")))?;
            let offset = c.u64(&Tensor(&name))?;
            infos.push((name, dims, ty, offset));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;

        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = BTreeMap::new();
        for (name, dims, ty, rel) in infos {
            let bad = |what: String| GgufError::Malformed {
                path: path.clone(),
                what: format!("tensor `{name}`: {what}"),
            };
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            if dims.contains(&0) {
                return Err(bad(format!("has a zero dimension {dims:?}")));
            }
            let (block, bytes) = ty.block();
            if dims[0] % block as u64 != 0 {
                return Err(bad(format!(
                    "row length {} is not a multiple of the {} block size {block}",
                    dims[0],
                    ty.name()
                )));
            }
            let size = (n / block as u64)
                .checked_mul(bytes as u64)
                .ok_or_else(|| bad("size overflows".into()))?;
            if rel % alignment != 0 {
                return Err(bad(format!(
                    "data offset {rel} is not a multiple of the alignment {alignment}"
                )));
            }
            let offset = data_start
                .checked_add(rel)
                .ok_or_else(|| bad("offset overflows".into()))?;
            match offset.checked_add(size) {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(bad(format!(
                        "data [{offset}, +{size}) lies outside the file ({file_len} bytes); is the file truncated?"
                    )))
                }
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(bad("name appears twice".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }

        Ok(GgufFile {
            path,
            backing,
            version,
            metadata,
            tensors,
            by_name,
        })
    }

    /// The file's path (or the name given to [`GgufFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// One metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        }
    }

    fn wrong(&self, key: &str, v: &Value, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            found: v.type_name(),
            expected,
        }
    }

    /// A required non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_u64()
            .ok_or_else(|| self.wrong(key, v, "a non-negative integer"))
    }

    /// A required number.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_f64().ok_or_else(|| self.wrong(key, v, "a number"))
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_str().ok_or_else(|| self.wrong(key, v, "a string"))
    }

    /// A required array.
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_array().ok_or_else(|| self.wrong(key, v, "an array"))
    }

    /// An optional value that, when present, must have the type `conv` accepts.
    pub fn get_opt<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v)
                .map(Some)
                .ok_or_else(|| self.wrong(key, v, expected)),
        }
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor's directory entry by name.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }

    /// Whether a tensor of that name exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The raw bytes of a tensor, borrowed from the map (bounds were checked at open).
    ///
    /// # Panics
    /// If `info` is not one of this file's [`tensors`](GgufFile::tensors) and lies
    /// outside it.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.backing.bytes()[info.offset as usize..(info.offset + info.size) as usize]
    }

    /// Tells the system this process no longer needs bytes `offset..offset + len` of a
    /// mapped file in memory (after copying them elsewhere): their pages leave the process's
    /// resident memory and stay in the page cache; reading them again faults them back in
    /// from the file, with the same contents. Does nothing for a file read into memory, on
    /// systems without `madvise`, or if the system declines.
    pub fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if let Backing::Mmap(m) = &self.backing {
            if offset.checked_add(len).is_some_and(|end| end <= m.len()) {
                // SAFETY: the mapping is read-only and of a file this program does not write:
                // dropped pages are read back from the file unchanged, so every reference
                // into the map keeps seeing the same bytes.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }

    /// The whole file's bytes (tensor data is addressed by [`TensorInfo::offset`]).
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// A tensor decoded to f32 (a copy; for small tensors and tests).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        let unsupported = || GgufError::Unsupported {
            path: self.path.clone(),
            name: info.name.clone(),
            ty: info.ty.name().to_owned(),
        };
        // Refuse before allocating: the output is bounded by the file size only for
        // the types that decode.
        if !info.ty.is_supported() {
            return Err(unsupported());
        }
        let mut out = vec![0f32; info.n_elements() as usize];
        // Open checked that the data holds exactly the elements, so only the type can fail.
        crate::gguf::quant::dequantize(info.ty, self.tensor_data(info), &mut out)
            .map_err(|_| unsupported())?;
        Ok(out)
    }
}
