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
use axum::routing::{get, post};
use axum::{Router, middleware};
use serde::Deserialize;

use utoipa::{IntoParams, ToSchema};

use super::envelope::{AdminErrors, BodyErrors, ErrorBody};
use super::extract::{AdminAuth, ClientIp, Json, Query};
use crate::clock::now;
use crate::devices::TrustLevel;
use crate::error::{Error, Result};
use crate::keys::KeyId;
use crate::keys::service::{self, Actor, KeyPatch, NewKey};
use crate::state::AppState;
use crate::store::{AlertFilter, DeviceChange, DeviceRecord, DeviceStatus, KeyRecord, KeyStatus};

/// Page size when the client gives none.
const DEFAULT_LIMIT: i64 = 100;
/// Largest page a client may ask for.
const MAX_LIMIT: i64 = 1000;

/// Admin routes, nested under `/admin/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/keys", post(create_key).get(list_keys))
        .route("/keys/{key_id}", get(show_key).patch(update_key))
        .route("/keys/{key_id}/revoke", post(revoke_key))
        .route("/keys/{key_id}/suspend", post(suspend_key))
        .route("/keys/{key_id}/resume", post(resume_key))
        .route("/keys/{key_id}/rotate", post(rotate_key))
        .route("/keys/{key_id}/devices", get(list_devices))
        .route("/keys/{key_id}/usage", get(key_usage))
        .route("/devices/{device_id}/revoke", post(revoke_device))
        .route("/devices/{device_id}/approve", post(approve_device))
        .route("/audit", get(list_audit))
        .route("/alerts", get(list_alerts))
        // A wrong method is a 405 only for callers holding the token: without it the admin
        // API must look absent (404) or refuse (401), exactly as for a right method.
        .method_not_allowed_fallback(|_: AdminAuth| async { Error::MethodNotAllowed })
        .layer(middleware::map_response(no_store))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_key,
    list_keys,
    show_key,
    update_key,
    revoke_key,
    suspend_key,
    resume_key,
    rotate_key,
    list_devices,
    key_usage,
    revoke_device,
    approve_device,
    list_audit,
    list_alerts
))]
pub(super) struct Doc;

/// The request and answer bodies: what the handlers read and return is what the OpenAPI
/// document describes.
mod bodies {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use utoipa::ToSchema;

    use crate::ids::KeyId;
    use crate::store::{AlertRecord, AuditRow, DeviceRecord, KeyRecord, KeyStatus, UsageBucket};

    /// A created or rotated key: its record and the plaintext, shown this once.
    #[derive(Serialize, ToSchema)]
    pub struct CreatedKey {
        #[schema(inline)]
        #[serde(flatten)]
        pub record: KeyRecord,
        /// The plaintext key. It is never shown again.
        pub key: String,
    }

    /// A rotated key: the new key, and when the old one stops working.
    #[derive(Serialize, ToSchema)]
    pub struct RotatedKey {
        #[schema(inline)]
        #[serde(flatten)]
        pub record: KeyRecord,
        /// The new plaintext key. It is never shown again.
        pub key: String,
        /// When the old key stops working (the end of the grace period).
        pub old_key_expires_at: Option<i64>,
    }

    /// Body of `/revoke`: unlike `/suspend` and `/resume`, a reason is required.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RevokeBody {
        /// Why (kept in the audit log).
        // Read as optional, documented as required: the handler refuses a missing (or
        // `null`) reason with the contract's message rather than serde's `missing field`.
        #[serde(default)]
        #[schema(value_type = String, required = true, min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
        pub reason: Option<String>,
    }

    /// Body of `/suspend` and `/resume`; may be empty.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct StatusBody {
        /// Why (kept in the audit log).
        #[serde(default)]
        #[schema(
            min_length = 1,
            max_length = 256,
            pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
        )]
        pub reason: Option<String>,
    }

    /// A page of keys, ordered by id.
    #[derive(Serialize, ToSchema)]
    pub struct KeysPage {
        pub keys: Vec<KeyRecord>,
        /// Pass as `after` for the next page; `null` on the last page.
        pub next: Option<KeyId>,
    }

    /// A key's devices, oldest first.
    #[derive(Serialize, ToSchema)]
    pub struct DeviceList {
        pub devices: Vec<DeviceRecord>,
    }

    /// A page of the audit log, oldest first.
    #[derive(Serialize, ToSchema)]
    pub struct AuditPage {
        pub entries: Vec<AuditRow>,
        /// Pass as `after` for the next page; `null` on the last page.
        pub next: Option<i64>,
    }

    /// Alerts, newest first.
    #[derive(Serialize, ToSchema)]
    pub struct AlertList {
        pub alerts: Vec<AlertRecord>,
        /// Pass as `after` for the next page; `null` on the last page.
        pub next: Option<String>,
    }

    /// The size of a usage bucket.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum BucketSize {
        /// Per minute, for the last hour by default.
        Minute,
        /// Per hour, for the last day by default.
        Hour,
    }

    impl BucketSize {
        /// `?bucket=` as given (`minute` when absent). Read from text by the handler rather
        /// than by serde, so that another value gets the API's own message.
        pub fn parse(bucket: Option<&str>) -> crate::error::Result<BucketSize> {
            match bucket {
                None | Some("minute") => Ok(BucketSize::Minute),
                Some("hour") => Ok(BucketSize::Hour),
                Some(_) => Err(crate::error::Error::InvalidRequest(
                    "bucket must be minute or hour".into(),
                )),
            }
        }

        /// The bucket's length and the default span of a report, in seconds.
        pub fn seconds_and_span(self) -> (i64, i64) {
            match self {
                BucketSize::Minute => (60, 3_600),
                BucketSize::Hour => (3_600, 86_400),
            }
        }
    }

    /// Device counts of a key.
    #[derive(Serialize, ToSchema)]
    pub struct DeviceCounts {
        pub total: u64,
        pub active: u64,
        pub revoked: u64,
        pub trusted: u64,
        /// The key's `max_devices`.
        pub max: i64,
    }

    /// How much a key is used.
    #[derive(Serialize, ToSchema)]
    pub struct KeyUsage {
        pub key_id: KeyId,
        pub status: KeyStatus,
        pub last_used_at: Option<i64>,
        pub rate_limit_per_minute: i64,
        pub devices: DeviceCounts,
        /// Successful exchanges by all its devices.
        pub exchanges: i64,
        pub last_device_seen_at: Option<i64>,
        /// Alerts of the last 24 hours by kind.
        pub alerts_last_24h: BTreeMap<String, u64>,
        pub bucket_seconds: i64,
        pub since: i64,
        pub buckets: Vec<UsageBucket>,
    }
}

use bodies::*;

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

/// Creates a key; the answer carries its plaintext, the only time it is shown.
#[utoipa::path(post, path = "/admin/v1/keys", tag = "admin", security(("admin_token" = [])),
    request_body(content = NewKey, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = CreatedKey),
        BodyErrors,
        AdminErrors,
    ))]
async fn create_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(new): Json<NewKey>,
) -> Result<(StatusCode, axum::Json<CreatedKey>)> {
    let created = service::create(&*st.store, new, &actor(ip), now()).await?;
    let key = created.key.expose().to_owned();
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            record: created.record,
            key,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct KeysQuery {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` of the previous page.
    #[param(pattern = "^ak_(prod|test|dev)_[0-9A-Za-z]{12}$")]
    after: Option<String>,
}

/// Lists keys by id, a page at a time. Never a secret or a hash.
#[utoipa::path(get, path = "/admin/v1/keys", tag = "admin", security(("admin_token" = [])),
    params(KeysQuery),
    responses(
        (status = 200, description = "A page of keys.", body = KeysPage),
        (status = 400, description = "`INVALID_REQUEST`: bad `limit` or `after`; `API_KEY_IN_URL`.",
         body = ErrorBody),
        AdminErrors,
    ))]
async fn list_keys(
    _: AdminAuth,
    State(st): State<AppState>,
    Query(q): Query<KeysQuery>,
) -> Result<axum::Json<KeysPage>> {
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
    Ok(axum::Json(KeysPage { keys, next }))
}

/// One key. Never a secret or a hash.
#[utoipa::path(get, path = "/admin/v1/keys/{key_id}", tag = "admin", security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`")),
    responses(
        (status = 200, description = "The key.", body = KeyRecord),
        AdminErrors,
    ))]
async fn show_key(
    _: AdminAuth,
    State(st): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<axum::Json<KeyRecord>> {
    Ok(axum::Json(service::get(&*st.store, &key_id).await?))
}

/// Updates a key's metadata and limits; `null` clears `description`, `limited_scopes` and
/// `expires_at`.
#[utoipa::path(patch, path = "/admin/v1/keys/{key_id}", tag = "admin", security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`")),
    request_body(content = Option<KeyPatch>, description = "An empty body changes nothing.",
                 content_type = "application/json"),
    responses(
        (status = 200, description = "The updated key.", body = KeyRecord),
        BodyErrors,
        AdminErrors,
    ))]
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

/// Revokes a key for good; in force on every instance within 1 s.
#[utoipa::path(post, path = "/admin/v1/keys/{key_id}/revoke", tag = "admin",
    security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`")),
    request_body(content = RevokeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The revoked key.", body = KeyRecord),
        BodyErrors,
        AdminErrors,
    ))]
async fn revoke_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(key_id): Path<String>,
    Json(body): Json<RevokeBody>,
) -> Result<axum::Json<KeyRecord>> {
    let Some(reason) = body.reason else {
        return Err(Error::InvalidRequest(
            "reason is required to revoke a key".into(),
        ));
    };
    change_status(&st, ip, &key_id, KeyStatus::Revoked, Some(&reason)).await
}

/// Suspends a key until it is resumed; in force on every instance within 1 s.
#[utoipa::path(post, path = "/admin/v1/keys/{key_id}/suspend", tag = "admin",
    security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`")),
    request_body(content = Option<StatusBody>, description = "May be empty.", content_type = "application/json"),
    responses(
        (status = 200, description = "The suspended key.", body = KeyRecord),
        BodyErrors,
        AdminErrors,
    ))]
async fn suspend_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(key_id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Result<axum::Json<KeyRecord>> {
    change_status(
        &st,
        ip,
        &key_id,
        KeyStatus::Suspended,
        body.reason.as_deref(),
    )
    .await
}

/// Makes a suspended key usable again.
#[utoipa::path(post, path = "/admin/v1/keys/{key_id}/resume", tag = "admin",
    security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`")),
    request_body(content = Option<StatusBody>, description = "May be empty.", content_type = "application/json"),
    responses(
        (status = 200, description = "The resumed key.", body = KeyRecord),
        BodyErrors,
        AdminErrors,
    ))]
async fn resume_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(key_id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Result<axum::Json<KeyRecord>> {
    change_status(&st, ip, &key_id, KeyStatus::Active, body.reason.as_deref()).await
}

/// Moves a key to `status` on behalf of the admin API caller at `ip`.
async fn change_status(
    st: &AppState,
    ip: IpAddr,
    key_id: &str,
    status: KeyStatus,
    reason: Option<&str>,
) -> Result<axum::Json<KeyRecord>> {
    let r = service::set_status(&*st.store, key_id, status, reason, &actor(ip), now()).await?;
    Ok(axum::Json(r))
}

/// Body of `/rotate`; may be empty.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// Seconds the old key keeps working (default 86400).
    #[serde(default, deserialize_with = "service::integer::opt")]
    #[schema(minimum = 0, maximum = 31536000)]
    grace_seconds: Option<i64>,
}

/// Issues a new key (new id, same settings); the old one works until the grace period ends.
/// A suspended key can be rotated too (recovery from a leak): it stays suspended.
#[utoipa::path(post, path = "/admin/v1/keys/{key_id}/rotate", tag = "admin",
    security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`")),
    request_body(content = Option<RotateBody>, description = "May be empty.", content_type = "application/json"),
    responses(
        (status = 201, description = "The new key, with its plaintext shown this once.", body = RotatedKey),
        BodyErrors,
        AdminErrors,
    ))]
async fn rotate_key(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(key_id): Path<String>,
    Json(body): Json<RotateBody>,
) -> Result<(StatusCode, axum::Json<RotatedKey>)> {
    let grace = body.grace_seconds.unwrap_or(service::DEFAULT_GRACE_SECONDS);
    let created = service::rotate(&*st.store, &key_id, grace, &actor(ip), now()).await?;
    let old = service::get(&*st.store, &key_id).await?;
    let key = created.key.expose().to_owned();
    Ok((
        StatusCode::CREATED,
        axum::Json(RotatedKey {
            record: created.record,
            key,
            old_key_expires_at: old.expires_at,
        }),
    ))
}

// ---- devices ----

/// A key's devices, oldest first.
#[utoipa::path(get, path = "/admin/v1/keys/{key_id}/devices", tag = "admin",
    security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`")),
    responses(
        (status = 200, description = "The devices.", body = DeviceList),
        AdminErrors,
    ))]
async fn list_devices(
    _: AdminAuth,
    State(st): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<axum::Json<DeviceList>> {
    // This instance's batched device history first, so an operator sees every exchange it
    // answered (`AppState::record_device`).
    st.flush_devices().await;
    let devices = service::list_devices(&*st.store, &key_id).await?;
    Ok(axum::Json(DeviceList { devices }))
}

/// Revokes a device; in force on every instance within 1 s.
#[utoipa::path(post, path = "/admin/v1/devices/{device_id}/revoke", tag = "admin",
    security(("admin_token" = [])),
    params(("device_id" = String, Path, description = "`dev_…`")),
    responses(
        (status = 200, description = "The revoked device.", body = DeviceRecord),
        AdminErrors,
    ))]
async fn revoke_device(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(device_id): Path<String>,
) -> Result<axum::Json<DeviceRecord>> {
    change_device(&st, ip, &device_id, DeviceChange::Revoke).await
}

/// Approves a device: it becomes `trusted` (unless its stable attributes change).
#[utoipa::path(post, path = "/admin/v1/devices/{device_id}/approve", tag = "admin",
    security(("admin_token" = [])),
    params(("device_id" = String, Path, description = "`dev_…`")),
    responses(
        (status = 200, description = "The approved device.", body = DeviceRecord),
        AdminErrors,
    ))]
async fn approve_device(
    _: AdminAuth,
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(device_id): Path<String>,
) -> Result<axum::Json<DeviceRecord>> {
    change_device(&st, ip, &device_id, DeviceChange::Approve).await
}

/// Applies `change` to a device on behalf of the admin API caller at `ip`.
async fn change_device(
    st: &AppState,
    ip: IpAddr,
    device_id: &str,
    change: DeviceChange,
) -> Result<axum::Json<DeviceRecord>> {
    // History queued before the change is written first, and none queued since is kept: an
    // approval resets the fingerprint baseline, which a later flush of history read before it
    // must not put back.
    st.flush_devices().await;
    let d = service::set_device_status(&*st.store, device_id, change, &actor(ip), now()).await?;
    st.forget_device_history(&d.device_id);
    Ok(axum::Json(d))
}

// ---- usage ----

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// `minute` (default) or `hour`.
    #[param(inline, value_type = Option<BucketSize>)]
    bucket: Option<String>,
    /// Unix seconds; default one hour (minute buckets) or one day (hour buckets) ago.
    since: Option<i64>,
}

/// How much a key is used: token requests per minute or hour (per-minute totals; this
/// instance's are written first, another instance's up to a second behind; `since` counts from
/// the start of its minute), its devices and their exchanges, recent alerts.
#[utoipa::path(get, path = "/admin/v1/keys/{key_id}/usage", tag = "admin",
    security(("admin_token" = [])),
    params(("key_id" = String, Path, description = "`ak_<env>_<id>`"), UsageQuery),
    responses(
        (status = 200, description = "The key's usage.", body = KeyUsage),
        (status = 400, description = "`INVALID_REQUEST`: bad `bucket` or `since`; `API_KEY_IN_URL`.",
         body = ErrorBody),
        AdminErrors,
    ))]
async fn key_usage(
    _: AdminAuth,
    State(st): State<AppState>,
    Path(key_id): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<axum::Json<KeyUsage>> {
    let key = service::get(&*st.store, &key_id).await?;
    let (bucket, span) = BucketSize::parse(q.bucket.as_deref())?.seconds_and_span();
    let buckets_since = q.since.unwrap_or_else(|| now() - span);
    st.usage.flush(&*st.store).await;
    let buckets = st
        .store
        .usage_summary(&key.key_id, bucket, buckets_since)
        .await?;
    st.flush_devices().await;
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
    let mut by_kind = std::collections::BTreeMap::<String, u64>::new();
    for a in alerts {
        *by_kind.entry(a.kind).or_default() += 1;
    }
    let count = |f: &dyn Fn(&DeviceRecord) -> bool| devices.iter().filter(|d| f(d)).count() as u64;
    Ok(axum::Json(KeyUsage {
        status: key.status,
        last_used_at: key.last_used_at,
        rate_limit_per_minute: key.rate_limit_per_minute,
        devices: DeviceCounts {
            total: devices.len() as u64,
            active: count(&|d| d.status == DeviceStatus::Active),
            revoked: count(&|d| d.status == DeviceStatus::Revoked),
            trusted: count(&|d| {
                d.status == DeviceStatus::Active && d.trust_level == TrustLevel::Trusted
            }),
            max: key.max_devices,
        },
        exchanges: devices.iter().map(|d| d.exchange_count).sum::<i64>(),
        last_device_seen_at: devices.iter().map(|d| d.last_seen_at).max(),
        alerts_last_24h: by_kind,
        bucket_seconds: bucket,
        since: buckets_since,
        buckets,
        key_id: key.key_id,
    }))
}

// ---- audit log and alerts ----

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Rows after this `seq` (the `next` of the previous page).
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Audit rows with `seq > after`, oldest first, each with its `prev_hash` and `hash` so a
/// client can check the chain itself (see [`crate::audit`]).
#[utoipa::path(get, path = "/admin/v1/audit", tag = "admin", security(("admin_token" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of the audit log.", body = AuditPage),
        (status = 400, description = "`INVALID_REQUEST`: bad `after` or `limit`; `API_KEY_IN_URL`.",
         body = ErrorBody),
        AdminErrors,
    ))]
async fn list_audit(
    _: AdminAuth,
    State(st): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<AuditPage>> {
    let limit = page_limit(q.limit)?;
    let rows = st.store.list_audit(q.after.unwrap_or(0), limit + 1).await?;
    let (rows, next) = paginate(rows, limit, |r| r.seq);
    Ok(axum::Json(AuditPage {
        entries: rows,
        next,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AlertsQuery {
    /// Only this kind, e.g. `NEW_DEVICE`.
    kind: Option<String>,
    /// Only this key.
    key_id: Option<String>,
    /// Only alerts at or after this time (unix seconds).
    since: Option<i64>,
    /// The previous page's `next`: only alerts older than that one.
    after: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Alerts, newest first, filtered by kind, key and time, a page at a time (pass `next` as
/// `after` until it is `null`).
#[utoipa::path(get, path = "/admin/v1/alerts", tag = "admin", security(("admin_token" = [])),
    params(AlertsQuery),
    responses(
        (status = 200, description = "The alerts.", body = AlertList),
        (status = 400, description = "`INVALID_REQUEST`: bad query; `API_KEY_IN_URL`.", body = ErrorBody),
        AdminErrors,
    ))]
async fn list_alerts(
    _: AdminAuth,
    State(st): State<AppState>,
    Query(q): Query<AlertsQuery>,
) -> Result<axum::Json<AlertList>> {
    let limit = page_limit(q.limit)?;
    let filter = AlertFilter {
        kind: q.kind,
        key_id: q.key_id,
        since: q.since,
        limit: limit + 1,
        after: q.after,
    };
    let alerts = st.store.list_alerts(&filter).await?;
    let (alerts, next) = paginate(alerts, limit, |a| a.id.clone());
    Ok(axum::Json(AlertList { alerts, next }))
}
