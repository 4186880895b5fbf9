//! The admin API (contract 3.4), nested under `/admin/v1`.
//!
//! Every handler takes [`AdminAuth`] as its first extractor, so a request without the right
//! token is refused (401, or 404 while the admin API is off) before its path, query or body
//! is even looked at; the handlers never check the token again. The lifecycle logic lives in
//! [`service`], shared with the CLI, so both write the same audit rows; here each change is
//! attributed to `admin-api` and the client IP.
//!
//! Every response is `Cache-Control: no-store`: create and rotate carry a plaintext key, and
//! the rest is operator data no cache should keep either.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use axum::{Router, middleware};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{AdminAuth, ClientIp, Json, Query};
use crate::error::{Error, Result};
use crate::keys::KeyId;
use crate::keys::service::{self, Actor, KeyPatch, NewKey};
use crate::state::{AppState, now};
use crate::store::{AlertFilter, DeviceChange, DeviceRecord, DeviceStatus, KeyRecord, KeyStatus};

/// Page size when the client gives none.
const DEFAULT_LIMIT: i64 = 100;
/// Largest page a client may ask for.
const MAX_LIMIT: i64 = 1000;

type JsonResponse = axum::Json<Value>;

/// Admin routes, nested under `/admin/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/keys", post(create_key).get(list_keys))
        .route("/keys/{key_id}", get(show_key).patch(update_key))
        .route("/keys/{key_id}/revoke", status_route(KeyStatus::Revoked))
        .route("/keys/{key_id}/suspend", status_route(KeyStatus::Suspended))
        .route("/keys/{key_id}/resume", status_route(KeyStatus::Active))
        .route("/keys/{key_id}/rotate", post(rotate_key))
        .route("/keys/{key_id}/devices", get(list_devices))
        .route("/keys/{key_id}/usage", get(key_usage))
        .route(
            "/devices/{device_id}/revoke",
            device_route(DeviceChange::Revoke),
        )
        .route(
            "/devices/{device_id}/approve",
            device_route(DeviceChange::Approve),
        )
        .route("/audit", get(list_audit))
        .route("/alerts", get(list_alerts))
        // A wrong method is a 405 only for callers holding the token: without it the admin
        // API must look absent (404) or refuse (401), exactly as for a right method.
        .method_not_allowed_fallback(|_: AdminAuth| async { Error::MethodNotAllowed })
        .layer(middleware::map_response(no_store))
}

async fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn actor(ip: IpAddr) -> Actor {
    Actor::admin(Some(ip.to_string()))
}

/// `?limit=` within `1..=MAX_LIMIT`, `DEFAULT_LIMIT` when absent.
fn page_limit(limit: Option<i64>) -> Result<i64> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(_) => Err(Error::InvalidRequest(format!(
            "limit must be 1 to {MAX_LIMIT}"
        ))),
    }
}

/// Keeps the first `limit` items; the cursor for the next page when there were more.
/// Callers fetch `limit + 1` so that a last full page does not announce an empty one.
fn paginate<T, C>(mut items: Vec<T>, limit: i64, cursor: impl Fn(&T) -> C) -> (Vec<T>, Option<C>) {
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more { items.last().map(cursor) } else { None };
    (items, next)
}

// ---- keys ----

async fn create_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(new): Json<NewKey>,
) -> Result<(StatusCode, JsonResponse)> {
    let created = service::create(&*st.store, new, &actor(ip), now()).await?;
    Ok((StatusCode::CREATED, axum::Json(created.reveal())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysPage {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list_keys(
    _: AdminAuth,
    State(st): State<AppState>,
    Query(q): Query<KeysPage>,
) -> Result<JsonResponse> {
    let limit = page_limit(q.limit)?;
    if let Some(after) = &q.after
        && KeyId::parse(after).is_none()
    {
        return Err(Error::InvalidRequest(
            "after must be a key id (the `next` of the previous page)".into(),
        ));
    }
    let keys = st.store.list_keys(q.after.as_deref(), limit + 1).await?;
    let (keys, next) = paginate(keys, limit, |k: &KeyRecord| k.key_id.clone());
    Ok(axum::Json(json!({ "keys": keys, "next": next })))
}

async fn show_key(
    _: AdminAuth,
    State(st): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<axum::Json<KeyRecord>> {
    Ok(axum::Json(service::get(&*st.store, &key_id).await?))
}

async fn update_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(key_id): Path<String>,
    Json(patch): Json<KeyPatch>,
) -> Result<axum::Json<KeyRecord>> {
    let r = service::update(&*st.store, &key_id, patch, &actor(ip), now()).await?;
    Ok(axum::Json(r))
}

/// Body of `/revoke` (where `reason` is required), `/suspend` and `/resume` (where the body
/// may be empty).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The `POST` route that moves a key to `status`.
fn status_route(status: KeyStatus) -> MethodRouter<AppState> {
    post(
        move |_: AdminAuth,
              State(st): State<AppState>,
              ClientIp(ip): ClientIp,
              Path(key_id): Path<String>,
              Json(body): Json<StatusBody>| async move {
            if status == KeyStatus::Revoked && body.reason.is_none() {
                return Err(Error::InvalidRequest(
                    "reason is required to revoke a key".into(),
                ));
            }
            let reason = body.reason.as_deref();
            let r =
                service::set_status(&*st.store, &key_id, status, reason, &actor(ip), now()).await?;
            Ok::<_, Error>(axum::Json(r))
        },
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_seconds: Option<i64>,
}

async fn rotate_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(key_id): Path<String>,
    Json(body): Json<RotateBody>,
) -> Result<(StatusCode, JsonResponse)> {
    let grace = body.grace_seconds.unwrap_or(service::DEFAULT_GRACE_SECONDS);
    let created = service::rotate(&*st.store, &key_id, grace, &actor(ip), now()).await?;
    let old = service::get(&*st.store, &key_id).await?;
    let mut answer = created.reveal();
    if let Some(map) = answer.as_object_mut() {
        map.insert("old_key_expires_at".into(), json!(old.expires_at));
    }
    Ok((StatusCode::CREATED, axum::Json(answer)))
}

// ---- devices ----

async fn list_devices(
    _: AdminAuth,
    State(st): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<JsonResponse> {
    let devices = service::list_devices(&*st.store, &key_id).await?;
    Ok(axum::Json(json!({ "devices": devices })))
}

/// The `POST` route that revokes or approves a device.
fn device_route(change: DeviceChange) -> MethodRouter<AppState> {
    post(
        move |_: AdminAuth,
              State(st): State<AppState>,
              ClientIp(ip): ClientIp,
              Path(device_id): Path<String>| async move {
            let d = service::set_device_status(&*st.store, &device_id, change, &actor(ip), now())
                .await?;
            Ok::<_, Error>(axum::Json(d))
        },
    )
}

// ---- usage ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    /// `minute` (default) or `hour`.
    bucket: Option<String>,
    /// Unix seconds; default one hour (minute buckets) or one day (hour buckets) ago.
    since: Option<i64>,
}

/// How much a key is used: token requests per minute or hour (from the usage events, written
/// in batches, so up to a second behind), its devices and their exchanges, recent alerts.
async fn key_usage(
    _: AdminAuth,
    State(st): State<AppState>,
    Path(key_id): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<JsonResponse> {
    let key = service::get(&*st.store, &key_id).await?;
    let (bucket, span) = match q.bucket.as_deref() {
        None | Some("minute") => (60, 3_600),
        Some("hour") => (3_600, 86_400),
        Some(_) => {
            return Err(Error::InvalidRequest(
                "bucket must be minute or hour".into(),
            ));
        }
    };
    let buckets_since = q.since.unwrap_or_else(|| now() - span);
    let buckets = st
        .store
        .usage_summary(&key.key_id, bucket, buckets_since)
        .await?;
    let devices = st.store.list_devices(&key_id).await?;
    let since = now() - 86_400;
    let alerts = st
        .store
        .list_alerts(&AlertFilter {
            key_id: Some(key_id.clone()),
            since: Some(since),
            limit: MAX_LIMIT,
            ..AlertFilter::default()
        })
        .await?;
    let mut by_kind = std::collections::BTreeMap::<&str, u64>::new();
    for a in &alerts {
        *by_kind.entry(a.kind.as_str()).or_default() += 1;
    }
    let count = |f: &dyn Fn(&DeviceRecord) -> bool| devices.iter().filter(|d| f(d)).count();
    Ok(axum::Json(json!({
        "key_id": key.key_id,
        "status": key.status,
        "last_used_at": key.last_used_at,
        "rate_limit_per_minute": key.rate_limit_per_minute,
        "devices": {
            "total": devices.len(),
            "active": count(&|d| d.status == DeviceStatus::Active),
            "revoked": count(&|d| d.status == DeviceStatus::Revoked),
            "trusted": count(&|d| d.status == DeviceStatus::Active && d.trust_level == "trusted"),
            "max": key.max_devices,
        },
        "exchanges": devices.iter().map(|d| d.exchange_count).sum::<i64>(),
        "last_device_seen_at": devices.iter().map(|d| d.last_seen_at).max(),
        "alerts_last_24h": by_kind,
        "bucket_seconds": bucket,
        "since": buckets_since,
        "buckets": buckets,
    })))
}

// ---- audit log and alerts ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditPage {
    after: Option<i64>,
    limit: Option<i64>,
}

/// Audit rows with `seq > after`, oldest first, each with its `prev_hash` and `hash` so a
/// client can check the chain itself (see [`crate::audit`]).
async fn list_audit(
    _: AdminAuth,
    State(st): State<AppState>,
    Query(q): Query<AuditPage>,
) -> Result<JsonResponse> {
    let limit = page_limit(q.limit)?;
    let rows = st.store.list_audit(q.after.unwrap_or(0), limit + 1).await?;
    let (rows, next) = paginate(rows, limit, |r| r.seq);
    Ok(axum::Json(json!({ "entries": rows, "next": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    kind: Option<String>,
    key_id: Option<String>,
    since: Option<i64>,
    limit: Option<i64>,
}

/// Alerts, newest first, filtered by kind, key and time.
async fn list_alerts(
    _: AdminAuth,
    State(st): State<AppState>,
    Query(q): Query<AlertsQuery>,
) -> Result<JsonResponse> {
    let filter = AlertFilter {
        kind: q.kind,
        key_id: q.key_id,
        since: q.since,
        limit: page_limit(q.limit)?,
    };
    let alerts = st.store.list_alerts(&filter).await?;
    Ok(axum::Json(json!({ "alerts": alerts })))
}
