//! The revocation feed (contract 3.3): a signed, incremental list of revoked or suspended API
//! keys and revoked devices, polled so that a revocation reaches this resource server within the
//! poll interval instead of the token lifetime.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::jose::unix_now;

/// The feed's JWS `typ`; a token of another type (an access token, say) is not a feed.
pub(crate) const FEED_TYP: &str = "revocations+jwt";

/// Tokens live at most this long (the contract's maximum `--access-ttl-seconds`). A revocation
/// older than this plus the leeway can no longer match an unexpired token, so it is forgotten:
/// that keeps the state bounded however long the verifier runs.
const MAX_TOKEN_LIFETIME: u64 = 3600;

/// The server applies a revocation on every instance within 1 s (contract 3.4); a token issued
/// in that second by an instance that had not seen it yet is refused too.
const PROPAGATION_MARGIN: u64 = 1;

/// The claims of a feed page.
#[derive(Deserialize)]
pub(crate) struct FeedClaims {
    pub(crate) iat: u64,
    pub(crate) revocations: Vec<Entry>,
    pub(crate) next: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Entry {
    pub(crate) kind: String,
    pub(crate) id: String,
    pub(crate) at: u64,
}

#[derive(Default)]
pub(crate) struct Revocations {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// API key id → time of its latest revocation or suspension.
    keys: HashMap<String, u64>,
    /// Device thumbprint → time of its latest revocation.
    devices: HashMap<String, u64>,
    cursor: Option<String>,
    last_iat: u64,
    last_success: Option<SystemTime>,
}

impl Revocations {
    /// Whether a token issued at `iat` for API key `sub` and device `jkt` was revoked.
    ///
    /// A revocation applies to tokens issued at or before it. Comparing times rather than just
    /// ids means a suspended key that is later resumed gets working tokens again (the feed only
    /// lists revocations and suspensions), while every token that existed when it was
    /// suspended stays refused.
    pub(crate) fn is_revoked(&self, sub: &str, jkt: &str, iat: u64) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let covers = |at: Option<&u64>| at.is_some_and(|at| iat <= at + PROPAGATION_MARGIN);
        covers(state.keys.get(sub)) || covers(state.devices.get(jkt))
    }

    pub(crate) fn cursor(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cursor
            .clone()
    }

    pub(crate) fn last_iat(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_iat
    }

    pub(crate) fn last_success(&self) -> Option<SystemTime> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_success
    }

    /// Applies a verified feed page.
    pub(crate) fn apply(&self, page: FeedClaims, leeway: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for entry in page.revocations {
            let map = match entry.kind.as_str() {
                "key" => &mut state.keys,
                "device" => &mut state.devices,
                // Refresh families matter to the issuer only: access tokens do not name theirs.
                _ => continue,
            };
            let at = map.entry(entry.id).or_insert(entry.at);
            *at = (*at).max(entry.at);
        }
        if page.next.is_some() {
            state.cursor = page.next;
        }
        state.last_iat = state.last_iat.max(page.iat);
        state.last_success = Some(SystemTime::now());

        let horizon = unix_now().saturating_sub(MAX_TOKEN_LIFETIME + PROPAGATION_MARGIN + leeway);
        state.keys.retain(|_, at| *at >= horizon);
        state.devices.retain(|_, at| *at >= horizon);
    }

    /// Healthy when the last successful poll is at most `max_age` old.
    pub(crate) fn healthy(&self, max_age: Duration) -> bool {
        self.last_success()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age <= max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(entries: &[(&str, &str, u64)], next: &str) -> FeedClaims {
        FeedClaims {
            iat: unix_now(),
            revocations: entries
                .iter()
                .map(|(kind, id, at)| Entry {
                    kind: (*kind).into(),
                    id: (*id).into(),
                    at: *at,
                })
                .collect(),
            next: Some(next.into()),
        }
    }

    #[test]
    fn revocations_cover_tokens_issued_before_them() {
        let now = unix_now();
        let revocations = Revocations::default();
        revocations.apply(
            page(
                &[("key", "ak_test_1", now - 10), ("device", "jkt-1", now - 5)],
                "c1",
            ),
            30,
        );
        assert!(revocations.is_revoked("ak_test_1", "other", now - 20));
        assert!(revocations.is_revoked("other", "jkt-1", now - 5));
        assert!(
            !revocations.is_revoked("ak_test_1", "other", now),
            "issued after a resume"
        );
        assert!(!revocations.is_revoked("ak_test_2", "jkt-2", now - 20));
        assert_eq!(revocations.cursor().as_deref(), Some("c1"));
        assert!(revocations.healthy(Duration::from_secs(5)));
    }

    #[test]
    fn old_revocations_are_forgotten() {
        let now = unix_now();
        let revocations = Revocations::default();
        revocations.apply(
            page(&[("key", "ak_old", now - 2 * MAX_TOKEN_LIFETIME)], "c"),
            30,
        );
        assert!(revocations.state.lock().unwrap().keys.is_empty());
    }
}
