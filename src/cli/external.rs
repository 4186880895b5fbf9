//! `keybound lab` and `keybound bench`: run the `keybound-lab` / `keybound-bench` binary.
//!
//! The lab and the load generator are crates of their own that build on this library (they
//! start the server in-process), so this binary cannot link them: it would depend on itself.
//! Instead these subcommands hand over to the sibling binary, found next to the running
//! executable first (where `cargo build --workspace` and a release archive put it), then on
//! `PATH`. Every argument after the subcommand goes through unchanged, except `--database-url`:
//! a global option of `keybound`, which clap takes wherever it stands, so it goes on as
//! `KEYBOUND_DATABASE_URL`, which the bench reads like its own `--database-url`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::error::{Error, Result};

/// Runs `program` (`keybound-lab` or `keybound-bench`) with `args` and returns its exit code.
/// On Unix the process is replaced (`exec`), so signals and the exit status are the other
/// binary's own.
pub fn run(program: &str, args: Vec<OsString>, database_url: Option<&str>) -> Result<ExitCode> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(program)))
        .filter(|p| p.is_file());
    let mut cmd = Command::new(sibling.clone().unwrap_or_else(|| PathBuf::from(program)));
    cmd.args(&args);
    if let Some(url) = database_url {
        cmd.env("KEYBOUND_DATABASE_URL", url);
    }
    // The lab attacks the binary that started it (scenarios B and C spawn it).
    if let Ok(exe) = std::env::current_exe() {
        cmd.env("KEYBOUND_BINARY", exe);
    }
    let missing = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::InvalidRequest(format!(
                "`keybound {sub}` runs the `{program}` binary, which is neither next to this \
                 executable nor on PATH (build it with `cargo build --release -p {program}`)",
                sub = program.trim_start_matches("keybound-"),
            ))
        } else {
            Error::InvalidRequest(format!("cannot run {program}: {e}"))
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Only returns on failure.
        Err(missing(cmd.exec()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(missing)?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    }
}
