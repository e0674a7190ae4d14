//! Writes a few small valid GGUF files to seed the fuzzer's corpus.
//!
//! `cargo run -p kiln-formats --example fuzz_seeds -- fuzz/corpus/gguf_parse`

use kiln_formats::gguf::{GgmlType, GgufWriter, Value, ValueType};

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus/gguf_parse".into());
    std::fs::create_dir_all(&dir)?;
    let strs = |s: &[&str]| {
        Value::Array(
            ValueType::String,
            s.iter().map(|x| Value::String((*x).into())).collect(),
        )
    };
    let scalars = GgufWriter::new()
        .metadata("general.architecture", Value::String("llama".into()))
        .metadata("u8", Value::U8(1))
        .metadata("i8", Value::I8(-1))
        .metadata("u16", Value::U16(2))
        .metadata("i16", Value::I16(-2))
        .metadata("u32", Value::U32(3))
        .metadata("i32", Value::I32(-3))
        .metadata("f32", Value::F32(0.5))
        .metadata("bool", Value::Bool(true))
        .metadata("u64", Value::U64(4))
        .metadata("i64", Value::I64(-4))
        .metadata("f64", Value::F64(0.25));
    let arrays = GgufWriter::new()
        .version(2)
        .metadata("tokens", strs(&["<s>", "a", ""]))
        .metadata(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::U32, vec![Value::U32(1)]),
                    strs(&["x"]),
                ],
            ),
        )
        .metadata(
            "bools",
            Value::Array(ValueType::Bool, vec![Value::Bool(false)]),
        );
    let block = |ty: GgmlType| {
        let (_, bytes) = ty.block();
        // An f16 1.0 at the front keeps the block's scale finite.
        let mut b = vec![0x11u8; bytes];
        b[0] = 0;
        b[1] = 0x3c;
        b
    };
    let mut tensors = GgufWriter::new().alignment(16);
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q2_K,
    ] {
        tensors = tensors.tensor(ty.name(), &[ty.block().0 as u64], ty, block(ty));
    }
    let matrix = GgufWriter::new().tensor_f32("m", &[2, 3, 1, 1], &[1., 2., 3., 4., 5., 6.]);
    for (name, w) in [
        ("scalars", scalars),
        ("arrays", arrays),
        ("tensors", tensors),
        ("matrix", matrix),
    ] {
        w.write_to(format!("{dir}/{name}.gguf"))?;
    }
    Ok(())
}
