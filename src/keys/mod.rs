//! API keys: the key format ([`format`]), the one check of a presented key ([`auth`]) and the
//! lifecycle operations shared by the CLI and the admin API ([`service`]).

pub mod auth;
pub mod format;

pub use auth::{KeyAuth, Verified};
pub use format::{ApiKey, KeyEnv, KeyFormatError, KeyId};
pub mod service;
