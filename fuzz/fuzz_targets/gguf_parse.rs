//! Feeds arbitrary bytes to the GGUF reader and, when it accepts them, uses everything
//! the file hands out. Any panic, overflow, out-of-memory or timeout is a bug.
#![no_main]

use kiln_formats::gguf::{GgufFile, Value};
use libfuzzer_sys::fuzz_target;

/// Touches every value, nested arrays included.
fn walk(v: &Value) -> usize {
    let _ = (
        v.type_name(),
        v.as_u64(),
        v.as_f64(),
        v.as_str(),
        v.as_bool(),
    );
    match v.as_array() {
        Some(items) => items.iter().map(walk).sum::<usize>() + 1,
        None => 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz", data.to_vec()) else {
        return;
    };
    let mut n = 0;
    for (key, value) in file.metadata() {
        n += key.len() + walk(value);
        let _ = file.get_u64(key);
        let _ = file.get_f64(key);
        let _ = file.get_str(key);
        let _ = file.get_array(key);
    }
    for info in file.tensors() {
        let data = file.tensor_data(info);
        assert_eq!(data.len() as u64, info.size);
        assert!(file.has_tensor(&info.name));
        let _ = (info.row_len(), info.n_rows());
        if info.n_elements() < 1 << 20 {
            if let Ok(values) = file.tensor_f32(&info.name) {
                assert_eq!(values.len() as u64, info.n_elements());
                n += values.len();
            }
        }
    }
    std::hint::black_box(n);
});
