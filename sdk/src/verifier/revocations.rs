//! The revocation feed (contract 3.3): a signed, incremental list of revoked or suspended API
//! keys and revoked devices, polled so that a revocation reaches this resource server within the
//! poll interval instead of the token lifetime.
//!
//! A poll reads pages until the feed says there are no `more` (at most
//! [`MAX_PAGES_PER_POLL`]), so a burst of revocations is applied in one poll rather than one
//! page per interval. The first poll starts at [`horizon`] (`since_time`) instead of the
//! beginning of the feed: older entries can only name tokens that have expired. While pages
//! remain unread the feed is not called healthy.

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

/// The most pages one poll reads (1 000 entries each on keybound): a poll catches up with
/// 20 000 revocations, and a feed that is longer still is read over several polls, during
/// which [`Revocations::healthy`] says no.
pub(crate) const MAX_PAGES_PER_POLL: usize = 20;

/// The earliest revocation time that can still matter at `now`: a revocation before it can
/// only cover tokens that have expired. The first poll asks the feed to start there.
pub(crate) fn horizon(now: u64, leeway: u64) -> u64 {
    now.saturating_sub(MAX_TOKEN_LIFETIME + PROPAGATION_MARGIN + leeway)
}

/// The claims of a feed page.
#[derive(Deserialize)]
pub(crate) struct FeedClaims {
    pub(crate) iat: u64,
    pub(crate) revocations: Vec<Entry>,
    pub(crate) next: Option<String>,
    /// Whether entries remain after this page.
    #[serde(default)]
    pub(crate) more: bool,
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
    /// The last poll stopped with pages still unread.
    behind: bool,
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

        let horizon = horizon(unix_now(), leeway);
        state.keys.retain(|_, at| *at >= horizon);
        state.devices.retain(|_, at| *at >= horizon);
    }

    /// Records the end of a poll that read every page it asked for: `caught_up` is false when
    /// it stopped at [`MAX_PAGES_PER_POLL`] with more to read. Only a poll that caught up
    /// counts as a success: until then newer revocations may sit on unread pages.
    pub(crate) fn poll_finished(&self, caught_up: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.behind = !caught_up;
        if caught_up {
            state.last_success = Some(SystemTime::now());
        }
    }

    /// Healthy when the last poll read the feed to its end and is at most `max_age` old.
    pub(crate) fn healthy(&self, max_age: Duration) -> bool {
        let behind = self.state.lock().unwrap_or_else(|e| e.into_inner()).behind;
        !behind
            && self
                .last_success()
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
            more: false,
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
        revocations.poll_finished(true);
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

    #[test]
    fn a_poll_that_stopped_early_is_not_healthy() {
        let revocations = Revocations::default();
        revocations.apply(page(&[], "c1"), 30);
        revocations.poll_finished(true);
        assert!(revocations.healthy(Duration::from_secs(5)));
        revocations.poll_finished(false);
        assert!(!revocations.healthy(Duration::from_secs(5)), "pages unread");
        revocations.poll_finished(true);
        assert!(revocations.healthy(Duration::from_secs(5)));
    }
}
