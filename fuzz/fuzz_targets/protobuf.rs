//! Request bodies of `application/vnd.kubernetes.protobuf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_control::api::fuzz::decode(
    "application/vnd.kubernetes.protobuf",
    data
));
