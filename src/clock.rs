//! The wall clock, in the unit every record and token claim uses: whole unix seconds.
//!
//! One function, so the code that reads the time is easy to find; callers take `now` as an
//! argument wherever a test needs to choose it (the exchange, key checks, purges).

/// Current unix time in seconds (0 if the system clock is set before 1970).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
