//! Logging setup. Secrets never reach a log because they are typed (`SecretString`, `ApiKey`)
//! and request spans record no headers or bodies; see `http::app`. As a last resort every
//! byte also passes through [`redact`], which masks anything shaped like a key or token.

pub mod redact;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` (default `info`), text or JSON lines on stderr
/// (text in colour only when stderr is a terminal).
pub fn init(format: LogFormat) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = subscriber(format, default_filter(), std::io::stderr, ansi).try_init();
}

/// Installs the global subscriber writing to `writer` (through the redaction filter, without
/// colour); `false` when one was already installed.
pub fn init_with_writer<W>(format: LogFormat, writer: W) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber(format, default_filter(), writer, false)
        .try_init()
        .is_ok()
}

/// `RUST_LOG`, or `info` when it is unset or invalid.
fn default_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The subscriber [`init`] installs, for callers that scope it themselves (tests use
/// `tracing::subscriber::set_default` with a filter of their own). Every byte goes through
/// [`redact::Redacting`].
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(redact::Redacting(writer));
    match format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
    }
}

/// A histogram without labels, registered once with [`metrics`]' recorder (installed first):
/// for a handle kept in a `static` on a hot path, where the macro would look its key up on
/// every call.
pub fn histogram(name: &'static str) -> metrics::Histogram {
    metrics();
    metrics::histogram!(name)
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// The process-wide Prometheus recorder, installed on first use. Labels are bounded by
/// design: routes (the matched pattern, not the path), status codes, alert kinds — never a
/// key id, device id or anything a client chooses.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // A recorder built this way leaves upkeep to its owner: without it, every histogram
        // sample (two per request) is kept until someone scrapes /metrics, so a server nobody
        // scrapes grows without bound. A thread of its own, so it runs whatever runtime (or
        // none) the process has.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                }
            });
        // Another recorder may already be installed (an embedding application): then ours
        // still renders, but only what is recorded through it.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
