//! `POST /v1/token` and `POST /v1/token/refresh`: header extraction and the per-IP failure
//! budget around [`crate::exchange`].

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::extract::{ClientIp, Json};
use crate::alerts::AlertKind;
use crate::error::Result;
use crate::exchange::{self, Presented, RefreshRequest, TokenRequest};
use crate::state::AppState;
use crate::store::UsageEvent;

/// Token routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(exchange::TOKEN_PATH, post(token))
        .route(exchange::REFRESH_PATH, post(refresh))
}

fn presented<'a>(
    headers: &'a HeaderMap,
    ip: std::net::IpAddr,
    key_seen: &'a std::sync::OnceLock<String>,
) -> Presented<'a> {
    let text = |v: &'a HeaderValue| v.to_str().ok();
    let api_key = headers.get("x-api-key").and_then(text).or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(text)
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
    });
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
        key_seen,
    }
}

async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>>,
) -> Result<Response> {
    let seen = std::sync::OnceLock::new();
    let work = async {
        let Json(body) = body?;
        exchange::exchange(&state, presented(&headers, ip, &seen), body).await
    };
    guarded(&state, ip, exchange::TOKEN_PATH, &headers, &seen, work).await
}

async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Json<RefreshRequest>>,
) -> Result<Response> {
    let seen = std::sync::OnceLock::new();
    let work = async {
        let Json(body) = body?;
        exchange::refresh(&state, presented(&headers, ip, &seen), body).await
    };
    guarded(&state, ip, exchange::REFRESH_PATH, &headers, &seen, work).await
}

/// Refuses an IP that spent its failure budget, counts this request's failure against it,
/// records usage for an identified key, and writes the response headers both endpoints share.
async fn guarded(
    state: &AppState,
    ip: std::net::IpAddr,
    endpoint: &'static str,
    headers: &HeaderMap,
    key_seen: &std::sync::OnceLock<String>,
    work: impl Future<Output = Result<exchange::TokenResponse>>,
) -> Result<Response> {
    state.failures.check(&ip).await?;
    let started = std::time::Instant::now();
    let result = work.await;
    let elapsed = started.elapsed();
    metrics::histogram!("keybound_exchange_seconds").record(elapsed.as_secs_f64());
    if let Some(key_id) = key_seen.get() {
        let status = match &result {
            Ok(_) => 200,
            Err(e) => i64::from(e.status().as_u16()),
        };
        state.usage.record(UsageEvent {
            key_id: key_id.clone(),
            at: crate::state::now(),
            endpoint: endpoint.into(),
            method: "POST".into(),
            status,
            latency_us: elapsed.as_micros() as i64,
            ip: Some(ip.to_string()),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(256).collect()),
        });
    }
    let mut res = match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => {
            if e.is_auth_failure() && state.failures.record_failure(&ip).await? {
                state.alerts.raise_once(
                    AlertKind::FailureBurst,
                    &ip.to_string(),
                    None,
                    Some(ip),
                    serde_json::json!({"budget_per_minute": state.settings.ip_failure_budget}),
                );
            }
            return Err(e);
        }
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if state.settings.require_dpop_nonce
        && let Ok(v) = HeaderValue::from_str(&state.nonces.issue(crate::state::now()))
    {
        // RFC 9449 section 8.2: hand out the next nonce with every success.
        h.insert("dpop-nonce", v);
    }
    Ok(res)
}
