//! Benchmark switches: what `keybound bench --overhead` may turn off, read on the token path.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `keybound bench --overhead` turns off to measure its cost, through `PUT
/// /bench/switches`, a route only the load generator's own loopback server has
/// (`keybound-bench`, which calls [`Switches::set`]). `keybound serve` has no route or flag
/// that reaches them: they stay on.
#[derive(Debug)]
pub struct Switches {
    rate_limits: AtomicBool,
    usage: AtomicBool,
    writes: AtomicBool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            rate_limits: AtomicBool::new(true),
            usage: AtomicBool::new(true),
            writes: AtomicBool::new(true),
        }
    }
}

impl Switches {
    /// Whether the per-key rate and the per-IP failure budget are checked.
    pub fn rate_limits(&self) -> bool {
        self.rate_limits.load(Ordering::Relaxed)
    }

    /// Whether usage is counted.
    pub fn usage(&self) -> bool {
        self.usage.load(Ordering::Relaxed)
    }

    /// Whether a refresh advances its family (durably, before answering) and the token path
    /// queues the device's history. Off, a refresh spends nothing (its token stays live): only
    /// `--overhead` turns it off, to measure what durability costs.
    pub fn writes(&self) -> bool {
        self.writes.load(Ordering::Relaxed)
    }

    /// Sets all three (the bench's own server only).
    pub fn set(&self, rate_limits: bool, usage: bool, writes: bool) {
        self.rate_limits.store(rate_limits, Ordering::Relaxed);
        self.usage.store(usage, Ordering::Relaxed);
        self.writes.store(writes, Ordering::Relaxed);
    }
}
