//! Malformed, truncated and hostile files are refused with an error that names the file
//! and what is wrong: never a panic, never a large allocation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{malformed, parse, rich_file, rich_writer, Raw, NAME};
use kiln_formats::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value, ValueType};

/// Passes everything to the system allocator, noting per thread the largest single
/// request, so a test can check that a hostile file made no large allocation.
struct Watching;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator also runs while thread-locals are torn down.
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Watching = Watching;

/// Largest single allocation `f` made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|m| m.set(0));
    let out = f();
    (out, LARGEST.with(|m| m.get()))
}

/// [`malformed`], also checking that the refusal allocated at most 64 KiB at once.
#[track_caller]
fn refused_cheaply(bytes: Vec<u8>, phrases: &[&str]) -> String {
    let (msg, largest) = largest_allocation(|| malformed(bytes, phrases));
    assert!(
        largest <= 64 << 10,
        "allocated {largest} bytes at once for: {msg}"
    );
    msg
}

/// Parses and, if that works, touches everything a user could: never panics.
fn parse_and_walk(bytes: Vec<u8>) -> Result<(), GgufError> {
    let f = parse(bytes)?;
    for (k, v) in f.metadata() {
        let _ = (k.len(), v.type_name(), v.as_u64(), v.as_f64(), v.as_str());
    }
    for t in f.tensors() {
        let _ = f.tensor_data(t);
        let _ = (t.row_len(), t.n_rows());
        if t.n_elements() < 1 << 20 {
            let _ = f.tensor_f32(&t.name);
        }
    }
    Ok(())
}

#[test]
fn bad_magic() {
    let mut b = rich_file();
    b[..4].copy_from_slice(b"GGML");
    let msg = refused_cheaply(b, &["bad magic", "expected \"GGUF\""]);
    assert!(msg.contains("[47, 47, 4d, 4c]"), "{msg}");
    refused_cheaply(b"\x7fELF\x02\x01\x01\0".to_vec(), &["bad magic"]);
    refused_cheaply(Vec::new(), &["truncated at byte 0", "magic"]);
    refused_cheaply(
        b"GGU".to_vec(),
        &["truncated", "magic", "need 4 bytes, 3 left"],
    );
}

#[test]
fn unknown_versions() {
    for v in [0u32, 4, 0x0300_0000, u32::MAX] {
        let mut b = rich_file();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        refused_cheaply(b, &[&format!("unsupported version {v}")]);
    }
    refused_cheaply(b"GGUF\x03\0".to_vec(), &["truncated", "version"]);
}

/// End of the last tensor's data: every shorter prefix is a truncated file.
fn data_end(bytes: &[u8]) -> usize {
    let f = parse(bytes.to_vec()).unwrap();
    f.tensors()
        .iter()
        .map(|t| (t.offset + t.size) as usize)
        .max()
        .unwrap()
}

#[test]
fn every_truncation_is_an_error() {
    for bytes in [
        rich_file(),
        rich_writer().version(2).to_bytes(),
        rich_writer().alignment(128).to_bytes(),
    ] {
        let end = data_end(&bytes);
        assert!(end < bytes.len(), "the file ends in padding");
        for cut in 0..bytes.len() {
            let prefix = bytes[..cut].to_vec();
            if cut < end {
                let (res, largest) = largest_allocation(|| parse_and_walk(prefix));
                let msg = res.expect_err("a truncated file was accepted").to_string();
                assert!(
                    msg.starts_with(&format!("{NAME}: not a valid GGUF file: ")),
                    "{msg}"
                );
                assert!(
                    ["truncated", "bytes left", "outside the file"]
                        .iter()
                        .any(|p| msg.contains(p)),
                    "cut at {cut}: {msg}"
                );
                assert!(largest <= 64 << 10, "cut at {cut}: allocated {largest}");
            } else {
                // Only the padding after the last tensor is cut: still a whole file.
                parse_and_walk(prefix).unwrap();
            }
        }
    }
    // Cutting the data names the tensor and suggests truncation.
    let bytes = rich_file();
    let msg = refused_cheaply(
        bytes[..data_end(&bytes) - 1].to_vec(),
        &[
            "tensor `w.f16`",
            "outside the file",
            "is the file truncated?",
        ],
    );
    assert!(
        msg.contains(&format!("({} bytes)", data_end(&bytes) - 1)),
        "{msg}"
    );
}

#[test]
fn every_byte_mutation_is_handled_without_panic() {
    // A small deterministic fuzz: each byte of a valid file set to a few values.
    let bytes = rich_file();
    let (mut ok, mut err) = (0, 0);
    for i in 0..bytes.len() {
        let b = bytes[i];
        for v in [
            0x00,
            0xff,
            0x7f,
            0x80,
            b ^ 0x01,
            b ^ 0x10,
            b.wrapping_add(1),
        ] {
            if v == b {
                continue;
            }
            let mut m = bytes.clone();
            m[i] = v;
            let (res, largest) = largest_allocation(|| parse_and_walk(m));
            assert!(largest <= 1 << 20, "byte {i} = {v:#x}: allocated {largest}");
            match res {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert!(e.to_string().starts_with(NAME), "{e}");
                    err += 1;
                }
            }
        }
    }
    // Both outcomes occur: data bytes can change freely, header bytes mostly cannot.
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    refused_cheaply(
        Raw::header(3, 1 << 60, 0).take(),
        &["tensor count: length 1152921504606846976", "bytes left"],
    );
    refused_cheaply(
        Raw::header(3, 0, u64::MAX).take(),
        &["metadata count", "bytes left"],
    );
    // Key length 2^62.
    let mut r = Raw::header(3, 0, 1);
    r.u64(1 << 62).zeros(64);
    refused_cheaply(
        r.take(),
        &["metadata key #0: length 4611686018427387904", "bytes left"],
    );
    // String value length 2^62.
    let mut r = Raw::header(3, 0, 1);
    r.key("s", ValueType::String).u64(1 << 62).bytes(b"abc");
    refused_cheaply(r.take(), &["`s`", "4611686018427387904", "bytes left"]);
    // Array counts beyond the file, for small and large element types.
    for (ety, n) in [
        (ValueType::U8, u64::MAX),
        (ValueType::U64, 1 << 40),
        (ValueType::String, 1 << 59),
        (ValueType::Array, 1 << 61),
    ] {
        let mut r = Raw::header(3, 0, 1);
        r.key("arr", ValueType::Array)
            .u32(ety.tag())
            .u64(n)
            .zeros(64);
        refused_cheaply(r.take(), &["`arr`", &n.to_string(), "bytes left"]);
    }
    // Tensor name length.
    let mut r = Raw::header(3, 1, 0);
    r.u64(u64::MAX - 1).zeros(40);
    refused_cheaply(r.take(), &["tensor #0 name", "bytes left"]);
    // Dimension count.
    let mut r = Raw::header(3, 1, 0);
    r.str("t").u32(u32::MAX).zeros(64);
    refused_cheaply(
        r.take(),
        &["tensor `t` has 4294967295 dimensions (expected 1 to 4)"],
    );
}

#[test]
fn more_metadata_values_than_the_cap_are_refused() {
    // An array of 2^24 + 1 bytes, all present: refused before 32 bytes a value are spent.
    let n = (1u64 << 24) + 1;
    let mut r = Raw::header(3, 0, 1);
    r.key("big", ValueType::Array)
        .u32(ValueType::U8.tag())
        .u64(n);
    r.zeros(n as usize);
    refused_cheaply(r.take(), &["key `big`", "more than 16777216 values"]);
}

#[test]
fn huge_dimensions_are_refused() {
    for (dims, phrase) in [
        (&[1u64 << 40, 1 << 40][..], "overflow"),
        (&[1 << 62][..], "size overflows"),
        (&[1 << 61][..], "outside the file"),
        (&[u64::MAX, 2][..], "overflow"),
    ] {
        let mut r = Raw::header(3, 1, 0);
        r.tensor("t", dims, GgmlType::F32.tag(), 0)
            .pad(32)
            .zeros(32);
        refused_cheaply(r.take(), &["tensor `t`", phrase]);
    }
}

/// A file with one F32 tensor `t` of `dims`, at relative `offset`, followed by `data` bytes.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", dims, ty, offset).pad(32).zeros(data);
    r.take()
}

#[test]
fn offsets_outside_the_file_or_unaligned() {
    assert!(parse(one_tensor(&[8], 0, 0, 32)).is_ok());
    assert!(parse(one_tensor(&[8], 0, 32, 64)).is_ok());
    refused_cheaply(
        one_tensor(&[8], 0, 1 << 40, 32),
        &["tensor `t`", "outside the file"],
    );
    refused_cheaply(
        one_tensor(&[8], 0, 32, 63),
        &["data [96, +32) lies outside the file (127 bytes)"],
    );
    refused_cheaply(
        one_tensor(&[8], 0, u64::MAX - 31, 32),
        &["offset overflows"],
    );
    refused_cheaply(
        one_tensor(&[8], 0, 4, 64),
        &[
            "tensor `t`",
            "data offset 4 is not a multiple of the alignment 32",
        ],
    );
    // With a custom alignment, offsets must follow it.
    let mut r = Raw::header(3, 1, 1);
    r.key("general.alignment", ValueType::U32).u32(64);
    r.tensor("t", &[8], 0, 32).pad(64).zeros(128);
    refused_cheaply(r.take(), &["not a multiple of the alignment 64"]);
}

#[test]
fn bad_alignments() {
    for v in [
        Value::U32(0),
        Value::U32(3),
        Value::U32(1 << 21),
        Value::I32(-32),
    ] {
        let b = GgufWriter::new()
            .metadata("general.alignment", v)
            .to_bytes();
        refused_cheaply(b, &["general.alignment is", "expected a power of two"]);
    }
    let b = GgufWriter::new()
        .metadata("general.alignment", Value::String("32".into()))
        .to_bytes();
    refused_cheaply(b, &["general.alignment is String(\"32\")"]);
}

#[test]
fn unknown_type_tags() {
    for tag in [13u32, 255, u32::MAX] {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(tag).zeros(16);
        refused_cheaply(r.take(), &[&format!("key `k`: unknown value type {tag}")]);
        let mut r = Raw::header(3, 0, 1);
        r.key("k", ValueType::Array).u32(tag).u64(1).zeros(16);
        refused_cheaply(
            r.take(),
            &[&format!("key `k`: unknown array element type {tag}")],
        );
    }
    for tag in [4u32, 5, 31, 39, 1 << 31] {
        refused_cheaply(
            one_tensor(&[32], tag, 0, 256),
            &[&format!("tensor `t` has unknown type {tag}")],
        );
    }
}

#[test]
fn bad_dimensions() {
    for n in [0u32, 5] {
        let mut r = Raw::header(3, 1, 0);
        r.str("t").u32(n).zeros(64);
        refused_cheaply(
            r.take(),
            &[&format!("tensor `t` has {n} dimensions (expected 1 to 4)")],
        );
    }
    let b = GgufWriter::new()
        .tensor("t", &[4, 0], GgmlType::F32, vec![])
        .to_bytes();
    refused_cheaply(b, &["tensor `t`", "zero dimension [4, 0]"]);
    // Four dimensions are fine.
    let b = GgufWriter::new()
        .tensor_f32("t", &[1, 2, 1, 2], &[1.0, 2.0, 3.0, 4.0])
        .to_bytes();
    assert_eq!(parse(b).unwrap().tensor("t").unwrap().n_rows(), 4);
}

#[test]
fn rows_must_hold_whole_blocks() {
    let b = GgufWriter::new()
        .tensor("t", &[16, 2], GgmlType::Q4_0, vec![0; 18])
        .to_bytes();
    refused_cheaply(
        b,
        &[
            "tensor `t`",
            "row length 16 is not a multiple of the Q4_0 block size 32",
        ],
    );
    // 512 elements are two Q4_K blocks overall, but rows of 128 split them.
    let b = GgufWriter::new()
        .tensor("t", &[128, 4], GgmlType::Q4_K, vec![0; 288])
        .to_bytes();
    refused_cheaply(b, &["row length 128", "Q4_K block size 256"]);
}

#[test]
fn duplicates() {
    let b = GgufWriter::new()
        .metadata("a", Value::U8(1))
        .metadata("b", Value::U8(2))
        .metadata("a", Value::U32(3))
        .to_bytes();
    refused_cheaply(b, &["key `a` appears twice"]);
    let b = GgufWriter::new()
        .tensor_f32("w", &[1], &[1.0])
        .tensor_f32("v", &[1], &[2.0])
        .tensor_f32("w", &[1], &[3.0])
        .to_bytes();
    refused_cheaply(b, &["tensor `w`: name appears twice"]);
}

#[test]
fn bad_bool_bytes() {
    let mut r = Raw::header(3, 0, 1);
    r.key("flag", ValueType::Bool).u8(2);
    refused_cheaply(r.take(), &["key `flag`: boolean byte is 2, not 0 or 1"]);
    let mut r = Raw::header(3, 0, 1);
    r.key("flags", ValueType::Array)
        .u32(ValueType::Bool.tag())
        .u64(3)
        .bytes(&[1, 0, 0xff]);
    refused_cheaply(r.take(), &["key `flags`: boolean byte is 255"]);
}

#[test]
fn invalid_utf8() {
    let bad = b"ab\xffcd";
    let mut r = Raw::header(3, 0, 1);
    r.u64(5).bytes(bad).u32(ValueType::U8.tag()).u8(0);
    refused_cheaply(r.take(), &["metadata key #0 at byte 32 is not valid UTF-8"]);
    let mut r = Raw::header(3, 0, 1);
    r.key("s", ValueType::String).u64(5).bytes(bad);
    refused_cheaply(r.take(), &["`s`", "not valid UTF-8"]);
    let mut r = Raw::header(3, 0, 1);
    r.key("toks", ValueType::Array)
        .u32(ValueType::String.tag())
        .u64(2);
    r.str("fine").u64(2).bytes(b"\xc3\x28");
    refused_cheaply(r.take(), &["`toks`", "not valid UTF-8"]);
    let mut r = Raw::header(3, 1, 0);
    r.u64(5)
        .bytes(bad)
        .u32(1)
        .u64(1)
        .u32(0)
        .u64(0)
        .pad(32)
        .zeros(4);
    refused_cheaply(r.take(), &["tensor #0 name at byte 32 is not valid UTF-8"]);
}

#[test]
fn arrays_nested_too_deep() {
    let mut v = Value::Array(ValueType::U8, vec![Value::U8(1)]);
    for _ in 0..3 {
        v = Value::Array(ValueType::Array, vec![v]);
    }
    let b = GgufWriter::new().metadata("deep", v).to_bytes();
    refused_cheaply(b, &["key `deep`: arrays nested too deep"]);
    // A hostile chain of a million nested arrays stops at the limit, without recursion.
    let mut r = Raw::header(3, 0, 1);
    r.key("deep", ValueType::Array);
    for _ in 0..1_000_000 {
        r.u32(ValueType::Array.tag()).u64(1);
    }
    refused_cheaply(r.take(), &["nested too deep"]);
}

#[test]
fn io_errors_are_not_malformed() {
    let e = GgufFile::open("/nonexistent/dir/model.gguf").unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
    assert!(e
        .to_string()
        .starts_with("/nonexistent/dir/model.gguf: cannot read: "));
}
