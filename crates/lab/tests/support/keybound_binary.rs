//! The `keybound` server binary, for the tests of the crates built on the server library (the
//! lab and the load generator). Cargo gives a test the path of its own package's binaries
//! only (`CARGO_BIN_EXE_…`), so this builds the server's with the cargo running the tests, into
//! the same target directory and profile: a no-op when it is fresh, and never a stale binary
//! next to a fresh library. Shared by `crates/lab/tests` and `crates/bench/tests` (`#[path]`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `target/<profile>/keybound`, built once per test process.
pub fn keybound_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // A test runs as target/<profile>/deps/<name>-<hash>.
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut cargo = std::process::Command::new(env!("CARGO"));
        // What cargo sets for a test process describes this test's package; some build
        // scripts (ring's) track such variables, so passing them on would rebuild half the
        // dependency tree for nothing, and again for the next build without them.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_")
                || name.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&name.as_ref())
            {
                cargo.env_remove(name.as_ref());
            }
        }
        let status = cargo
            .args(["build", "--quiet", "-p", "keybound", "--bin", "keybound"])
            .arg("--profile")
            .arg(profile)
            .arg("--manifest-path")
            .arg(manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the keybound binary failed");
        profile_dir.join(format!("keybound{}", std::env::consts::EXE_SUFFIX))
    })
}
