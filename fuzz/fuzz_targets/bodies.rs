//! The request body parsers: TokenRequest, RefreshRequest, NewKey, KeyPatch. The properties checked are in `keybound::fuzzing::bodies`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound::fuzzing::bodies(data));
