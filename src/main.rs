//! The `keybound` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use keybound::config::Cli;

/// mimalloc instead of the system allocator: the token path allocates and frees on different
/// threads (Tokio workers, sqlx's SQLite thread), where glibc's malloc spent about a fifth of
/// the server's CPU time in arena locking and consolidation (docs/benchmarks.md). Its v2 line:
/// same CPU as v3 in `keybound bench`, ~10 MiB less peak RSS (v3 commits its arena eagerly
/// on Linux, and memory it frees there stays resident).
/// Wrapped so that freed request buffers are cleared (`keybound::alloc`).
#[global_allocator]
static ALLOCATOR: keybound::alloc::ClearLargeOnFree<mimalloc::MiMalloc> =
    keybound::alloc::ClearLargeOnFree(mimalloc::MiMalloc);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    keybound::cli::exit_status(keybound::cli::run(cli).await)
}
