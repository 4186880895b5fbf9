//! The `keybound` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use keybound::config::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match keybound::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e} ({})", e.code());
            ExitCode::from(2)
        }
    }
}
