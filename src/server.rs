//! Starting and stopping the server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderValue, header};
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::ServeArgs;
use crate::error::{Error, Result};
use crate::http;
use crate::state::AppState;
use crate::store::Store;
use crate::tls::Tls;

/// How long a graceful shutdown of the HTTPS server waits for in-flight requests.
const TLS_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A running server: its address, and a handle that stops it gracefully.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The application state (tests use it to reach the store).
    pub state: AppState,
    /// The TLS configuration when serving HTTPS.
    pub tls: Option<Tls>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, and waits.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
        // What was batched in memory goes to storage before the process ends.
        self.state.flush_bookkeeping().await;
    }

    /// Re-reads the TLS certificate and key (what SIGHUP does). Without TLS there is nothing
    /// to reload and this succeeds.
    pub fn reload_tls(&self) -> Result<()> {
        self.tls.as_ref().map_or(Ok(()), Tls::reload)
    }
}

/// Builds the state and starts serving on `args.listen` in a background task: HTTPS when
/// `--tls-cert`/`--tls-key` are set, plain HTTP otherwise.
pub async fn start(mut args: ServeArgs, store: Arc<dyn Store>) -> Result<Running> {
    crate::telemetry::metrics();
    args.validate().map_err(Error::InvalidRequest)?;
    // Load the certificate before binding, so a bad file fails start-up cleanly.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(Error::internal)?;
    let addr = listener.local_addr().map_err(Error::internal)?;
    if args.listen.port() == 0 && args.issuer.is_none() {
        // The default issuer names the real port, so `htu` checks match what clients call.
        let scheme = if tls.is_some() { "https" } else { "http" };
        args.issuer = Some(format!("{scheme}://{addr}"));
    }
    let state = AppState::build(&args, store).await?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = match &tls {
        None => {
            let app = http::app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
            })
        }
        Some(tls) => {
            let app = http::app(state.clone())
                .layer(SetResponseHeaderLayer::overriding(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(crate::tls::HSTS),
                ))
                .into_make_service_with_connect_info::<SocketAddr>();
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = rx.await;
                stopper.graceful_shutdown(Some(TLS_SHUTDOWN_GRACE));
            });
            let server = axum_server::from_tcp_rustls(
                listener.into_std().map_err(Error::internal)?,
                tls.rustls_config(),
            )
            .map_err(Error::internal)?
            .handle(handle);
            tokio::spawn(server.serve(app))
        }
    };
    tracing::info!(%addr, issuer = %state.settings.issuer, tls = tls.is_some(), "keybound listening");
    Ok(Running {
        addr,
        state,
        tls,
        shutdown: tx,
        task,
    })
}

/// Serves until Ctrl-C or SIGTERM; SIGHUP reloads the TLS certificate and key.
pub async fn serve(args: ServeArgs, store: Arc<dyn Store>) -> Result<()> {
    // Listen for SIGHUP before starting: one that arrives while we start is then held for the
    // reload loop instead of killing the process (the default action).
    #[cfg(unix)]
    let hup = match args.tls_cert {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(Error::internal)?,
        ),
        None => None,
    };
    let running = start(args, store).await?;
    #[cfg(unix)]
    if let (Some(mut hup), Some(tls)) = (hup, running.tls.clone()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if let Err(e) = tls.reload() {
                    tracing::error!(error = %e, "TLS reload on SIGHUP failed");
                }
            }
        });
    }
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
