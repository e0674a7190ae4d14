//! Arbitrary text through three real tokenizers and a chat template (`checks/tokenizer.rs`).
//! Run with `-timeout=2`: an input that takes longer is a complexity bug.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../checks/tokenizer.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    static T: OnceLock<check::Tokenizers> = OnceLock::new();
    let t = T.get_or_init(|| check::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")));
    check::check(t, data);
});
