//! The server crate's dependencies (issue 16): it never depends on its client SDK, nor on the
//! lab or the load generator, nor on a crate only those need, outside `[dev-dependencies]`.
//! Read from `cargo metadata`, so a line added to Cargo.toml fails here, not in review.

use serde_json::Value;

/// Crates the `keybound` binary must not link: the SDK (the server never depends on its
/// client), the crates built on the server, and what only the lab and the bench use.
const NOT_FOR_THE_SERVER: &[&str] = &[
    "keybound-sdk",
    "keybound-lab",
    "keybound-bench",
    "statrs",
    "rand_chacha",
    "hdrhistogram",
    "hyper",
    "hyper-util",
    "http-body-util",
    "rcgen",
    "yasna",
];

#[test]
fn the_server_crate_depends_on_no_lab_bench_or_sdk_crate_outside_dev_dependencies() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .args(["--manifest-path", manifest])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let server = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "keybound")
        .expect("the keybound package");
    let mut dev_only = Vec::new();
    for dep in server["dependencies"].as_array().unwrap() {
        let name = dep["name"].as_str().unwrap();
        if NOT_FOR_THE_SERVER.contains(&name) {
            // `kind` is null for a normal dependency, "build" or "dev" otherwise.
            assert_eq!(
                dep["kind"], "dev",
                "keybound depends on {name} outside [dev-dependencies]"
            );
            dev_only.push(name);
        }
    }
    // The check sees the SDK where it is allowed, so it is looking at the right list.
    assert!(dev_only.contains(&"keybound-sdk"), "{dev_only:?}");
}
