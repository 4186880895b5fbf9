//! The load driver: a fixed number of keep-alive HTTP/1.1 connections, each sending its next
//! request as soon as the previous answer has been read (a closed loop, so the concurrency is
//! exactly the number of connections), until the requests run out or the time is up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Builds request `i`, or `None` when there is none left.
pub type MakeRequest = dyn Fn(usize) -> Option<Request<Full<Bytes>>> + Send + Sync;

/// What one phase measured.
pub struct Outcome {
    /// Requests answered (any status).
    pub done: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// Latency of every answered request, in microseconds.
    pub latency: Histogram<u64>,
    /// CPU seconds the server process used during the phase, when known.
    pub server_cpu: Option<f64>,
    /// CPU seconds the load generator (this process) used during the phase, when the server
    /// is another process.
    pub generator_cpu: Option<f64>,
    /// Non-2xx answers by error code (`HTTP_<status>` when the body has none), and transport
    /// failures as `IO`.
    pub errors: BTreeMap<String, u64>,
}

impl Outcome {
    pub(super) fn empty() -> Outcome {
        Outcome {
            done: 0,
            ok: 0,
            elapsed: Duration::ZERO,
            server_cpu: None,
            generator_cpu: None,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            errors: BTreeMap::new(),
        }
    }

    /// Folds another outcome (a later batch of the same phase) into this one.
    pub fn merge(&mut self, other: Outcome) {
        self.done += other.done;
        self.ok += other.ok;
        self.elapsed += other.elapsed;
        let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.server_cpu = add(self.server_cpu, other.server_cpu);
        self.generator_cpu = add(self.generator_cpu, other.generator_cpu);
        self.latency.add(&other.latency).expect("same bounds");
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    /// Answered requests per second.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successful requests per second.
    pub fn ok_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU time per answered request, in microseconds.
    pub fn cpu_us(&self) -> Option<f64> {
        self.server_cpu.map(|c| c * 1e6 / (self.done.max(1) as f64))
    }

    /// The load generator's CPU time per answered request, in microseconds.
    pub fn generator_cpu_us(&self) -> Option<f64> {
        self.generator_cpu
            .map(|c| c * 1e6 / (self.done.max(1) as f64))
    }

    /// Records the CPU used since `mark` by the server `pid` and the generator.
    pub(super) fn set_cpu(&mut self, mark: super::target::CpuMark, pid: Option<u32>) {
        (self.server_cpu, self.generator_cpu) = mark.since(pid);
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        ms(&self.latency, q)
    }
}

/// Quantile `q` of a histogram of microseconds, in milliseconds.
pub(super) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs `make(0)`, `make(1)`, … over `connections` connections to `addr` until `make` returns
/// `None` or `limit` has passed.
pub async fn drive(
    addr: SocketAddr,
    connections: usize,
    limit: Duration,
    make: Arc<MakeRequest>,
    pid: Option<u32>,
) -> Outcome {
    let cpu = super::target::CpuMark::now(pid);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(addr, deadline, next.clone(), make.clone())))
        .collect();
    let mut total = Outcome::empty();
    for t in tasks {
        if let Ok(o) = t.await {
            total.merge(o);
        }
    }
    total.elapsed = started.elapsed();
    total.set_cpu(cpu, pid);
    total
}

pub(super) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A TCP connection to `addr` with Nagle off, as every phase's connections are.
pub(super) async fn tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = tcp(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One connection's closed loop.
async fn connection(
    addr: SocketAddr,
    deadline: Instant,
    next: Arc<AtomicUsize>,
    make: Arc<MakeRequest>,
) -> Outcome {
    let mut out = Outcome::empty();
    let mut sender: Option<Sender> = None;
    while Instant::now() < deadline {
        let Some(req) = make(next.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        if let Trip::Answered(status, body) = round_trip(&mut sender, addr, req, &mut out).await {
            if status.is_success() {
                out.ok += 1;
            } else {
                *out.errors.entry(error_code(status, &body)).or_default() += 1;
            }
        }
    }
    out
}

/// What one request on a kept-alive connection came to ([`round_trip`]).
pub(super) enum Trip {
    /// No connection could be opened, so nothing was sent (counted as `IO`).
    NotSent,
    /// The answer's status and body (counted in `done`, its latency recorded).
    Answered(hyper::StatusCode, Bytes),
    /// Sent, and the answer lost (counted as `IO`; the connection is dropped).
    Lost,
}

/// Sends `req` over `sender`, opening a new connection first when there is none or it broke,
/// and times it from the send to the whole body.
pub(super) async fn round_trip(
    sender: &mut Option<Sender>,
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
    out: &mut Outcome,
) -> Trip {
    if let Some(s) = sender
        && s.ready().await.is_err()
    {
        *sender = None;
    }
    let s = match sender {
        Some(s) => s,
        None => match connect(addr).await {
            Ok(s) => sender.insert(s),
            Err(_) => {
                *out.errors.entry("IO".into()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Trip::NotSent;
            }
        },
    };
    let sent = Instant::now();
    let answer = match s.send_request(req).await {
        Ok(res) => {
            let status = res.status();
            res.into_body()
                .collect()
                .await
                .map(|b| (status, b.to_bytes()))
        }
        Err(e) => Err(e),
    };
    match answer {
        Ok((status, body)) => {
            out.done += 1;
            let _ = out.latency.record(sent.elapsed().as_micros().max(1) as u64);
            Trip::Answered(status, body)
        }
        Err(_) => {
            *out.errors.entry("IO".into()).or_default() += 1;
            *sender = None;
            Trip::Lost
        }
    }
}

/// The contract's `error.code`, or `HTTP_<status>` for a body without one.
pub(super) fn error_code(status: hyper::StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP_{}", status.as_u16()))
}
