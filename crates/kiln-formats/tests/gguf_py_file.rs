//! A file written by gguf-py's GGUFWriter (llama.cpp's Python package) reads back as
//! written: see `data/make_dequant_refs.py`, which made `data/gguf_py_small.gguf`.

use kiln_formats::gguf::{GgmlType, GgufFile, Value, ValueType};

#[test]
fn reads_a_file_written_by_gguf_py() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf_py_small.gguf");
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_str("general.name").unwrap(), "kiln test");
    assert_eq!(f.get_u64("general.alignment").unwrap(), 64);
    let get = |k: &str| f.get(k).unwrap_or_else(|| panic!("{k}")).clone();
    assert_eq!(get("t.u8"), Value::U8(200));
    assert_eq!(get("t.i8"), Value::I8(-100));
    assert_eq!(get("t.u16"), Value::U16(60000));
    assert_eq!(get("t.i16"), Value::I16(-30000));
    assert_eq!(get("t.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("t.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("t.f32"), Value::F32(0.15625));
    assert_eq!(get("t.bool"), Value::Bool(true));
    assert_eq!(get("t.str"), Value::String("héllo, wörld".into()));
    assert_eq!(get("t.u64"), Value::U64(u64::MAX));
    assert_eq!(get("t.i64"), Value::I64(i64::MIN));
    assert_eq!(get("t.f64"), Value::F64(-1e300));
    let i32s = |v: &[i32]| Value::Array(ValueType::I32, v.iter().map(|&x| Value::I32(x)).collect());
    assert_eq!(get("t.arr_i32"), i32s(&[1, -2, 3]));
    assert_eq!(
        get("t.arr_str"),
        Value::Array(
            ValueType::String,
            ["a", "", "ccc"]
                .iter()
                .map(|s| Value::String((*s).into()))
                .collect()
        )
    );
    assert_eq!(
        get("t.arr_f32"),
        Value::Array(ValueType::F32, vec![Value::F32(0.5), Value::F32(-1.5)])
    );
    assert_eq!(
        get("t.arr_nested"),
        Value::Array(ValueType::Array, vec![i32s(&[1, 2]), i32s(&[3])])
    );
    assert_eq!(
        get("t.arr_bool"),
        Value::Array(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)])
    );
    assert_eq!(f.metadata().len(), 20);

    // gguf-py puts the tensor data at offsets 832, 896 and 960 (GGUFReader's view).
    let t = f.tensor("f32").unwrap();
    assert_eq!(
        (t.dims.as_slice(), t.ty, t.offset, t.size),
        (&[4, 3][..], GgmlType::F32, 832, 48)
    );
    let want: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
    assert_eq!(f.tensor_f32("f32").unwrap(), want);
    let t = f.tensor("f16").unwrap();
    assert_eq!((t.dims.as_slice(), t.offset), (&[3][..], 896));
    assert_eq!(f.tensor_f32("f16").unwrap(), [1.0, -2.0, 0.5]);
    let t = f.tensor("q8").unwrap();
    assert_eq!(
        (t.dims.as_slice(), t.ty, t.offset, t.size),
        (&[64, 1][..], GgmlType::Q8_0, 960, 68)
    );
    let want: Vec<f32> = (0..32)
        .map(|q| 0.5 * q as f32)
        .chain((-32..0).map(|q| -0.25 * q as f32))
        .collect();
    assert_eq!(f.tensor_f32("q8").unwrap(), want);
}
