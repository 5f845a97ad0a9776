//! Request bodies of `application/yaml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_control::api::fuzz::decode("application/yaml", data));
