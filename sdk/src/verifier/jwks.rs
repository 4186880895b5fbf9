//! The issuer's signing keys: fetched from its JWKS, cached per `Cache-Control` (refreshed in
//! the background once stale), fetched at once when a token names a `kid` we do not know, and
//! kept when a refresh fails.

use ed25519_dalek::VerifyingKey;
use reqwest::header::CACHE_CONTROL;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::http::error_from_response;
use crate::jose::b64_decode;

/// Cache lifetime when the JWKS answer has no `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Bounds on the server's `max-age`: `no-cache` must not mean a fetch per request, and a huge
/// value must not keep a retired key forever.
const MIN_MAX_AGE: Duration = Duration::from_secs(30);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct Jwks {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where to fetch the keys from; `None` for a static set given at build time.
    uri: Option<String>,
    /// At most one fetch per this interval, whatever triggers it: a stream of tokens with
    /// made-up `kid`s must not turn the verifier into a flood against the issuer.
    min_refresh_interval: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Serialises fetches and remembers when the last one started.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Set while a background refresh is under way, so a stale set spawns one, not one per
    /// request.
    refreshing: AtomicBool,
}

struct KeySet {
    /// Decompressed once, when the set is read: decompressing an Ed25519 point costs about a
    /// tenth of a signature check, and would otherwise be paid on every token.
    keys: HashMap<String, VerifyingKey>,
    /// When to fetch again; `None` for a static set.
    fresh_until: Option<Instant>,
}

impl Jwks {
    /// A fixed key set, never refreshed.
    pub(crate) fn fixed(jwks: &Value) -> Result<Self> {
        Ok(Self::new(
            None,
            Duration::MAX,
            KeySet {
                keys: parse(jwks)?,
                fresh_until: None,
            },
            None,
        ))
    }

    /// Keys fetched from `uri`; the first fetch happens here and must succeed.
    pub(crate) async fn remote(
        http: &reqwest::Client,
        uri: String,
        min_refresh_interval: Duration,
    ) -> Result<Self> {
        let set = fetch(http, &uri, min_refresh_interval).await?;
        Ok(Self::new(
            Some(uri),
            min_refresh_interval,
            set,
            Some(Instant::now()),
        ))
    }

    fn new(
        uri: Option<String>,
        min_refresh_interval: Duration,
        set: KeySet,
        last_fetch: Option<Instant>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                uri,
                min_refresh_interval,
                current: RwLock::new(Arc::new(set)),
                fetch: tokio::sync::Mutex::new(last_fetch),
                refreshing: AtomicBool::new(false),
            }),
        }
    }

    /// The key for `kid`.
    ///
    /// A set past its `max-age` keeps answering while a background task fetches the next one:
    /// no request waits on a refetch of keys it already has. Only a `kid` the set does not
    /// know (the issuer rotated its signing key since the last fetch) makes the request wait
    /// for a fetch, at most one per `min_refresh_interval`.
    pub(crate) async fn key(&self, http: &reqwest::Client, kid: &str) -> Option<VerifyingKey> {
        let set = self.inner.snapshot();
        if set.fresh_until.is_some_and(|t| Instant::now() >= t)
            && !self.inner.refreshing.swap(true, Ordering::AcqRel)
        {
            let (inner, http) = (self.inner.clone(), http.clone());
            tokio::spawn(async move {
                inner.refresh(&http).await;
                inner.refreshing.store(false, Ordering::Release);
            });
        }
        if let Some(key) = set.keys.get(kid) {
            return Some(*key);
        }
        // A new kid usually means the issuer rotated its signing key.
        self.inner.refresh(http).await;
        self.inner.snapshot().keys.get(kid).copied()
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn refresh(&self, http: &reqwest::Client) {
        let Some(uri) = &self.uri else { return };
        let mut last_start = self.fetch.lock().await;
        // Whoever waited on the lock sees the fetch that just finished and does not repeat it.
        if last_start.is_some_and(|t| t.elapsed() < self.min_refresh_interval) {
            return;
        }
        *last_start = Some(Instant::now());
        match fetch(http, uri, self.min_refresh_interval).await {
            Ok(set) => *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set),
            // The last good keys stay in use: an issuer outage must not stop verification of
            // tokens it signed before.
            Err(e) => {
                tracing::warn!(error = %e, jwks_uri = %uri, "JWKS refresh failed; keeping the last good key set")
            }
        }
    }
}

/// Reads the key set at `uri`. Its `max-age` is kept within bounds; the floor is the least
/// time between fetches (at most [`MIN_MAX_AGE`]), since fetching more often is refused anyway.
async fn fetch(
    http: &reqwest::Client,
    uri: &str,
    min_refresh_interval: Duration,
) -> Result<KeySet> {
    let response = http.get(uri).send().await.map_err(Error::from_http)?;
    if !response.status().is_success() {
        return Err(error_from_response(response).await);
    }
    let max_age = response
        .headers()
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(max_age)
        .unwrap_or(DEFAULT_MAX_AGE)
        .clamp(MIN_MAX_AGE.min(min_refresh_interval), MAX_MAX_AGE);
    let jwks: Value = response.json().await.map_err(Error::from_http)?;
    Ok(KeySet {
        keys: parse(&jwks)?,
        fresh_until: Some(Instant::now() + max_age),
    })
}

/// The `max-age` directive of a `Cache-Control` value; `no-cache`/`no-store` count as zero.
fn max_age(header: &str) -> Option<Duration> {
    header.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        let (name, value) = directive.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        value
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

/// The usable keys of a JWKS: Ed25519 signing keys with a `kid`. Anything else (an RSA key, an
/// `oct` secret, an encryption key) is skipped, so it can never be used to check a token.
fn parse(jwks: &Value) -> Result<HashMap<String, VerifyingKey>> {
    let invalid = || Error::new(ErrorKind::UnexpectedResponse { status: 200 });
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid().with_message("JWKS has no `keys` array"))?;
    let mut usable = HashMap::new();
    for key in keys {
        let member = |name: &str| key.get(name).and_then(Value::as_str);
        let fits = member("kty") == Some("OKP")
            && member("crv") == Some("Ed25519")
            && matches!(member("use"), None | Some("sig"))
            && matches!(member("alg"), None | Some("EdDSA"))
            && key.get("d").is_none();
        let Some(kid) = member("kid").filter(|_| fits) else {
            continue;
        };
        let x = member("x")
            .and_then(b64_decode)
            .and_then(|x| <[u8; 32]>::try_from(x).ok());
        if let Some(key) = x.and_then(|x| VerifyingKey::from_bytes(&x).ok()) {
            usable.insert(kid.to_owned(), key);
        }
    }
    if usable.is_empty() {
        return Err(invalid().with_message("JWKS has no usable Ed25519 signing key"));
    }
    Ok(usable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("MAX-AGE=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }

    #[test]
    fn only_ed25519_signing_keys_are_kept() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let jwks = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "good", "use": "sig", "alg": "EdDSA"},
            {"kty": "OKP", "crv": "Ed25519", "x": x},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "short"},
        ]});
        let keys = parse(&jwks).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["good"]);
        assert!(parse(&json!({"keys": []})).is_err());
        assert!(parse(&json!({})).is_err());
    }
}
