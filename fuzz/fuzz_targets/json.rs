//! Request bodies of `application/json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_control::api::fuzz::decode("application/json", data));
