//! `keybound lab` options (the doc comments are `--help`).

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

/// `keybound lab` options. Sizes default to the figures; tests pass small ones.
#[derive(Debug, Clone, Args)]
pub struct LabArgs {
    /// Attack a running server instead of starting one in-process (loopback addresses only).
    #[arg(long, requires = "admin_token")]
    pub url: Option<String>,
    /// The admin token of the server at `--url`.
    #[arg(long, env = "KEYBOUND_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Run only these scenarios (letters A–M, P for the population study; comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// C: exchanges made before the server's memory is read.
    #[arg(long, default_value_t = 200)]
    pub exchanges: usize,
    /// G: HTTP requests per timing class.
    #[arg(long, default_value_t = 5000)]
    pub timing_samples: usize,
    /// G: in-process samples per class for the secret comparison (each times a batch).
    #[arg(long, default_value_t = 100_000)]
    pub compare_samples: usize,
    /// F: verification attempts timed to measure the guessing rate.
    #[arg(long, default_value_t = 200_000)]
    pub verify_iterations: u64,
    /// I: keys generated for the statistical tests.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// K: keys mutated to measure the checksum's detection rate.
    #[arg(long, default_value_t = 10_000)]
    pub typo_keys: usize,
    /// P: simulated devices.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// P: simulated days.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// P: cloned device keys tried per attacker kind.
    #[arg(long, default_value_t = 10_000)]
    pub clones: usize,
    /// P: share of phones whose app attests its device key at enrollment (0 to 1).
    #[arg(long, default_value_t = 0.8)]
    pub attested_share: f64,
    /// P: seed of the simulation's random stream (the same seed gives the same figures).
    #[arg(long, default_value_t = 6)]
    pub seed: u64,
}
