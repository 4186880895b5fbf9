//! The API key parser (contract section 2). The properties checked are in `keybound::fuzzing::api_key`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound::fuzzing::api_key(data));
