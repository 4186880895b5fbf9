//! `keybound lab` and `keybound bench` run the `keybound-lab` / `keybound-bench` binaries
//! (docs/design.md, "The crates"). Their own tests check the hand-over with the binaries
//! present; this one checks the error without them.

/// A `keybound` alone in a directory, with nothing on PATH: the error names the binary it
/// needs and how to build it, and nothing runs.
#[tokio::test]
async fn without_the_sibling_binary_lab_and_bench_say_which_binary_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("keybound");
    std::fs::copy(env!("CARGO_BIN_EXE_keybound"), &alone).unwrap();
    for (sub, program) in [("lab", "keybound-lab"), ("bench", "keybound-bench")] {
        let out = tokio::process::Command::new(&alone)
            .args([sub, "--help"])
            .env("PATH", dir.path().join("empty"))
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub}: {stderr}");
        assert!(
            stderr.contains(&format!("`{program}` binary")) && stderr.contains("PATH"),
            "{sub}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("cargo build --release -p {program}")),
            "{stderr}"
        );
    }
}
