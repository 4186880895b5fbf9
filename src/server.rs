//! Starting and stopping the server.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::ServeArgs;
use crate::error::{Error, Result};
use crate::http;
use crate::state::AppState;
use crate::store::Store;
use crate::tls::Tls;

/// How long a graceful shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A running server: its address, and a handle that stops it gracefully.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The admin API's own address (`--admin-listen`).
    pub admin_addr: Option<SocketAddr>,
    /// The application state (tests use it to reach the store).
    pub state: AppState,
    /// The TLS configuration when serving HTTPS.
    pub tls: Option<Tls>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, stores the alerts still queued, and
    /// waits.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
        self.state.alerts.flush().await;
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
/// `--tls-cert`/`--tls-key` are set, plain HTTP otherwise; with `--admin-listen`, the admin
/// API on that address alone (same scheme).
pub async fn start(args: ServeArgs, store: Arc<dyn Store>) -> Result<Running> {
    start_with(args, store, axum::Router::new()).await
}

/// [`start`], with `extra` routes on the public listener ([`http::app_with`]): the hook the
/// load generator's own loopback server uses for its ceiling routes. `keybound serve` never
/// calls it.
pub async fn start_with(
    mut args: ServeArgs,
    store: Arc<dyn Store>,
    extra: axum::Router<AppState>,
) -> Result<Running> {
    crate::telemetry::metrics();
    args.load_admin_token_file()
        .map_err(Error::InvalidRequest)?;
    args.validate().map_err(Error::InvalidRequest)?;
    // Load the certificate before binding, so a bad file fails start-up cleanly.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
        _ => None,
    };
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr().map_err(Error::internal)?;
    let admin_listener = match args.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(Error::internal)?),
        None => None,
    };
    if args.listen.port() == 0 && args.issuer.is_none() {
        // The default issuer names the real port, so `htu` checks match what clients call.
        let scheme = if tls.is_some() { "https" } else { "http" };
        args.issuer = Some(format!("{scheme}://{addr}"));
    }
    let state = AppState::build(&args, store).await?;
    let limits = ConnLimits::from_args(&args);
    let handle = axum_server::Handle::new();
    let (surface, admin_surface) = match admin_listener {
        Some(_) => (http::Surface::Public, Some(http::Surface::Admin)),
        None => (http::Surface::All, None),
    };
    let mut tasks = vec![serve_on(
        listener,
        http::app_with(state.clone(), surface, extra),
        tls.as_ref(),
        &limits,
        handle.clone(),
    )?];
    if let (Some(l), Some(s)) = (admin_listener, admin_surface) {
        tasks.push(serve_on(
            l,
            http::app_for(state.clone(), s),
            tls.as_ref(),
            &limits,
            handle.clone(),
        )?);
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = rx.await;
        handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        for t in tasks {
            t.await.map_err(std::io::Error::other)??;
        }
        Ok(())
    });
    tracing::info!(%addr, admin = ?admin_addr, issuer = %state.settings.issuer, tls = tls.is_some(), "keybound listening");
    Ok(Running {
        addr,
        admin_addr,
        state,
        tls,
        shutdown: tx,
        task,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidRequest(format!("cannot listen on {addr}: {e}")))
}

/// The connection limits every listener applies (issue 15 item 4: without them a client
/// could hold a connection open forever with half a request, or an idle keep-alive).
#[derive(Debug, Clone)]
struct ConnLimits {
    header_read: Duration,
    h2_keep_alive: Duration,
    max_connections: usize,
    h2c: bool,
}

impl ConnLimits {
    fn from_args(args: &ServeArgs) -> ConnLimits {
        ConnLimits {
            header_read: Duration::from_secs(args.header_read_timeout_seconds),
            h2_keep_alive: Duration::from_secs(args.http2_keep_alive_seconds),
            max_connections: args.max_connections as usize,
            h2c: args.http2_cleartext,
        }
    }
}

/// Serves `app` on `listener` until `handle` shuts it down.
fn serve_on(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<&Tls>,
    limits: &ConnLimits,
    handle: axum_server::Handle<SocketAddr>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = listener.into_std().map_err(Error::internal)?;
    let mut server = axum_server::from_tcp(listener)
        .map_err(Error::internal)?
        .handle(handle);
    let builder = server.http_builder();
    // The header timer starts whenever hyper waits for a request head: on accept and after
    // each response, so it bounds an idle keep-alive connection as well as a slow head.
    builder
        .http1()
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    builder
        .http2()
        .keep_alive_interval(limits.h2_keep_alive)
        .keep_alive_timeout(limits.header_read)
        .max_concurrent_streams(MAX_H2_STREAMS);
    let server = server.first_request_timeout(limits.header_read);
    // Each listener has its own cap, so a flood on the public address cannot starve the
    // admin one.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    Ok(match tls {
        None => {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            // Plain HTTP is HTTP/1.1 unless h2c was asked for: a prior-knowledge HTTP/2
            // preface is then refused (hyper's HTTP/1 parser rejects it).
            let server = server.map(|inner| ConnectionCap { inner, permits });
            if limits.h2c {
                tokio::spawn(server.serve(app))
            } else {
                tokio::spawn(server.http1_only().serve(app))
            }
        }
        Some(tls) => {
            let app = app
                .layer(SetResponseHeaderLayer::overriding(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(crate::tls::HSTS),
                ))
                .into_make_service_with_connect_info::<SocketAddr>();
            let acceptor =
                RustlsAcceptor::new(tls.rustls_config()).handshake_timeout(limits.header_read);
            tokio::spawn(
                server
                    .acceptor(ConnectionCap {
                        inner: acceptor,
                        permits,
                    })
                    .serve(app),
            )
        }
    })
}

/// Concurrent HTTP/2 streams per connection: enough for any real client, few enough that one
/// connection cannot occupy the server.
const MAX_H2_STREAMS: u32 = 100;

/// An acceptor that holds one of the listener's connection permits for as long as the
/// connection lives, and closes a connection at once when none is left.
#[derive(Clone)]
struct ConnectionCap<A> {
    inner: A,
    permits: Arc<Semaphore>,
}

impl<I, S, A> Accept<I, S> for ConnectionCap<A>
where
    A: Accept<Counted<I>, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = futures::future::Either<
        A::Future,
        std::future::Ready<std::io::Result<(A::Stream, A::Service)>>,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => futures::future::Either::Left(self.inner.accept(
                Counted {
                    io: stream,
                    _permit: permit,
                },
                service,
            )),
            Err(_) => {
                metrics::counter!("keybound_connections_refused_total").increment(1);
                futures::future::Either::Right(std::future::ready(Err(std::io::Error::other(
                    "connection limit reached",
                ))))
            }
        }
    }
}

/// A connection holding its permit; the permit returns when the connection is dropped.
struct Counted<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
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
