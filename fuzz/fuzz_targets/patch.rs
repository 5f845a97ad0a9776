//! JSON, merge and strategic merge patches (see `skiff_control::api::fuzz::patch` for the layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_control::api::fuzz::patch(data));
