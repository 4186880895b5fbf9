//! The RFC 9449 DPoP proof verifier. The properties checked are in `keybound::fuzzing::dpop_proof`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound::fuzzing::dpop_proof(data));
