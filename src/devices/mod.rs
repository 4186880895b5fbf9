//! Devices: a device is its DPoP public key. This module decides how far to trust one.
//!
//! * [`trust`](crate::devices::trust) — the deterministic trust score and level of contract section 6.

pub mod trust;

pub use trust::{
    Attributes, DeviceHistory, NetworkSignals, TrustDecision, TrustFactor, TrustInputs, TrustLevel,
    evaluate, limited_scopes_default,
};
