//! Helpers shared by the integration tests: a byte builder for hand-made (often
//! hostile) GGUF images, a rich valid file, and error checks.
#![allow(dead_code)] // each test binary uses a different part

use kiln_formats::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value, ValueType};

/// The name errors must carry for images parsed with [`parse`].
pub const NAME: &str = "bad.gguf";

/// Little-endian bytes appended by hand, for files the writer would not make.
#[derive(Default, Clone)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version and the two counts of a v2/v3 header.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw::default();
        r.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// A v2/v3 string: u64 length, then the bytes.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A key, its type tag (the value follows by hand).
    pub fn key(&mut self, k: &str, ty: ValueType) -> &mut Self {
        self.str(k).u32(ty.tag())
    }
    /// A v2/v3 tensor info.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zeros up to the next multiple of `align`.
    pub fn pad(&mut self, align: usize) -> &mut Self {
        let n = self.0.len().div_ceil(align) * align;
        self.0.resize(n, 0);
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Parses an in-memory image named [`NAME`].
pub fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(NAME, bytes)
}

/// Parses an image that must be refused as malformed; returns the message, after checking
/// that it names the file and contains every one of `phrases`.
#[track_caller]
pub fn malformed(bytes: Vec<u8>, phrases: &[&str]) -> String {
    let e = match parse(bytes) {
        Ok(f) => panic!("accepted a bad file: {f:?}"),
        Err(e) => e,
    };
    assert!(
        matches!(e, GgufError::Malformed { .. }),
        "not a Malformed error: {e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{NAME}: not a valid GGUF file: ")),
        "message does not name the file: {msg}"
    );
    for p in phrases {
        assert!(msg.contains(p), "message lacks {p:?}: {msg}");
    }
    msg
}

/// One value of each scalar type, with extreme values.
pub fn scalars() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(u8::MAX)),
        ("t.i8", Value::I8(i8::MIN)),
        ("t.u16", Value::U16(u16::MAX)),
        ("t.i16", Value::I16(i16::MIN)),
        ("t.u32", Value::U32(u32::MAX)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.f32", Value::F32(-0.0)),
        ("t.bool_t", Value::Bool(true)),
        ("t.bool_f", Value::Bool(false)),
        ("t.str", Value::String("héllo \u{1F525}\n\0".into())),
        ("t.str_empty", Value::String(String::new())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(f64::NEG_INFINITY)),
    ]
}

/// Arrays: of every element type, empty, of strings, nested two and three deep.
pub fn arrays() -> Vec<(&'static str, Value)> {
    let mut v: Vec<(&'static str, Value)> = vec![
        (
            "a.u8",
            Value::Array(ValueType::U8, vec![Value::U8(0), Value::U8(255)]),
        ),
        ("a.i8", Value::Array(ValueType::I8, vec![Value::I8(-1)])),
        ("a.u16", Value::Array(ValueType::U16, vec![Value::U16(7)])),
        ("a.i16", Value::Array(ValueType::I16, vec![Value::I16(-7)])),
        (
            "a.u32",
            Value::Array(ValueType::U32, vec![Value::U32(1), Value::U32(2)]),
        ),
        ("a.i32", Value::Array(ValueType::I32, vec![Value::I32(-3)])),
        (
            "a.f32",
            Value::Array(ValueType::F32, vec![Value::F32(1.5), Value::F32(f32::MAX)]),
        ),
        (
            "a.bool",
            Value::Array(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)]),
        ),
        (
            "a.u64",
            Value::Array(ValueType::U64, vec![Value::U64(1 << 40)]),
        ),
        (
            "a.i64",
            Value::Array(ValueType::I64, vec![Value::I64(-(1 << 40))]),
        ),
        (
            "a.f64",
            Value::Array(ValueType::F64, vec![Value::F64(1e-300)]),
        ),
        ("a.empty", Value::Array(ValueType::U32, vec![])),
        ("a.empty_str", Value::Array(ValueType::String, vec![])),
    ];
    let strs = |s: &[&str]| {
        Value::Array(
            ValueType::String,
            s.iter().map(|x| Value::String((*x).into())).collect(),
        )
    };
    v.push(("tokenizer.ggml.tokens", strs(&["<s>", "", "▁the", "\u{0}"])));
    v.push((
        "a.nested",
        Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::U32, vec![Value::U32(1), Value::U32(2)]),
                Value::Array(ValueType::String, vec![]),
                strs(&["x", "yz"]),
            ],
        ),
    ));
    v.push((
        "a.nested3",
        Value::Array(
            ValueType::Array,
            vec![Value::Array(
                ValueType::Array,
                vec![strs(&["deep"]), strs(&[])],
            )],
        ),
    ));
    v
}

/// A writer holding every metadata value type and a few tensors of several formats.
pub fn rich_writer() -> GgufWriter {
    let mut w = GgufWriter::new().metadata("general.architecture", Value::String("llama".into()));
    for (k, v) in scalars().into_iter().chain(arrays()) {
        w = w.metadata(k, v);
    }
    let q8: Vec<u8> = (0..2 * 34)
        .map(|i| if i % 34 == 1 { 0x38 } else { i as u8 })
        .collect();
    w.tensor_f32("w.f32", &[3, 2], &[1.0, -2.0, 3.5, 0.0, -0.0, 1e-3])
        .tensor("w.q8", &[64], GgmlType::Q8_0, q8)
        .tensor("w.f16", &[1], GgmlType::F16, vec![0x00, 0x3c])
}

/// The bytes of [`rich_writer`].
pub fn rich_file() -> Vec<u8> {
    rich_writer().to_bytes()
}
