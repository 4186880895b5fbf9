//! `keybound bench` options (the doc comments are `--help`).

use clap::Args;
use secrecy::SecretString;

/// `keybound bench` options. Every target is on this machine: `--url` must be a loopback
/// address.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A running keybound to load (loopback only), e.g. `http://127.0.0.1:8080`. Default:
    /// start keybound in this process on a fresh database (`--database-url`, else a temporary
    /// SQLite file).
    #[arg(long)]
    pub url: Option<String>,
    /// The admin token of the `--url` server (to create the benchmark's keys).
    #[arg(long, env = "KEYBOUND_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// Pid of the `--url` server, to report its peak RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Run the server as a child process (`keybound-bench serve-target`: the server built from
    /// the keybound library plus the ceiling routes, on loopback) instead of in this process,
    /// so its peak RSS is its own and not the load generator's too.
    #[arg(long, conflicts_with = "url")]
    pub spawn: bool,
    /// Concurrent keep-alive HTTP/1.1 connections.
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Seconds each phase runs (the exchange phase may stop earlier when its pre-built proofs
    /// run out).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Exchanges to send (instead of a duration for the exchange phase).
    #[arg(long, conflicts_with = "rounds")]
    pub requests: Option<usize>,
    /// Run the sign-only, verify-sign, exchange and refresh phases this many times,
    /// interleaved, `--duration` seconds each. The ratios are then also reported per round and
    /// as the median of the rounds: the phases of one round are seconds apart, so on a shared
    /// machine whose speed drifts from one minute to the next they hold up better than one
    /// ratio of phases a minute apart.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Simulated devices (one DPoP key each) sending the exchanges, round robin.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// API keys the devices are spread over (device i uses key i mod keys).
    #[arg(long, default_value_t = 100)]
    pub keys: usize,
    /// Fill the database up to this many API keys in all (the extra ones are never used),
    /// inserted in bulk before the run.
    #[arg(long, default_value_t = 0)]
    pub seed_keys: usize,
    /// Fill the database up to this many devices in all; the simulated devices are enrolled
    /// first (so the run measures warm exchanges), the rest spread over every key.
    #[arg(long, default_value_t = 0)]
    pub seed_devices: usize,
    /// Skip the ceiling phases (`/healthz`, sign-only and verify-sign). Needed with `--url`
    /// against a plain `keybound serve`, which has no ceiling route; without it those phases
    /// are skipped with a note.
    #[arg(long)]
    pub no_ceiling: bool,
    /// After the exchange phase, measure what rate limiting and usage tracking cost: exchange
    /// phases with each turned off, with both off and with both on, and the floor (both off
    /// and no durable write of the refresh token and device history), interleaved over three
    /// rounds of `--duration` seconds each (needs the switches of a server this command starts:
    /// `--spawn` or in process, not `--url`).
    #[arg(long, conflicts_with = "requests")]
    pub overhead: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// After the closed-loop phases, send exchanges open loop at a fixed arrival rate (per
    /// second) for `--duration` seconds, latency measured from each request's intended send
    /// time; `auto`: two such phases, at 50 % and 80 % of the closed-loop exchange rate.
    /// With `--rounds N`, each open-loop phase runs N times and pools their answers, and the
    /// report adds each round's percentiles and their median.
    #[arg(long, value_name = "RATE|auto")]
    pub rate: Option<crate::Rate>,
    /// Skip the refresh phase (`POST /v1/token/refresh`, closed loop).
    #[arg(long)]
    pub no_refresh: bool,
}
