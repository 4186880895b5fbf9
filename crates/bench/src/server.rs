//! The only server with the ceiling routes: the keybound router built from the library, plus
//! [`routes::router`](crate::routes::router), on a loopback address. `--spawn` runs it as
//! `keybound-bench serve-target` (a hidden subcommand), the default run in this process.
//!
//! Contract section 7 wants no benchmark route or switch in a production server. Here that
//! holds by construction: `keybound serve` has no way to add routes or flip
//! [`Switches`](keybound::state::Switches), and this server refuses `--profile prod` and any
//! address that is not loopback.

use std::sync::Arc;

use keybound::config::{Profile, ServeArgs};
use keybound::error::{Error, Result};
use keybound::server::Running;
use keybound::store::Store;

/// The hidden subcommand of `keybound-bench` that runs [`serve_target`].
pub const SUBCOMMAND: &str = "serve-target";

/// Starts keybound with the ceiling routes, after checking it is a benchmark target: every
/// listener on loopback, not the `prod` profile.
pub async fn start(args: ServeArgs, store: Arc<dyn Store>) -> Result<Running> {
    let loopback =
        args.listen.ip().is_loopback() && args.admin_listen.is_none_or(|a| a.ip().is_loopback());
    if !loopback {
        return Err(Error::InvalidRequest(
            "the benchmark's server listens on loopback addresses only".into(),
        ));
    }
    if args.profile == Profile::Prod {
        return Err(Error::InvalidRequest(
            "the benchmark's server is never a --profile prod server (contract section 7)".into(),
        ));
    }
    keybound::server::start_with(args, store, crate::routes::router()).await
}

/// `keybound-bench serve-target`: [`start`] on `database_url`, until SIGINT or SIGTERM (the
/// parent kills it after the run).
pub async fn serve_target(args: ServeArgs, database_url: &str) -> Result<()> {
    keybound::telemetry::init(args.effective_log_format());
    let store = keybound::store::open(database_url).await?;
    let running = start(args, store).await?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(Error::internal)?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    running.stop().await;
    Ok(())
}
