//! Starting and stopping the server.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::ServeArgs;
use crate::error::{Error, Result};
use crate::http;
use crate::state::AppState;
use crate::store::Store;

/// A running server: its address, and a handle that stops it gracefully.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The application state (tests use it to reach the store).
    pub state: AppState,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, and waits.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// Builds the state and starts serving on `args.listen` in a background task.
pub async fn start(mut args: ServeArgs, store: Arc<dyn Store>) -> Result<Running> {
    crate::telemetry::metrics();
    args.validate().map_err(Error::InvalidRequest)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(Error::internal)?;
    let addr = listener.local_addr().map_err(Error::internal)?;
    if args.listen.port() == 0 && args.issuer.is_none() {
        // The default issuer names the real port, so `htu` checks match what clients call.
        args.issuer = Some(format!("http://{addr}"));
    }
    let state = AppState::build(&args, store).await?;
    let app = http::app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    tracing::info!(%addr, issuer = %state.settings.issuer, "keybound listening");
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        task,
    })
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn serve(args: ServeArgs, store: Arc<dyn Store>) -> Result<()> {
    let running = start(args, store).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
