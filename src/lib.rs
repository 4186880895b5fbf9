//! keybound
