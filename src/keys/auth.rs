//! The one place a presented API key is checked. The token exchange, the leak report
//! (`POST /v1/leaks`) and the guard against keys in URLs all call [`KeyAuth::authenticate`],
//! so every path that looks at a key pays the same costs and refuses the same way.
//!
//! What it does, in order: parse (format and checksum; no storage is touched for a malformed
//! key, which reveals nothing), one cached lookup of the id, a constant-time compare of the
//! secret's wrapped hash ([`crate::integrity`]; against a fixed dummy when the id is unknown),
//! and for a refusal the equalised cost ([`CachedStore::pay_for_refusal`]) and the key id's
//! failure budget ([`KeyIdFailures`]). An unknown id and a wrong secret are indistinguishable, by answer
//! and by timing (contract section 5, `INVALID_API_KEY`).

use std::sync::Arc;

use serde_json::json;

use super::ApiKey;
use crate::alerts::{AlertKind, Alerts};
use crate::error::{Error, Result};
use crate::integrity::WRAPPED_HASH_LEN;
use crate::limits::KeyIdFailures;
use crate::store::cached::CachedStore;
use crate::store::{KeyRecord, Store as _};

/// A key whose secret verified.
#[derive(Debug, Clone)]
pub enum Verified {
    /// The right secret of a key usable now (active, unexpired).
    Usable(Arc<KeyRecord>),
    /// The right secret of a suspended, revoked or expired key: not a guess (no failure is
    /// counted), but not usable either.
    Unusable(Arc<KeyRecord>),
}

impl Verified {
    /// The key record, usable or not.
    pub fn record(&self) -> &Arc<KeyRecord> {
        match self {
            Verified::Usable(r) | Verified::Unusable(r) => r,
        }
    }

    /// The record of a usable key; `INVALID_API_KEY` (one message for all) otherwise.
    pub fn usable(self) -> Result<Arc<KeyRecord>> {
        match self {
            Verified::Usable(r) => Ok(r),
            Verified::Unusable(_) => Err(Error::InvalidApiKey),
        }
    }
}

/// What checking a key needs: the validation cache, the key ids' failure budget and the
/// alerts (a spent budget for a real key raises `FAILURE_BURST`).
#[derive(Clone, Copy)]
pub struct KeyAuth<'a> {
    /// Cached key records.
    pub cache: &'a CachedStore,
    /// Wrong secrets per key id.
    pub failures: &'a KeyIdFailures,
    /// Where a spent budget is reported.
    pub alerts: &'a Alerts,
}

/// The stored hash an unknown id's presented secret is compared against, so that refusing an
/// unknown id does the same MAC and compare as refusing a wrong secret.
const DUMMY_HASH: [u8; WRAPPED_HASH_LEN] = [0x5a; WRAPPED_HASH_LEN];

impl KeyAuth<'_> {
    /// Checks a presented key (surrounding whitespace ignored) at `now`.
    ///
    /// `Ok` only when the secret is right; then [`Verified`] says whether the key is usable.
    /// Refusals: `INVALID_API_KEY` for a malformed key, an unknown id or a wrong secret;
    /// `RATE_LIMITED` ([`Error::KeyIdBudgetSpent`]) for a wrong secret once the id's failure
    /// budget is spent (the right secret is never refused by that budget). Both are failed
    /// authentications for the caller's per-IP budget ([`Error::is_auth_failure`]).
    pub async fn authenticate(&self, presented: &str, now: i64) -> Result<Verified> {
        let key = ApiKey::parse(presented.trim()).map_err(|_| Error::InvalidApiKey)?;
        self.verify(&key, now).await
    }

    /// [`authenticate`](Self::authenticate) for a key already parsed.
    pub async fn verify(&self, key: &ApiKey, now: i64) -> Result<Verified> {
        let id = key.id().as_str();
        let integrity = self
            .cache
            .integrity()
            .ok_or_else(|| Error::internal("the integrity keys are not loaded"))?;
        let (record, cached) = self.cache.key_and_source(id).await?;
        let stored: &[u8] = record
            .as_deref()
            .map_or(&DUMMY_HASH[..], |r| &r.secret_hash[..]);
        // Only the wrapped form verifies: a row a database writer inserted with the bare
        // SHA-256 of a secret they chose (or any value they could compute without the master
        // key) is refused like a wrong secret (crate::integrity).
        let matches = bool::from(integrity.key_hash_matches(id, &key.secret_hash(), stored))
            & record.is_some();
        match record {
            Some(r) if matches && r.usable_at(now) => Ok(Verified::Usable(r)),
            Some(r) if matches => Ok(Verified::Unusable(r)),
            _ => Err(self.refuse(id, record.as_deref(), cached).await),
        }
    }

    /// A wrong secret or an unknown id: pays what refusing an unknown id costs, and spends
    /// the id's failure budget (wrong secrets for one id from anywhere: a botnet spreads over
    /// IPs), at the same fixed cost for unknown and real ids (see [`KeyIdFailures`]).
    async fn refuse(&self, id: &str, record: Option<&KeyRecord>, cached: bool) -> Error {
        self.cache.pay_for_refusal(cached).await;
        match self.failures.record(id).await {
            Err(e) => e,
            Ok(true) => Error::InvalidApiKey,
            Ok(false) => {
                if let Some(r) = record {
                    // Alert for real keys only: made-up ids are noise, not a target.
                    self.alerts.raise_once(
                        AlertKind::FailureBurst,
                        &r.key_id,
                        Some(&r.key_id),
                        None,
                        json!({"scope": "key_id", "budget_per_minute": self.failures.per_minute()}),
                    );
                }
                Error::KeyIdBudgetSpent {
                    retry_after_secs: self.failures.retry_after_secs(),
                }
            }
        }
    }
}
