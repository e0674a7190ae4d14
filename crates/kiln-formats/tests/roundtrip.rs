//! Files made by `kiln_formats::gguf::writer` (and by hand) read back as written.

mod common;

use std::collections::BTreeMap;

use common::{arrays, parse, rich_file, rich_writer, scalars, Raw, NAME};
use kiln_formats::gguf::quant::dequantize;
use kiln_formats::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value, ValueType};

/// Values compared bit for bit, so that -0.0, infinities and NaN count.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(t, xs), Value::Array(u, ys)) => {
            t == u && xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same(x, y))
        }
        _ => a == b,
    }
}

#[test]
fn every_metadata_value_type_round_trips_in_v2_and_v3() {
    let want: BTreeMap<String, Value> = scalars()
        .into_iter()
        .chain(arrays())
        .map(|(k, v)| (k.to_owned(), v))
        .chain([(
            "general.architecture".to_owned(),
            Value::String("llama".into()),
        )])
        .collect();
    for version in [2, 3] {
        let f = parse(rich_writer().version(version).to_bytes()).unwrap();
        assert_eq!(f.version, version);
        let got = f.metadata();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, v) in &want {
            assert!(same(&got[k], v), "v{version} {k}: {:?} != {v:?}", got[k]);
        }
    }
    // Every value type appears, as a value and as an array element type.
    let tags: Vec<u32> = want.values().map(|v| v.value_type().tag()).collect();
    let elem_tags: Vec<u32> = want
        .values()
        .filter_map(|v| match v {
            Value::Array(t, _) => Some(t.tag()),
            _ => None,
        })
        .collect();
    for tag in 0..13 {
        assert!(tags.contains(&tag), "no value of type tag {tag}");
        assert!(elem_tags.contains(&tag), "no array of type tag {tag}");
    }
}

#[test]
fn nan_metadata_keeps_its_bits() {
    let nan = f32::from_bits(0x7fc0_1234);
    let f = parse(
        GgufWriter::new()
            .metadata("x", Value::F32(nan))
            .metadata("y", Value::F64(f64::from_bits(0xfff8_0000_0000_0001)))
            .to_bytes(),
    )
    .unwrap();
    assert!(same(f.get("x").unwrap(), &Value::F32(nan)));
    assert!(same(
        f.get("y").unwrap(),
        &Value::F64(f64::from_bits(0xfff8_0000_0000_0001))
    ));
}

#[test]
fn typed_getters() {
    let f = parse(rich_file()).unwrap();
    assert_eq!(f.get_u64("t.u8").unwrap(), 255);
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_f64("t.i64").unwrap(), i64::MIN as f64);
    assert_eq!(f.get_f64("t.f32").unwrap(), 0.0);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), 4);
    assert_eq!(
        f.get_opt("t.bool_t", "a boolean", Value::as_bool).unwrap(),
        Some(true)
    );
    assert_eq!(
        f.get_opt("nope", "a boolean", Value::as_bool).unwrap(),
        None
    );

    // Wrong types and missing keys name the file, the key and what was expected.
    let e = f.get_u64("t.i8").unwrap_err();
    assert!(matches!(e, GgufError::WrongType { .. }));
    assert_eq!(
        e.to_string(),
        format!("{NAME}: metadata key `t.i8` is i8, expected a non-negative integer")
    );
    let e = f.get_str("a.u32").unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{NAME}: metadata key `a.u32` is array of 2 U32, expected a string")
    );
    let e = f.get_f64("t.str").unwrap_err().to_string();
    assert!(e.contains("`t.str` is string, expected a number"), "{e}");
    let e = f.get_array("t.u8").unwrap_err().to_string();
    assert!(e.contains("expected an array"), "{e}");
    let e = f.get_opt("t.u8", "a boolean", Value::as_bool).unwrap_err();
    assert!(e.to_string().contains("expected a boolean"), "{e}");
    let e = f.get_u64("llama.block_count").unwrap_err();
    assert!(matches!(e, GgufError::MissingKey { .. }));
    assert_eq!(
        e.to_string(),
        format!("{NAME}: metadata key `llama.block_count` is missing")
    );
}

#[test]
fn tensor_infos_and_data() {
    let w = rich_writer();
    let f = parse(w.to_bytes()).unwrap();
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["w.f32", "w.q8", "w.f16"]);

    let t = f.tensor("w.f32").unwrap();
    assert_eq!(
        (t.dims.as_slice(), t.ty, t.size),
        (&[3, 2][..], GgmlType::F32, 24)
    );
    assert_eq!((t.row_len(), t.n_rows(), t.n_elements()), (3, 2, 6));
    let v = f.tensor_f32("w.f32").unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&v), bits(&[1.0, -2.0, 3.5, 0.0, -0.0, 1e-3]));

    let t = f.tensor("w.q8").unwrap();
    assert_eq!(
        (t.dims.as_slice(), t.ty, t.size),
        (&[64][..], GgmlType::Q8_0, 68)
    );
    assert_eq!((t.row_len(), t.n_rows()), (64, 1));
    let raw = f.tensor_data(t);
    let want: Vec<u8> = (0..68)
        .map(|i| if i % 34 == 1 { 0x38 } else { i as u8 })
        .collect();
    assert_eq!(raw, want.as_slice());
    let mut want_f = vec![0f32; 64];
    dequantize(GgmlType::Q8_0, &want, &mut want_f).unwrap();
    assert_eq!(f.tensor_f32("w.q8").unwrap(), want_f);
    assert_eq!(want_f[2], 0.5 * 4.0); // scale 0.5, quant byte 2 + 2

    assert_eq!(f.tensor_f32("w.f16").unwrap(), [1.0]);
    assert!(f.has_tensor("w.f16"));
    assert!(!f.has_tensor("w.f17"));
    let e = f.tensor("w.f17").unwrap_err();
    assert_eq!(e.to_string(), format!("{NAME}: tensor `w.f17` is missing"));
    let e = f.tensor_f32("w.f17").unwrap_err();
    assert!(matches!(e, GgufError::MissingTensor { .. }));

    // The data start and every tensor are aligned to the default 32.
    for t in f.tensors() {
        assert_eq!(t.offset % 32, 0, "{}", t.name);
    }
}

#[test]
fn every_supported_format_decodes_through_the_file() {
    let mut w = GgufWriter::new();
    for ty in GgmlType::ALL {
        let (elems, bytes) = ty.block();
        // Two rows of two blocks; an f16 1.0 in front of each block keeps scales sane.
        let data: Vec<u8> = (0..4 * bytes)
            .map(|i| match i % bytes {
                0 => 0x00,
                1 => 0x3c,
                j => (j * 7) as u8,
            })
            .collect();
        w = w.tensor(ty.name(), &[2 * elems as u64, 2], ty, data);
    }
    let f = parse(w.to_bytes()).unwrap();
    for ty in GgmlType::ALL {
        let t = f.tensor(ty.name()).unwrap();
        let (elems, bytes) = ty.block();
        assert_eq!((t.ty, t.size), (ty, 4 * bytes as u64));
        assert_eq!((t.row_len(), t.n_rows()), (2 * elems, 2));
        assert_eq!(f.tensor_data(t).len(), 4 * bytes);
        match f.tensor_f32(ty.name()) {
            Ok(v) => {
                assert!(ty.is_supported());
                let mut want = vec![0f32; 4 * elems];
                dequantize(ty, f.tensor_data(t), &mut want).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&v), bits(&want), "{}", ty.name());
            }
            Err(e) => {
                assert!(!ty.is_supported(), "{}: {e}", ty.name());
                assert!(matches!(e, GgufError::Unsupported { .. }));
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!(
                        "{NAME}: tensor `{}` uses type {}",
                        ty.name(),
                        ty.name()
                    )),
                    "{msg}"
                );
            }
        }
    }
}

#[test]
fn custom_alignment_is_honoured() {
    for align in [1u32, 8, 64, 256, 1 << 20] {
        let w = GgufWriter::new()
            .alignment(align)
            .tensor("a", &[3], GgmlType::I8, vec![1, 2, 3])
            .tensor("b", &[5], GgmlType::I8, vec![4, 5, 6, 7, 8])
            .tensor_f32("c", &[1], &[9.0]);
        assert_eq!(w.data_alignment(), align as u64);
        let bytes = w.to_bytes();
        let f = parse(bytes).unwrap();
        assert_eq!(f.get_u64("general.alignment").unwrap(), align as u64);
        let a = f.tensor("a").unwrap();
        let b = f.tensor("b").unwrap();
        for t in f.tensors() {
            assert_eq!(t.offset % align as u64, 0, "align {align}: {}", t.name);
        }
        assert_eq!(
            b.offset - a.offset,
            3u64.div_ceil(align as u64) * align as u64
        );
        assert_eq!(f.tensor_data(a), [1, 2, 3]);
        assert_eq!(f.tensor_data(b), [4, 5, 6, 7, 8]);
        assert_eq!(f.tensor_f32("c").unwrap(), [9.0]);
    }
    // Any integer type is accepted for the alignment.
    let f = parse(
        GgufWriter::new()
            .metadata("general.alignment", Value::U64(16))
            .tensor("a", &[1], GgmlType::I8, vec![1])
            .tensor("b", &[1], GgmlType::I8, vec![2])
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(
        f.tensor("b").unwrap().offset - f.tensor("a").unwrap().offset,
        16
    );
}

#[test]
fn writer_bytes_match_the_format_written_by_hand() {
    let w = GgufWriter::new()
        .version(2)
        .metadata(
            "k",
            Value::Array(ValueType::String, vec![Value::String("ab".into())]),
        )
        .metadata("b", Value::Bool(true))
        .tensor("t", &[2, 1], GgmlType::F16, vec![0x00, 0x3c, 0x00, 0xc0]);
    let mut r = Raw::header(2, 1, 2);
    r.key("k", ValueType::Array).u32(8).u64(1).str("ab");
    r.key("b", ValueType::Bool).u8(1);
    r.tensor("t", &[2, 1], 1, 0).pad(32);
    r.bytes(&[0x00, 0x3c, 0x00, 0xc0]).pad(32);
    let bytes = w.to_bytes();
    assert_eq!(bytes, r.0);
    let f = parse(bytes).unwrap();
    assert_eq!(f.tensor_f32("t").unwrap(), [1.0, -2.0]);
}

#[test]
fn version_1_files_read_with_32_bit_counts() {
    let mut r = Raw::default();
    r.bytes(b"GGUF").u32(1).u32(1).u32(2);
    r.u32(1).bytes(b"s").u32(8).u32(2).bytes(b"hi");
    r.u32(1).bytes(b"a").u32(9).u32(4).u32(2).u32(7).u32(8);
    r.u32(1)
        .bytes(b"t")
        .u32(2)
        .u32(1)
        .u32(2)
        .u32(0)
        .u64(0)
        .pad(32);
    r.bytes(&1f32.to_le_bytes()).bytes(&2f32.to_le_bytes());
    let f = parse(r.take()).unwrap();
    assert_eq!(f.version, 1);
    assert_eq!(f.get_str("s").unwrap(), "hi");
    assert_eq!(
        f.get("a").unwrap(),
        &Value::Array(ValueType::U32, vec![Value::U32(7), Value::U32(8)])
    );
    assert_eq!(f.tensor("t").unwrap().dims, [1, 2]);
    assert_eq!(f.tensor_f32("t").unwrap(), [1.0, 2.0]);
}

#[test]
fn empty_file_is_valid() {
    let f = parse(GgufWriter::new().to_bytes()).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());
    assert_eq!(f.path(), std::path::Path::new(NAME));
    // 24 bytes of header, padded to the alignment as gguf-py does.
    assert_eq!(GgufWriter::new().to_bytes().len(), 32);
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kiln-gguf-{}-{tag}.gguf", std::process::id()))
}

#[test]
fn open_maps_the_same_file_from_disk() {
    let path = temp_path("open");
    rich_writer().write_to(&path).unwrap();
    let disk = GgufFile::open(&path);
    let mem = parse(rich_file()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let disk = disk.unwrap();
    assert_eq!(disk.path(), path);
    assert_eq!(disk.metadata().len(), mem.metadata().len());
    assert_eq!(disk.tensors().len(), mem.tensors().len());
    for t in mem.tensors() {
        let d = disk.tensor(&t.name).unwrap();
        assert_eq!((d.offset, d.size, &d.dims), (t.offset, t.size, &t.dims));
        assert_eq!(disk.tensor_data(d), mem.tensor_data(t));
    }
    assert!(format!("{disk:?}").contains("tensors: 3"));
}

#[test]
fn open_errors_name_the_path() {
    let path = temp_path("missing");
    let e = GgufFile::open(&path).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{}: cannot read: ", path.display())),
        "{msg}"
    );
    // A directory opens but cannot be mapped.
    let e = GgufFile::open(std::env::temp_dir()).unwrap_err();
    assert!(e
        .to_string()
        .contains(&std::env::temp_dir().display().to_string()));
    // An empty file is a truncated one.
    let path = temp_path("empty");
    std::fs::write(&path, b"").unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert!(e.contains("truncated") && e.contains("magic"), "{e}");
}
