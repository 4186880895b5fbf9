//! The attestation verifier (App Attest objects, Android chains, the settings parsers). The
//! properties checked are in `keybound::fuzzing::attestation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keybound::fuzzing::attestation(data));
