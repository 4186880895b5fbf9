//! keybound: exchanges long-lived API keys for short-lived, device-bound (DPoP) EdDSA tokens.
//!
//! A request's path through the code, by folder: [`http`] (routes, extractors, the error
//! envelope) → [`exchange`] (the token use cases) → [`keys`] (parse and check the API key) →
//! [`dpop`] (verify the device's proof) → [`replay`] (refuse a proof seen before) →
//! [`devices`] (score trust) → [`tokens`] (sign the access token, rotate refresh tokens) →
//! [`store`] (SQLite or PostgreSQL, behind a validation cache), with every operator action in
//! the [`audit`] log and every anomaly in [`alerts`].

/// Anomaly detection and alerts.
pub mod alerts;
/// The binary's allocator: clears large blocks on free (request buffers).
pub mod alloc;
/// Platform attestation (Apple App Attest, Android Key Attestation): the verification core.
pub mod attestation;
/// The tamper-evident, hash-chained audit log.
pub mod audit;
/// Command-line subcommands.
pub mod cli;
/// The wall clock (unix seconds).
pub mod clock;
/// Cluster mode: the Redis connection several instances share state through.
pub mod cluster;
/// Command line and configuration.
pub mod config;
/// Automatic containment (`--auto-suspend-on`): alerts that suspend a key or revoke a device.
pub mod containment;
/// Device trust scoring (contract section 6).
pub mod devices;
/// RFC 9449 DPoP proof verification and server nonces.
pub mod dpop;
/// One error type mapped to the contract's envelope, statuses and codes.
pub mod error;
/// The token exchange and refresh use cases.
pub mod exchange;
/// The bodies of the fuzz targets (`fuzz/`) and of their property-test twins.
#[doc(hidden)]
pub mod fuzzing;
/// HTTP routes, extractors and error mapping.
pub mod http;
/// The values records hold, as types that parse: key ids and environments, scopes, origins,
/// thumbprints.
pub mod ids;
/// Integrity against a database writer: MAC'd key hashes, audit chain and checkpoints.
pub mod integrity;
/// Background jobs: batched bookkeeping, the storage probe, purges.
pub mod jobs;
/// API key format and lifecycle.
pub mod keys;
/// Rate limits and failure budgets.
pub mod limits;
/// Client addresses in canonical form: trust, allow lists, budget buckets.
pub mod net;
/// The replay store for DPoP proof ids (in-process or Redis).
pub mod replay;
/// Starting and stopping the server.
pub mod server;
/// Shared application state.
pub mod state;
/// Storage trait with SQLite and PostgreSQL implementations.
pub mod store;
/// Benchmark switches (`keybound bench --overhead`), read on the token path.
pub mod switches;
/// Logging setup.
pub mod telemetry;
/// HTTPS: rustls configuration from PEM files, reloadable while serving.
pub mod tls;
/// Signing keys, access tokens, refresh tokens.
pub mod tokens;
/// Usage per key and minute, counted in memory and written in batches.
pub mod usage;

pub use error::{Error, Result};

/// The check that the top-level modules above form no import cycle.
#[cfg(test)]
mod layering;
