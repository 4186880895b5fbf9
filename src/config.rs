//! Command line and configuration (contract section 1). Every `serve` option is also an
//! environment variable `KEYBOUND_<NAME>`; the doc comments here are the `--help` text.
//! Nothing else in the crate reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use secrecy::SecretString;

use crate::alerts::AlertKind;

/// Default database: an embedded SQLite file relative to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keybound-data/keybound.db";

/// keybound: exchanges long-lived API keys for short-lived, device-bound access tokens.
#[derive(Debug, Parser)]
#[command(name = "keybound", version, about)]
pub struct Cli {
    /// Database URL: `sqlite://PATH` (default, created on first use) or `postgres://…`.
    #[arg(
        long,
        global = true,
        env = "KEYBOUND_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<CredentialUrl>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The database URL: `--database-url`, then `KEYBOUND_DATABASE_URL`, then `DATABASE_URL`,
    /// then the embedded default.
    pub fn database_url(&self) -> String {
        self.database_url
            .as_ref()
            .map(|u| u.as_str().to_owned())
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (creates and migrates the database on first start).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys(KeysArgs),
    /// Manage devices.
    Devices(DevicesArgs),
    /// Manage JWT signing keys.
    #[command(subcommand, name = "signing-keys")]
    SigningKeys(SigningKeysCommand),
    /// Audit log tools.
    Audit(AuditArgs),
    /// Find keybound API keys in files (or stdin with `-`); exit 1 if any is found.
    Scan(ScanArgs),
    /// Attack keybound's own defenses and measure them (loopback targets only); exit 1 if a
    /// defense failed an assertion. Runs the `keybound-lab` binary (`keybound lab --help`).
    #[command(disable_help_flag = true)]
    Lab(Passthrough),
    /// Load generator: measures exchanges/s and latency against this machine's ceiling. Runs
    /// the `keybound-bench` binary (`keybound bench --help`).
    #[command(disable_help_flag = true)]
    Bench(Passthrough),
}

/// The arguments of a subcommand another binary implements (`lab`, `bench`), handed to it
/// unchanged: `keybound bench --help` prints the load generator's own help.
#[derive(Debug, Clone, Args)]
pub struct Passthrough {
    /// Arguments for the other binary.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<std::ffi::OsString>,
}

/// Deployment profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Easy local use: generated master key file, text logs.
    Dev,
    /// Production: TLS or a trusted proxy, a master key from the environment.
    Prod,
}

/// Log output format (defined by the telemetry it configures).
pub use crate::telemetry::LogFormat;

/// `keybound serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYBOUND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Public base URL: the `iss` claim and the base of every DPoP `htu` (default `http://<listen>`,
    /// `https://<listen>` with TLS).
    #[arg(long, env = "KEYBOUND_ISSUER")]
    pub issuer: Option<String>,
    /// Deployment profile.
    #[arg(long, env = "KEYBOUND_PROFILE", value_enum, default_value_t = Profile::Dev)]
    pub profile: Profile,
    /// Bearer token for the admin API (at least 32 characters); the admin API answers 404
    /// when unset. Prefer `--admin-token-file` or the environment: a command-line value is
    /// visible to every local user in the process list.
    #[arg(
        long,
        env = "KEYBOUND_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<SecretString>,
    /// A bearer token resource servers present to `POST /v1/token/introspect` (repeatable;
    /// the admin token works there too). Compared in constant time.
    #[arg(
        long = "introspection-token",
        env = "KEYBOUND_INTROSPECTION_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub introspection_tokens: Vec<SecretString>,
    /// File holding the admin token (surrounding whitespace ignored).
    #[arg(long, env = "KEYBOUND_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve the admin API on this address only (e.g. an internal interface); the public
    /// listener then answers 404 for `/admin/…`.
    #[arg(long, env = "KEYBOUND_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Wrong admin tokens per minute per client IP; past it that IP's admin requests get 429
    /// and an ADMIN_TOKEN_FAILURES alert is raised.
    #[arg(long, env = "KEYBOUND_ADMIN_FAILURE_BUDGET", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_failure_budget: u32,
    /// Seconds a client has to send a complete request head. The clock starts when the
    /// server starts waiting for a request (on connect, and after each response), so it is
    /// also how long an idle HTTP/1.1 keep-alive connection stays open.
    #[arg(long, env = "KEYBOUND_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_seconds: u64,
    /// Seconds a request body may take to arrive in full (and the longest pause between two
    /// of its chunks); a late body is refused with 400 and the connection closed.
    #[arg(long, env = "KEYBOUND_BODY_READ_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_read_timeout_seconds: u64,
    /// Seconds an HTTP/2 connection may stay silent before a ping must be answered (idle
    /// HTTP/2 connections are checked with pings and closed when the peer is gone).
    #[arg(long, env = "KEYBOUND_HTTP2_KEEP_ALIVE_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http2_keep_alive_seconds: u64,
    /// Open connections per listener; connections beyond it are closed at once.
    #[arg(long, env = "KEYBOUND_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Also serve HTTP/2 over plain TCP (h2c, prior knowledge). Off by default: plain HTTP
    /// is HTTP/1.1 only; HTTPS offers HTTP/2 through ALPN either way.
    #[arg(long, env = "KEYBOUND_HTTP2_CLEARTEXT")]
    pub http2_cleartext: bool,
    /// Redis URL for state shared by several instances (replay, rate limits, cache invalidation).
    #[arg(long, env = "KEYBOUND_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<CredentialUrl>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "KEYBOUND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "KEYBOUND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Proxy addresses whose `X-Forwarded-For` is believed (repeatable).
    #[arg(long, env = "KEYBOUND_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<IpNet>,
    /// Access token lifetime in seconds (at most 3600).
    #[arg(long, env = "KEYBOUND_ACCESS_TTL_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub access_ttl_seconds: u64,
    /// Refresh token lifetime in seconds.
    #[arg(long, env = "KEYBOUND_REFRESH_TTL_SECONDS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(60..))]
    pub refresh_ttl_seconds: u64,
    /// Seconds a verifier may cache a token status list (its `ttl` claim, contract section
    /// 10). The server itself rebuilds a list as soon as a key or device in it changes.
    #[arg(long, env = "KEYBOUND_STATUS_LIST_TTL_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub status_list_ttl_seconds: u64,
    /// Absolute lifetime of a refresh family in seconds, counted from its exchange: however
    /// often it is refreshed, a session older than this needs a new exchange with the API key
    /// (default 30 days; at least the refresh TTL's minimum).
    #[arg(long, env = "KEYBOUND_REFRESH_FAMILY_MAX_AGE", default_value_t = 30 * 86_400,
          value_parser = clap::value_parser!(u64).range(60..))]
    pub refresh_family_max_age: u64,
    /// Contract 9.2: seconds after a refresh during which the same device key presenting the
    /// just-spent token gets the same successor again (a lost answer retried) instead of
    /// reuse. 0 (default) turns it off.
    #[arg(long, env = "KEYBOUND_REFRESH_REUSE_GRACE_SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub refresh_reuse_grace_seconds: u64,
    /// Refreshes per minute one device may make (all its families together); beyond it a
    /// refresh gets 429 `RATE_LIMITED`.
    #[arg(long, env = "KEYBOUND_REFRESH_RATE_PER_DEVICE", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub refresh_rate_per_device: u32,
    /// `USE_DPOP_NONCE` answers per minute per client IP before it gets 429 (softer than the
    /// failure budget: a nonce challenge is normal protocol, but an endless stream of them is
    /// not).
    #[arg(long, env = "KEYBOUND_NONCE_CHALLENGE_BUDGET", default_value_t = 120,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub nonce_challenge_budget: u32,
    /// Demand a server-issued DPoP nonce in every proof (RFC 9449 section 8).
    #[arg(long, env = "KEYBOUND_REQUIRE_DPOP_NONCE")]
    pub require_dpop_nonce: bool,
    /// DPoP proof `iat` acceptance window, in seconds either side of server time.
    #[arg(long, env = "KEYBOUND_DPOP_IAT_WINDOW_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(i64).range(0..=3600))]
    pub dpop_iat_window_seconds: i64,
    /// URL that receives every alert as a signed JSON POST (see docs/configuration.md).
    #[arg(long, env = "KEYBOUND_ALERT_WEBHOOK", hide_env_values = true)]
    pub alert_webhook: Option<CredentialUrl>,
    /// Standard Webhooks signing secret, `whsec_<base64>`; repeatable (each adds a signature,
    /// for rotation; in the environment, comma separated). Required in `prod`.
    #[arg(
        long,
        env = "KEYBOUND_ALERT_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub alert_webhook_secret: Vec<SecretString>,
    /// Alert kinds that contain at once: revoke the device (device-scoped kinds) or suspend the
    /// key (comma separated, e.g. KEY_LEAKED,REFRESH_TOKEN_REUSED).
    #[arg(long, env = "KEYBOUND_AUTO_SUSPEND_ON", value_delimiter = ',',
          value_parser = crate::containment::parse_kind)]
    pub auto_suspend_on: Vec<AlertKind>,
    /// Log format.
    #[arg(long, env = "KEYBOUND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Allowed token audiences (repeatable, or comma-separated: `a,b` is two); the first is
    /// the default. None: the issuer only.
    #[arg(long = "audience", env = "KEYBOUND_AUDIENCE", value_delimiter = ',')]
    pub audiences: Vec<String>,
    /// Failed authentications per minute per client IP before it gets 429 on token endpoints.
    #[arg(long, env = "KEYBOUND_IP_FAILURE_BUDGET", default_value_t = 20)]
    pub ip_failure_budget: u32,
    /// Prefix length by which IPv6 clients share a per-IP failure budget (an IPv4 address, or
    /// an IPv4-mapped IPv6 one, counts alone). 64: one ordinary host or home network.
    #[arg(long, env = "KEYBOUND_IPV6_BUDGET_PREFIX", default_value_t = crate::net::DEFAULT_V6_BUDGET_PREFIX,
          value_parser = clap::value_parser!(u8).range(32..=128))]
    pub ipv6_budget_prefix: u8,
    /// Wrong secrets per minute for one key id (from all IPs together) before FAILURE_BURST;
    /// past it, wrong secrets for that id get 429 (the right secret always works).
    #[arg(long, env = "KEYBOUND_KEY_FAILURE_BUDGET", default_value_t = crate::limits::KEY_FAILURE_BUDGET)]
    pub key_failure_budget: u32,
    /// 32-byte master key (base64) that seals signing keys at rest. Required in `prod`.
    #[arg(long, env = "KEYBOUND_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<SecretString>,
    /// Where the dev profile keeps its generated master key when none is given.
    #[arg(
        long,
        env = "KEYBOUND_MASTER_KEY_FILE",
        default_value = "keybound-data/master.key"
    )]
    pub master_key_file: PathBuf,
    /// Exchanges per minute by one key that raise a USAGE_SPIKE alert.
    #[arg(long, env = "KEYBOUND_USAGE_SPIKE_PER_MINUTE", default_value_t = 1000)]
    pub usage_spike_per_minute: u64,
    /// Distinct devices, or distinct networks, using one key within an hour that raise a
    /// MANY_DEVICES_OR_NETWORKS alert.
    #[arg(long, env = "KEYBOUND_MANY_PER_HOUR", default_value_t = 20)]
    pub many_per_hour: usize,
    /// Days usage totals (per key and minute) are kept before an hourly task deletes them.
    #[arg(long, env = "KEYBOUND_USAGE_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub usage_retention_days: i64,
    /// Days alerts are kept before the hourly purge deletes them.
    #[arg(long, env = "KEYBOUND_ALERT_RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub alert_retention_days: i64,
    /// Entries in each validation cache (keys, devices).
    #[arg(long, env = "KEYBOUND_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// App Attest: an accepted App ID, `TEAMID.BUNDLE_ID` (repeatable). None: App Attest
    /// attestations fail.
    #[arg(
        long = "apple-app-id",
        env = "KEYBOUND_APPLE_APP_ID",
        value_delimiter = ','
    )]
    pub apple_app_ids: Vec<String>,
    /// Android Key Attestation: an accepted package name (repeatable). None: Android
    /// attestations fail.
    #[arg(
        long = "android-package",
        env = "KEYBOUND_ANDROID_PACKAGE",
        value_delimiter = ','
    )]
    pub android_packages: Vec<String>,
    /// Android Key Attestation: SHA-256 of an accepted app signing certificate (64 hex digits,
    /// either case, colons allowed; repeatable). None: Android attestations fail.
    #[arg(long = "android-signing-cert-sha256", env = "KEYBOUND_ANDROID_SIGNING_CERT_SHA256",
          value_delimiter = ',', value_parser = crate::attestation::parse_signing_cert_sha256)]
    pub android_signing_cert_sha256: Vec<[u8; 32]>,
    /// Accept App Attest's development environment (`appattestdevelop`) too.
    #[arg(long, env = "KEYBOUND_ATTESTATION_ALLOW_DEVELOPMENT")]
    pub attestation_allow_development: bool,
    /// A PEM file of extra attestation trust anchors for both formats (repeatable; private PKI
    /// and tests). `--profile prod` refuses it without `--attestation-allow-custom-root`.
    #[arg(
        long = "attestation-root",
        env = "KEYBOUND_ATTESTATION_ROOT",
        value_delimiter = ','
    )]
    pub attestation_roots: Vec<PathBuf>,
    /// Lets `--profile prod` use `--attestation-root`.
    #[arg(long, env = "KEYBOUND_ATTESTATION_ALLOW_CUSTOM_ROOT")]
    pub attestation_allow_custom_root: bool,
    /// Google's Android attestation status list (JSON, `{"entries": {...}}`): certificates
    /// listed there are refused. Read at start.
    #[arg(long, env = "KEYBOUND_ANDROID_ATTESTATION_REVOCATIONS")]
    pub android_attestation_revocations: Option<PathBuf>,
    /// New devices one key may enroll per hour (revoked ones count too), so revoke-and-re-enroll
    /// cannot cycle; past it, 429 RATE_LIMITED and an ENROLLMENT_BURST alert. Default: the
    /// key's max_devices.
    #[arg(long, env = "KEYBOUND_ENROLLMENTS_PER_HOUR",
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub enrollments_per_hour: Option<i64>,
    /// Days a device must have stayed limited and unused before a new device may take its
    /// place at the key's max_devices (instead of DEVICE_LIMIT_REACHED).
    #[arg(long, env = "KEYBOUND_STALE_DEVICE_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub stale_device_days: i64,
}

impl ServeArgs {
    /// The issuer URL without a trailing slash.
    pub fn issuer(&self) -> String {
        let s = self.issuer.clone().unwrap_or_else(|| {
            let scheme = if self.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", self.listen)
        });
        s.trim_end_matches('/').to_owned()
    }

    /// The allowed audiences; the issuer alone when none is configured.
    pub fn audiences(&self) -> Vec<String> {
        if self.audiences.is_empty() {
            vec![self.issuer()]
        } else {
            self.audiences.clone()
        }
    }

    /// Reads `--admin-token-file` into `admin_token` (surrounding whitespace dropped).
    pub fn load_admin_token_file(&mut self) -> Result<(), String> {
        if let Some(path) = &self.admin_token_file {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--admin-token-file {}: {e}", path.display()))?,
            );
            self.admin_token = Some(SecretString::from(text.trim().to_owned()));
        }
        Ok(())
    }

    /// Checks the profile's rules before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = &self.admin_token {
            // 32 characters: well past guessing at any rate the failure budget allows, and
            // what `openssl rand -base64 24` prints. An empty token would turn the admin API
            // on for anyone sending `Authorization: Bearer `.
            if secrecy::ExposeSecret::expose_secret(t)
                .trim()
                .chars()
                .count()
                < MIN_ADMIN_TOKEN_CHARS
            {
                return Err(format!(
                    "the admin token must have at least {MIN_ADMIN_TOKEN_CHARS} characters \
                     (e.g. `openssl rand -base64 32`)"
                ));
            }
        }
        if self.profile == Profile::Prod {
            if self.tls_cert.is_none() && self.trusted_proxy.is_empty() {
                return Err("--profile prod needs --tls-cert/--tls-key or --trusted-proxy".into());
            }
            if self.master_key.is_none() && !self.master_key_file.is_file() {
                return Err(
                    "--profile prod needs KEYBOUND_MASTER_KEY or an existing --master-key-file"
                        .into(),
                );
            }
            if !self.attestation_roots.is_empty() && !self.attestation_allow_custom_root {
                return Err("--profile prod refuses --attestation-root without \
                            --attestation-allow-custom-root"
                    .into());
            }
            if self.alert_webhook.is_some() && self.alert_webhook_secret.is_empty() {
                return Err(
                    "--profile prod needs KEYBOUND_ALERT_WEBHOOK_SECRET with --alert-webhook"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// The log format in force: `prod` always writes JSON lines, for log pipelines.
    pub fn effective_log_format(&self) -> LogFormat {
        match self.profile {
            Profile::Prod => LogFormat::Json,
            Profile::Dev => self.log_format,
        }
    }

    /// Defaults for tests and embedding: loopback on an OS-chosen port, dev profile.
    pub fn for_tests() -> ServeArgs {
        // A random master key, so tests never write a key file into the working directory.
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
        let mk = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k);
        let cli = Cli::parse_from([
            "keybound",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--master-key",
            &mk,
        ]);
        match cli.command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }
}

/// A URL that may carry a credential (a database or Redis password in its userinfo, a
/// webhook token in its path or query). It is used as given; its `Debug` shows only the
/// scheme and host, so printing the settings never prints the credential.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialUrl(String);

impl CredentialUrl {
    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for CredentialUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for CredentialUrl {
    fn from(s: String) -> Self {
        CredentialUrl(s)
    }
}

impl From<&str> for CredentialUrl {
    fn from(s: &str) -> Self {
        CredentialUrl(s.to_owned())
    }
}

impl std::str::FromStr for CredentialUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(CredentialUrl(s.to_owned()))
    }
}

impl std::fmt::Debug for CredentialUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str("\"[REDACTED]\"");
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        // The host is the part after the last `@` (userinfo may itself contain `@`).
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let userinfo = if host.len() < authority.len() {
            "[REDACTED]@"
        } else {
            ""
        };
        let tail = if tail.is_empty() || tail == "/" {
            tail
        } else {
            "/[REDACTED]"
        };
        write!(f, "\"{scheme}://{userinfo}{host}{tail}\"")
    }
}

/// Shortest admin token `serve` accepts.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// The secret-carrying options among `argv` that were given on the command line itself
/// (visible to every local user in the process list, and kept in shell history), for a
/// warning at start. The environment and files are the places for secrets.
pub fn secrets_on_command_line(argv: impl IntoIterator<Item = String>) -> Vec<&'static str> {
    const SECRET_FLAGS: [&str; 5] = [
        "--admin-token",
        "--master-key",
        "--new-master-key",
        "--alert-webhook-secret",
        "--redis-url",
    ];
    let mut found = Vec::new();
    for arg in argv {
        if arg == "--" {
            break;
        }
        for flag in SECRET_FLAGS {
            let given = arg == flag
                || arg
                    .strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='));
            if given && !found.contains(&flag) {
                found.push(flag);
            }
        }
    }
    found
}

/// Shared `--json` flag.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The master key for CLI commands that write keys or audit rows (`keys`, `devices`,
/// `audit`): the same key the servers use, given the same ways. It protects the key hashes
/// and the audit chain (`crate::integrity`), so creating or rotating a key, any change that
/// writes an audit row, and checking the audit log need it; listing and showing do not.
#[derive(Debug, Clone, Args)]
pub struct MasterKeyArgs {
    /// 32-byte master key (base64), as the servers have it.
    #[arg(
        long,
        global = true,
        env = "KEYBOUND_MASTER_KEY",
        hide_env_values = true
    )]
    pub master_key: Option<SecretString>,
    /// The master key file (the dev profile's generated one by default); never created here.
    #[arg(
        long,
        global = true,
        env = "KEYBOUND_MASTER_KEY_FILE",
        default_value = "keybound-data/master.key"
    )]
    pub master_key_file: PathBuf,
}

/// `keybound keys …` with the master key.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The servers' master key.
    #[command(flatten)]
    pub master: MasterKeyArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// `keybound devices …` with the master key.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// The servers' master key.
    #[command(flatten)]
    pub master: MasterKeyArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: DevicesCommand,
}

/// `keybound audit …` with the master key.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The servers' master key.
    #[command(flatten)]
    pub master: MasterKeyArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// `keybound keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its plaintext once.
    Create(CreateKeyArgs),
    /// List keys.
    List(OutputArgs),
    /// Show one key.
    Show {
        /// Key id (`ak_…`).
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Revoke a key for good.
    Revoke {
        /// Key id (`ak_…`).
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Suspend a key until it is resumed.
    Suspend {
        /// Key id (`ak_…`).
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Resume a suspended key.
    Resume {
        /// Key id (`ak_…`).
        id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Issue a new key with the same settings; the old one works until the grace period ends.
    Rotate {
        /// Key id (`ak_…`).
        id: String,
        /// Seconds the old key keeps working.
        #[arg(long, default_value_t = 86_400)]
        grace_seconds: i64,
        #[command(flatten)]
        out: OutputArgs,
    },
}

/// `keybound keys create` options.
#[derive(Debug, Clone, Args)]
pub struct CreateKeyArgs {
    /// Human name.
    #[arg(long)]
    pub name: String,
    /// Space-separated scopes.
    #[arg(long)]
    pub scopes: String,
    /// Environment.
    #[arg(long, default_value = "prod", value_parser = ["prod", "test", "dev"])]
    pub env: String,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Days until the key expires (0: never).
    #[arg(long, default_value_t = 90)]
    pub expires_in_days: i64,
    /// Token requests per minute.
    #[arg(long, default_value_t = 600)]
    pub rate_limit_per_minute: i64,
    /// Allowed client networks (CIDR, repeatable).
    #[arg(long = "allowed-ip")]
    pub allowed_ips: Vec<IpNet>,
    /// Allowed browser origins (repeatable).
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
    /// Most devices the key may enroll.
    #[arg(long, default_value_t = 5)]
    pub max_devices: i64,
    /// Space-separated scopes for limited devices (default: the `read:` scopes).
    #[arg(long)]
    pub limited_scopes: Option<String>,
    /// New devices start trusted.
    #[arg(long)]
    pub trust_on_enroll: bool,
    /// Platform attestation policy: off, preferred or required (contract section 8).
    #[arg(long, default_value = "preferred", value_parser = ["off", "preferred", "required"])]
    pub attestation: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// `keybound devices …`
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List a key's devices.
    List {
        /// Key id (`ak_…`).
        key_id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Revoke a device.
    Revoke {
        /// Device id.
        device_id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Approve a device (it becomes trusted).
    Approve {
        /// Device id.
        device_id: String,
        #[command(flatten)]
        out: OutputArgs,
    },
}

/// `keybound signing-keys …`
#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// List signing keys.
    List(SigningKeyArgs),
    /// Make a new active signing key; the old one stays published until its tokens expire
    /// (or leaves the JWKS at once with `--revoke-previous`).
    Rotate(RotateSigningKeyArgs),
    /// Re-seal every signing key under a new master key (master key rotation; see
    /// docs/deployment.md for the rolling procedure).
    Reseal(ResealArgs),
}

/// `keybound signing-keys rotate` options.
#[derive(Debug, Clone, Args)]
pub struct RotateSigningKeyArgs {
    /// The master key, and output options.
    #[command(flatten)]
    pub common: SigningKeyArgs,
    /// The previous key is compromised: take it out of the JWKS at once instead of keeping
    /// it published until its tokens expire. Every token it signed stops verifying as soon as
    /// verifiers refresh the JWKS (keybound's servers within 5 s); see docs/admin.md.
    #[arg(long)]
    pub revoke_previous: bool,
}

/// `keybound signing-keys reseal` options.
#[derive(Debug, Clone, Args)]
pub struct ResealArgs {
    /// The current master key, and output options.
    #[command(flatten)]
    pub current: SigningKeyArgs,
    /// The new 32-byte master key (base64). Servers must be restarted with it afterwards.
    #[arg(long, env = "KEYBOUND_NEW_MASTER_KEY", hide_env_values = true)]
    pub new_master_key: SecretString,
}

/// Options for signing-key commands (they need the master key).
#[derive(Debug, Clone, Args)]
pub struct SigningKeyArgs {
    /// 32-byte master key (base64).
    #[arg(long, env = "KEYBOUND_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<SecretString>,
    /// The dev profile's generated master key file.
    #[arg(
        long,
        env = "KEYBOUND_MASTER_KEY_FILE",
        default_value = "keybound-data/master.key"
    )]
    pub master_key_file: PathBuf,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// `keybound audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's MAC chain; exit non-zero naming the first bad row, or when the
    /// log no longer reaches a checkpoint (`--checkpoint`).
    Verify(VerifyAuditArgs),
    /// Verify the chain and write its head (seq and MAC) authenticated under the database's
    /// integrity key; keep the file outside the database, to detect truncation later.
    Checkpoint(CheckpointArgs),
}

/// `keybound audit verify` options.
#[derive(Debug, Clone, Args)]
pub struct VerifyAuditArgs {
    /// A file written by `audit checkpoint`: also fail when the log ends before its row or
    /// that row changed.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// `keybound audit checkpoint` options.
#[derive(Debug, Clone, Args)]
pub struct CheckpointArgs {
    /// Write the checkpoint here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `keybound scan` options.
#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// Files or directories to scan (`-` for stdin; default: the current directory).
    pub paths: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut argv = vec!["keybound", "serve"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        })
    }

    #[test]
    fn prod_rules() {
        let cases: &[(&[&str], bool, &str)] = &[
            (&["--profile", "dev"], true, "dev needs nothing"),
            (&["--profile", "prod"], false, "prod without TLS or proxy"),
            (
                &[
                    "--profile",
                    "prod",
                    "--trusted-proxy",
                    "10.0.0.0/8",
                    "--master-key",
                    "x",
                ],
                true,
                "prod behind a proxy",
            ),
            (
                &[
                    "--profile",
                    "prod",
                    "--tls-cert",
                    "c",
                    "--tls-key",
                    "k",
                    "--master-key",
                    "x",
                ],
                true,
                "prod with TLS",
            ),
            (
                &["--profile", "prod", "--tls-cert", "c", "--tls-key", "k"],
                false,
                "prod without master key",
            ),
            (
                &[
                    "--profile",
                    "prod",
                    "--tls-cert",
                    "c",
                    "--tls-key",
                    "k",
                    "--master-key",
                    "x",
                    "--alert-webhook",
                    "https://h.example/",
                ],
                false,
                "prod webhook without secret",
            ),
            (
                &[
                    "--profile",
                    "prod",
                    "--trusted-proxy",
                    "10.0.0.0/8",
                    "--master-key",
                    "x",
                    "--attestation-root",
                    "root.pem",
                ],
                false,
                "prod with a custom attestation root, not allowed",
            ),
            (
                &[
                    "--profile",
                    "prod",
                    "--trusted-proxy",
                    "10.0.0.0/8",
                    "--master-key",
                    "x",
                    "--attestation-root",
                    "root.pem",
                    "--attestation-allow-custom-root",
                ],
                true,
                "prod with a custom attestation root, allowed",
            ),
            (
                &["--profile", "dev", "--attestation-root", "root.pem"],
                true,
                "dev may use a custom attestation root",
            ),
            (
                &[
                    "--profile",
                    "prod",
                    "--tls-cert",
                    "c",
                    "--tls-key",
                    "k",
                    "--master-key",
                    "x",
                    "--alert-webhook",
                    "https://h.example/",
                    "--alert-webhook-secret",
                    "s",
                ],
                true,
                "prod webhook with secret",
            ),
            (
                &["--alert-webhook", "http://127.0.0.1:1/"],
                true,
                "dev webhook without secret",
            ),
        ];
        for (args, ok, case) in cases {
            let a = serve(args).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(a.validate().is_ok(), *ok, "{case}");
        }
    }

    #[test]
    fn prod_logs_json_whatever_the_flag() {
        let prod = serve(&["--profile", "prod", "--log-format", "text"]).unwrap();
        assert_eq!(prod.effective_log_format(), LogFormat::Json);
        let dev = serve(&["--log-format", "text"]).unwrap();
        assert_eq!(dev.effective_log_format(), LogFormat::Text);
    }

    #[test]
    fn tls_makes_the_default_issuer_https() {
        let a = serve(&[
            "--listen",
            "127.0.0.1:8443",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ])
        .unwrap();
        assert_eq!(a.issuer(), "https://127.0.0.1:8443");
        assert_eq!(serve(&[]).unwrap().issuer(), "http://127.0.0.1:8080");
    }

    #[test]
    fn auto_suspend_on_takes_a_list_of_containable_kinds() {
        let a = serve(&["--auto-suspend-on", "KEY_LEAKED,dpop_replay"]).unwrap();
        assert_eq!(
            a.auto_suspend_on,
            [AlertKind::KeyLeaked, AlertKind::DpopReplay]
        );
        assert!(serve(&["--auto-suspend-on", "NEW_DEVICE"]).is_err());
        assert!(serve(&["--auto-suspend-on", "BOGUS"]).is_err());
        assert!(serve(&[]).unwrap().auto_suspend_on.is_empty());
    }

    #[test]
    fn short_or_empty_admin_tokens_are_refused() {
        let long = "x".repeat(MIN_ADMIN_TOKEN_CHARS);
        let short = "x".repeat(MIN_ADMIN_TOKEN_CHARS - 1);
        let padded = format!("  {short}  ");
        let cases: &[(&str, bool, &str)] = &[
            ("", false, "empty"),
            ("   ", false, "blank"),
            (&short, false, "31 characters"),
            (&padded, false, "31 characters in spaces"),
            (&long, true, "32 characters"),
        ];
        for (token, ok, case) in cases {
            let a = serve(&["--admin-token", token]).unwrap();
            let r = a.validate();
            assert_eq!(r.is_ok(), *ok, "{case}: {r:?}");
            if let Err(e) = r {
                assert!(!token.is_empty() || e.contains("32"), "{e}");
                assert!(token.trim().is_empty() || !e.contains(token.trim()), "{e}");
            }
        }
        assert!(
            serve(&[]).unwrap().validate().is_ok(),
            "no token: admin API off"
        );
    }

    #[test]
    fn the_admin_token_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin");
        std::fs::write(&file, format!("{}\n", "t".repeat(40))).unwrap();
        let mut a = serve(&["--admin-token-file", file.to_str().unwrap()]).unwrap();
        a.load_admin_token_file().unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(a.admin_token.as_ref().unwrap()),
            "t".repeat(40),
            "trailing newline dropped"
        );
        assert!(a.validate().is_ok());
        std::fs::write(&file, "short\n").unwrap();
        let mut a = serve(&["--admin-token-file", file.to_str().unwrap()]).unwrap();
        a.load_admin_token_file().unwrap();
        assert!(a.validate().is_err());
        let mut missing = serve(&["--admin-token-file", "/nonexistent/admin"]).unwrap();
        assert!(missing.load_admin_token_file().is_err());
        assert!(
            serve(&["--admin-token-file", "f", "--admin-token", &"t".repeat(40)]).is_err(),
            "one source only"
        );
    }

    #[test]
    fn secrets_on_the_command_line_are_named() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            secrets_on_command_line(argv(&[
                "keybound",
                "serve",
                "--admin-token",
                "x",
                "--master-key=y",
                "--admin-token-file",
                "f",
                "--master-key-file",
                "g",
            ])),
            ["--admin-token", "--master-key"]
        );
        assert!(secrets_on_command_line(argv(&["keybound", "serve", "--listen", "x"])).is_empty());
    }

    #[test]
    fn debug_output_of_the_settings_has_no_credential() {
        let a = Cli::try_parse_from([
            "keybound",
            "--database-url",
            "postgres://kb:db-password-1@db.internal:5432/keybound",
            "serve",
            "--redis-url",
            "redis://:redis-password-2@cache.internal:6379/0",
            "--alert-webhook",
            "https://hooks.example.com/services/T0/B0/webhook-token-3?sig=query-token-4",
            "--alert-webhook-secret",
            "webhook-secret-5",
            "--admin-token",
            "admin-token-6-admin-token-6-admin-token-6",
            "--master-key",
            "master-key-7",
        ])
        .unwrap();
        let debug = format!("{a:?} {a:#?}");
        for secret in [
            "db-password-1",
            "redis-password-2",
            "webhook-token-3",
            "query-token-4",
            "webhook-secret-5",
            "admin-token-6",
            "master-key-7",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        // What is left still says where things are.
        for place in [
            "db.internal:5432",
            "cache.internal:6379",
            "hooks.example.com",
        ] {
            assert!(debug.contains(place), "{place} missing from {debug}");
        }
        assert_eq!(
            format!("{:?}", CredentialUrl::from("sqlite://keybound-data/kb.db")),
            "\"sqlite://keybound-data/[REDACTED]\""
        );
        assert_eq!(
            format!("{:?}", CredentialUrl::from("redis://127.0.0.1:6379")),
            "\"redis://127.0.0.1:6379\""
        );
        assert_eq!(
            format!("{:?}", CredentialUrl::from("no-scheme:secret")),
            "\"[REDACTED]\""
        );
    }

    #[test]
    fn a_negative_iat_window_is_refused() {
        assert!(serve(&["--dpop-iat-window-seconds", "-1"]).is_err());
        assert!(serve(&["--dpop-iat-window-seconds=-60"]).is_err());
        assert_eq!(
            serve(&["--dpop-iat-window-seconds", "30"])
                .unwrap()
                .dpop_iat_window_seconds,
            30
        );
    }

    #[test]
    fn ttl_above_an_hour_is_refused() {
        let r = Cli::try_parse_from(["keybound", "serve", "--access-ttl-seconds", "3601"]);
        assert!(r.is_err());
    }
}
