//! What the `safetensors_header` fuzz target checks, shared with the corpus replay test
//! (`crates/kiln-model/tests/fuzz_corpus.rs`).
//!
//! The input is a whole safetensors file. The reader must accept it or say why, without a
//! panic or an allocation the file's size does not justify; what it accepts must be
//! readable: every tensor's bytes inside the file, and small float tensors convertible.

use kiln_formats::safetensors::SafeTensors;

/// Checks one input.
pub fn check(data: &[u8]) {
    let len = data.len();
    let Ok(st) = SafeTensors::from_bytes("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    for (name, info) in st.tensors() {
        let bytes = st.data(info);
        assert!(bytes.len() <= len);
        assert_eq!(bytes.len(), info.n_elements() * info.dtype.size(), "{name}");
        if info.n_elements() < 1 << 16 {
            let _ = st.to_f32(name);
        }
    }
}
