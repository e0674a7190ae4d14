//! What the `request` fuzz target checks, shared with the corpus replay test
//! (`crates/kiln-server/tests/fuzz_corpus.rs`).
//!
//! The input is a request body. Parsing it as a chat and as a completions request must end
//! in a request or a 400 naming a field, never a panic.

/// Checks one input.
pub fn check(data: &[u8]) {
    for chat in [true, false] {
        if let Err(e) = kiln_server::parse_request(data, chat, 512) {
            assert_eq!(e.status.as_u16(), 400, "{}", e.message);
            assert!(e.param.is_some(), "the error names a field: {}", e.message);
        }
    }
}
