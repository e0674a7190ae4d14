//! Arbitrary request bodies through the server's request parser (`checks/request.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/request.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
