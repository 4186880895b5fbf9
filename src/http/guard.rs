//! What every request on the token path shares, whichever endpoint and request form (JSON
//! here, RFC 6749 forms in [`super::oauth`]) it came as: the credentials it presents, the
//! per-IP failure budget, usage records and the `no-store` answer headers. The leak report
//! and the key-in-URL guard spend the same failure budget ([`count_failure`]).

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::extract::bearer;
use crate::alerts::AlertKind;
use crate::error::{Error, Result};
use crate::exchange::Presented;
use crate::state::AppState;

/// What a token request sent to `path` presents: the API key (`X-API-Key`, else a bearer
/// token), the proof, the origin and the client IP.
pub fn presented<'a>(
    headers: &'a HeaderMap,
    ip: std::net::IpAddr,
    path: &'static str,
) -> Presented<'a> {
    fn text(v: &HeaderValue) -> Option<&str> {
        v.to_str().ok()
    }
    let api_key = headers
        .get("x-api-key")
        .and_then(text)
        .or_else(|| bearer(headers));
    let mut proofs = headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (None, _) => Ok(None),
        (Some(p), None) => Ok(Some(p.to_str().unwrap_or(""))),
        (Some(_), Some(_)) => Err(()),
    };
    Presented {
        api_key,
        proof,
        origin: headers.get(header::ORIGIN).and_then(text),
        ip,
        path,
    }
}

/// What [`guarded`] needs to know of a refusal, whichever writer answers it: the JSON
/// requests' [`Error`] (the envelope) or a form request's refusal (RFC 6749 section 5.2).
pub(super) trait Refusal: From<Error> {
    /// Whether it counts against the client IP's failure budget.
    fn is_auth_failure(&self) -> bool;
}

impl Refusal for Error {
    fn is_auth_failure(&self) -> bool {
        Error::is_auth_failure(self)
    }
}

/// Refuses an IP that spent its failure budget, counts this request's failure against it,
/// records usage for an identified key, and writes the response headers both endpoints (and
/// both request forms) share.
pub(super) async fn guarded<T: Serialize, E: Refusal>(
    state: &AppState,
    ip: std::net::IpAddr,
    work: impl Future<Output = (Option<String>, Result<T, E>)>,
) -> Result<Response, E> {
    if state.switches.rate_limits() {
        state.failures.check(ip).await?;
    }
    let started = std::time::Instant::now();
    let (key_id, result) = work.await;
    let elapsed = started.elapsed();
    static EXCHANGE_SECONDS: std::sync::LazyLock<metrics::Histogram> =
        std::sync::LazyLock::new(|| crate::telemetry::histogram("keybound_exchange_seconds"));
    EXCHANGE_SECONDS.record(elapsed.as_secs_f64());
    if let Some(key_id) = key_id.filter(|_| state.switches.usage()) {
        state.usage.record(
            &key_id,
            crate::clock::now(),
            result.is_err(),
            elapsed.as_micros() as i64,
        );
    }
    let mut res = match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => {
            if e.is_auth_failure() {
                count_failure(state, ip).await?;
            }
            return Err(e);
        }
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if state.settings.require_dpop_nonce
        && let Ok(v) = HeaderValue::from_str(&state.nonces.issue(crate::clock::now()))
    {
        // RFC 9449 section 8.2: hand out the next nonce with every success.
        h.insert("dpop-nonce", v);
    }
    Ok(res)
}

/// Counts a failed authentication from `ip` against its failure budget, and raises
/// `FAILURE_BURST` (once a minute per address bucket) when this failure spent it. The token
/// endpoints, the leak report and the key-in-URL guard share this budget.
pub(super) async fn count_failure(state: &AppState, ip: std::net::IpAddr) -> Result<()> {
    if state.failures.record_failure(ip).await? {
        let bucket = state.failures.bucket(ip);
        state.alerts.raise_once(
            AlertKind::FailureBurst,
            &bucket.to_string(),
            None,
            Some(ip),
            serde_json::json!({"budget_per_minute": state.failures.per_minute(),
                               "addresses": bucket.to_string()}),
        );
    }
    Ok(())
}
