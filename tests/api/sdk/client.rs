//! `keybound_sdk::Client` against the real server: renewal before expiry, one exchange for
//! many callers, waiting out `Retry-After`, the DPoP nonce dance, and refusals arriving as
//! their own error kinds without retries.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keybound_sdk::{Ed25519DeviceKey, ErrorKind, RetryPolicy};
use reqwest::StatusCode;
use serde_json::json;

use super::{claims, client_for, create_key, devices, exchange, key_id};
use crate::helpers::{TestDb, expect_error, spawn_app, spawn_app_args};
use crate::on_both_backends;

on_both_backends!(
    token_is_refreshed_before_it_expires,
    concurrent_callers_share_one_exchange,
    a_429_is_waited_out_for_its_retry_after,
    a_retry_after_beyond_the_policy_is_returned_not_slept,
    each_refusal_has_its_own_error_kind_and_is_not_retried,
    a_demanded_nonce_is_taken_and_retried_once,
);

fn new_device() -> Arc<Ed25519DeviceKey> {
    Arc::new(Ed25519DeviceKey::generate())
}

/// 5 s tokens: from memory up to 80 % of their life, then a refresh (not a new exchange: the
/// key allows one exchange a minute) for the same device, before the old token expires.
async fn token_is_refreshed_before_it_expires(db: TestDb) {
    let app = spawn_app_args(&db, |a| a.access_ttl_seconds = 5).await;
    let key = create_key(&app, json!({"rate_limit_per_minute": 1})).await;
    let client = client_for(&app, &key, new_device())
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();

    let started = Instant::now();
    let first = client.token().await.unwrap();
    tokio::time::sleep_until((started + Duration::from_secs(3)).into()).await;
    let early = client.token().await.unwrap();
    tokio::time::sleep_until((started + Duration::from_millis(4300)).into()).await;
    let asked_at = SystemTime::now();
    let renewed = client.token().await.unwrap();

    assert_eq!(
        early.expose_secret(),
        first.expose_secret(),
        "with 40 % of its life left the token comes from memory"
    );
    assert_ne!(
        renewed.expose_secret(),
        first.expose_secret(),
        "with less than 20 % left it is renewed"
    );
    assert!(asked_at < first.expires_at(), "renewed before expiry");
    let (old, new) = (
        claims(first.expose_secret()),
        claims(renewed.expose_secret()),
    );
    assert_ne!(old["jti"], new["jti"]);
    assert_eq!(old["did"], new["did"], "same device");
    assert_eq!(old["cnf"], new["cnf"], "bound to the same device key");
    assert_eq!(renewed.device_id(), first.device_id());
    let devices = devices(&app, key_id(&key)).await;
    assert_eq!(devices.len(), 1);
    // Two tokens (the exchange and one refresh), but refreshes do not count towards earned
    // trust (issue 17): one exchange recorded.
    assert_eq!(
        devices[0]["exchange_count"], 1,
        "only the exchange is counted"
    );
}

/// 100 tasks ask at once: one exchange. The key allows one a minute, so a second exchange
/// would have been refused (and with no retries, surfaced as an error).
async fn concurrent_callers_share_one_exchange(db: TestDb) {
    let app = spawn_app(&db).await;
    let key = create_key(&app, json!({"rate_limit_per_minute": 1})).await;
    let client = client_for(&app, &key, new_device())
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();

    let callers: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.token().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().expect("every caller gets the token"));
    }

    assert!(
        tokens
            .iter()
            .all(|t| t.expose_secret() == tokens[0].expose_secret()),
        "every caller got the same token"
    );
    let devices = devices(&app, key_id(&key)).await;
    assert_eq!(devices.len(), 1);
    assert_eq!(
        devices[0]["exchange_count"], 1,
        "one exchange on the server"
    );
}

/// A key of 6 a minute spends its whole minute in a burst, then gets one request every 10 s:
/// the client's exchange is refused with a `Retry-After` of up to 10 s and succeeds on a later
/// attempt. With a 10 ms backoff that is only possible if it waited out the header. (A slower
/// refill than 1/s, so a slow, loaded machine cannot refill the bucket before the client asks.)
async fn a_429_is_waited_out_for_its_retry_after(db: TestDb) {
    let app = spawn_app(&db).await;
    let key = create_key(&app, json!({"rate_limit_per_minute": 6})).await;
    let other = Ed25519DeviceKey::generate();
    let mut spent = false;
    for _ in 0..120 {
        let res = exchange(&app, &key, &other, None).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=10).contains(&wait), "Retry-After {wait}");
            spent = true;
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert!(spent, "the key's allowance is spent");

    let client = client_for(&app, &key, new_device())
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let token = client.token().await;

    token.expect("the attempt after Retry-After succeeds");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}, not the 1 s the server asked for",
        started.elapsed()
    );
}

/// With one exchange a minute, a second device is told to wait about a minute. That is more
/// than the policy waits by itself, so the client answers at once with the wait.
async fn a_retry_after_beyond_the_policy_is_returned_not_slept(db: TestDb) {
    let app = spawn_app(&db).await;
    let key = create_key(&app, json!({"rate_limit_per_minute": 1})).await;
    let policy = RetryPolicy::default().max_retry_after(Duration::from_secs(5));
    let first = client_for(&app, &key, new_device())
        .retry_policy(policy.clone())
        .build()
        .unwrap();
    first.token().await.expect("the minute's one exchange");

    let second = client_for(&app, &key, new_device())
        .retry_policy(policy)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = second.token().await.unwrap_err();

    assert!(started.elapsed() < Duration::from_secs(2), "not slept");
    assert_eq!(err.status(), Some(429));
    match err.kind() {
        ErrorKind::RateLimited {
            retry_after: Some(wait),
        } => assert!(
            (Duration::from_secs(5)..=Duration::from_secs(60)).contains(wait),
            "Retry-After {wait:?}"
        ),
        other => panic!("expected RateLimited with the server's wait, got {other:?}"),
    }
}

/// Each refusal arrives as its own kind, straight away: the policy would wait 2 s before a
/// retry, so an answer within 1 s means no retry was made.
async fn each_refusal_has_its_own_error_kind_and_is_not_retried(db: TestDb) {
    let app = spawn_app(&db).await;
    let slow_retries = RetryPolicy::default().initial_backoff(Duration::from_secs(4));

    let revoked = create_key(&app, json!({})).await;
    let res = app
        .admin_post(
            &format!("/keys/{}/revoke", key_id(&revoked)),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let suspended = create_key(&app, json!({})).await;
    let res = app
        .admin_post(&format!("/keys/{}/suspend", key_id(&suspended)), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let one_device = create_key(&app, json!({"max_devices": 1})).await;
    let enrolled = client_for(&app, &one_device, new_device()).build().unwrap();
    enrolled.token().await.expect("the key's one device");

    let key = create_key(&app, json!({})).await;
    let device = new_device();
    let token = client_for(&app, &key, device.clone())
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();
    let res = app
        .admin_post(&format!("/devices/{}/revoke", token.device_id()), json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);

    let cases = [
        (
            "a revoked key",
            client_for(&app, &revoked, new_device()),
            ErrorKind::InvalidApiKey,
        ),
        (
            "a suspended key",
            client_for(&app, &suspended, new_device()),
            ErrorKind::InvalidApiKey,
        ),
        (
            "a revoked device",
            client_for(&app, &key, device),
            ErrorKind::DeviceRevoked,
        ),
        (
            "a device beyond max_devices",
            client_for(&app, &one_device, new_device()),
            ErrorKind::DeviceLimitReached,
        ),
        (
            "a scope the key lacks",
            client_for(&app, &key, new_device()).scope("admin:everything"),
            ErrorKind::InsufficientScope,
        ),
        (
            "an audience the server does not serve",
            client_for(&app, &key, new_device()).audience("https://elsewhere.example"),
            ErrorKind::InvalidAudience,
        ),
    ];
    for (why, builder, kind) in cases {
        let client = builder.retry_policy(slow_retries.clone()).build().unwrap();
        let started = Instant::now();
        let err = client.token().await.expect_err(why);
        assert_eq!(err.kind(), &kind, "{why}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{why}: answered after {:?}, so it was retried",
            started.elapsed()
        );
    }
}

/// With `--require-dpop-nonce` the first proof is refused with a nonce; the client retries
/// once with it, even with retries off (it is the server's request, not a failure), and
/// keeps it for the refresh, which demands one too.
async fn a_demanded_nonce_is_taken_and_retried_once(db: TestDb) {
    let app = spawn_app_args(&db, |a| {
        a.require_dpop_nonce = true;
        a.access_ttl_seconds = 5;
    })
    .await;
    let key = create_key(&app, json!({})).await;
    let device = new_device();
    let res = exchange(&app, &key, &*device, None).await;
    assert!(res.headers().contains_key("dpop-nonce"));
    expect_error(
        res,
        StatusCode::BAD_REQUEST,
        "USE_DPOP_NONCE",
        "the server demands a nonce",
    )
    .await;

    let client = client_for(&app, &key, new_device())
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    let started = Instant::now();
    let first = client.token().await.expect("the retry with the nonce");
    tokio::time::sleep_until((started + Duration::from_millis(4300)).into()).await;
    let renewed = client.token().await.expect("a refresh with a nonce");

    assert_ne!(renewed.expose_secret(), first.expose_secret());
    assert_eq!(renewed.device_id(), first.device_id());
    let devices = devices(&app, key_id(&key)).await;
    assert_eq!(devices.len(), 1, "the nonce-less proof enrolled nothing");
    // An exchange and a refresh; refreshes do not count towards earned trust (issue 17).
    assert_eq!(devices[0]["exchange_count"], 1, "an exchange and a refresh");
}
