//! keybound: exchanges long-lived API keys for short-lived, device-bound (DPoP) EdDSA tokens.
//!
//! A request's path through the code, by folder: [`http`] (routes, extractors, the error
//! envelope) → [`keys`] (parse and check the API key) → [`dpop`] (verify the device's proof) →
//! [`replay`] (refuse a proof seen before) → [`devices`] (enroll, score trust) → [`tokens`]
//! (sign the access token, rotate refresh tokens) → [`store`] (SQLite or PostgreSQL), with
//! every operator action in the [`audit`] log.

/// The tamper-evident, hash-chained audit log.
pub mod audit;
/// One error type mapped to the contract's envelope, statuses and codes.
pub mod error;
/// API key format and lifecycle.
pub mod keys;
/// Storage trait with SQLite and PostgreSQL implementations.
pub mod store;

pub use error::{Error, Result};
/// Anomaly detection and alerts.
pub mod alerts;
/// Command-line subcommands.
pub mod cli;
/// Command line and configuration.
pub mod config;
/// HTTP routes, extractors and error mapping.
pub mod http;
/// Rate limits and failure budgets.
pub mod limits;
/// Starting and stopping the server.
pub mod server;
/// Shared application state.
pub mod state;
/// Logging setup.
pub mod telemetry;
