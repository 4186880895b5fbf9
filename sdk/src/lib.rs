//! keybound-sdk
