//! Unit tests of the verification core: real vectors at their own time, and one generated
//! attestation per check (each failing with its own message).

use super::testing::*;
use super::*;

#[test]
fn placeholder_generators_build() {
    let root = TestRoot::new();
    let (_, point, _) = dpop_p256_key();
    let _ = apple_attestation(&root, "c", b"c.j", TEST_APP_ID, &AppleOpts::default());
    let _ = android_chain(&root, "c", b"c.j", &point, &AndroidOpts::default());
}
