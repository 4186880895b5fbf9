//! The `keybound-bench` binary (`keybound bench` runs it): parse the command line and hand
//! over to the library; or, as the hidden `serve-target`, be the server a `--spawn` run loads.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keybound::config::{CredentialUrl, ServeArgs};
use keybound_bench::args::BenchArgs;

/// The same allocator as the `keybound` binary (see its `main.rs`), so that the server this
/// binary starts, in process or as `serve-target`, measures what `keybound serve` would.
#[global_allocator]
static ALLOCATOR: keybound::alloc::ClearLargeOnFree<mimalloc::MiMalloc> =
    keybound::alloc::ClearLargeOnFree(mimalloc::MiMalloc);

/// Load generator: measures exchanges/s and latency against this machine's ceiling.
#[derive(Debug, Parser)]
#[command(
    name = "keybound bench",
    bin_name = "keybound bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Database the run fills (`sqlite://PATH` or `postgres://…`; it must be empty). Default:
    /// a temporary SQLite file. With `--url`, the server's database, to seed devices into.
    #[arg(
        long,
        global = true,
        env = "KEYBOUND_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<CredentialUrl>,
    #[command(flatten)]
    bench: BenchArgs,
    #[command(subcommand)]
    target: Option<Target>,
}

#[derive(Debug, Subcommand)]
enum Target {
    /// The server a `--spawn` run loads: `keybound serve`'s options, plus the ceiling routes,
    /// on loopback only. Started by the benchmark itself, never by hand.
    #[command(name = "serve-target", hide = true)]
    ServeTarget(Box<ServeArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let url = cli.database_url.as_ref().map(|u| u.as_str().to_owned());
    let result = match cli.target {
        Some(Target::ServeTarget(args)) => match url {
            Some(url) => keybound_bench::server::serve_target(*args, &url)
                .await
                .map(|()| ExitCode::SUCCESS),
            None => Err(keybound::Error::InvalidRequest(
                "serve-target needs --database-url".into(),
            )),
        },
        None => keybound_bench::run(cli.bench, url).await,
    };
    keybound::cli::exit_status(result)
}
