//! The `keybound-lab` binary (`keybound lab` runs it): parse the command line, find the
//! `keybound` binary the process scenarios attack, and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keybound_lab::args::LabArgs;

/// Attack keybound's own defenses and measure them (loopback targets only); exit 1 if a
/// defense failed an assertion.
#[derive(Debug, Parser)]
#[command(name = "keybound lab", bin_name = "keybound lab", version)]
struct Cli {
    /// The `keybound` executable scenarios B, C and H run as a server process (default: the
    /// one next to this binary; `keybound lab` passes itself). Without one they are skipped.
    #[arg(long, env = "KEYBOUND_BINARY")]
    keybound_binary: Option<PathBuf>,
    #[command(flatten)]
    lab: LabArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let binary = cli.keybound_binary.or_else(|| {
        let exe = std::env::current_exe().ok()?;
        let sibling = exe.parent()?.join("keybound");
        sibling.is_file().then_some(sibling)
    });
    keybound::cli::exit_status(keybound_lab::run(cli.lab, binary).await)
}
