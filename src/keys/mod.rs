//! API keys: the key format ([`format`]) and the lifecycle operations shared by the CLI and
//! the admin API ([`service`]).

pub mod format;

pub use format::{ApiKey, KeyEnv, KeyFormatError, KeyId};
pub mod service;
