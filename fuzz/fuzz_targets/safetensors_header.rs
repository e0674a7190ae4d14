//! Arbitrary safetensors files (`checks/safetensors_header.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/safetensors_header.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
