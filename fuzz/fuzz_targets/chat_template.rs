//! Arbitrary chat template sources, compiled and rendered (`checks/chat_template.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/chat_template.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
