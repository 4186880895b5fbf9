//! The command-line subcommands other than `serve`: key, device and signing-key management,
//! audit verification and the leak scanner. They open the database directly, so they work
//! without a running server; servers see their changes within the validation cache lifetime.

use std::process::ExitCode;

use crate::config::{Cli, Command};
use crate::error::Result;

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let url = cli.database_url();
    match cli.command {
        Command::Serve(args) => {
            crate::telemetry::init(args.effective_log_format());
            let store = crate::store::open(&url).await?;
            crate::server::serve(*args, store).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = crate::store::open(&url).await?;
            println!("migrations applied ({})", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("not implemented yet");
            Ok(ExitCode::from(2))
        }
    }
}
