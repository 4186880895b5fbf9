//! Brute force, allow lists and the client IP (contract sections 1 and 5): each defence shown
//! working, and failing for the right reason.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestDb, expect_error, expect_json, spawn_app_args};
use crate::proofs::Device;
use crate::token::{exchange, new_key};

/// An exchange from `ip`, as a trusted proxy on loopback reports it in `X-Forwarded-For`.
async fn exchange_from(
    app: &crate::helpers::TestApp,
    ip: &str,
    key: &str,
    dev: &Device,
) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token"))
        .header("X-API-Key", key)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .header("X-Forwarded-For", ip)
        .send()
        .await
        .unwrap()
}

/// A refresh from `ip`, as a trusted proxy on loopback reports it.
async fn refresh_from(
    app: &crate::helpers::TestApp,
    ip: &str,
    dev: &Device,
    token: &str,
) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token/refresh"))
        .header("DPoP", dev.proof("POST", &app.url("/v1/token/refresh")))
        .header("X-Forwarded-For", ip)
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

/// A guess at a made-up key from `ip`, which must be a plain failure (401).
async fn guess_from(app: &crate::helpers::TestApp, ip: &str, dev: &Device, why: &str) {
    let guess = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
    expect_error(
        exchange_from(app, ip, guess.expose(), dev).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        why,
    )
    .await;
}

/// Contract section 1: "once an IP has N failures within a minute, its next request to a
/// token endpoint gets 429, whatever it carries".
#[tokio::test]
async fn brute_force_from_one_ip_is_cut_off_while_another_ip_keeps_working() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        a.ip_failure_budget = 5;
    })
    .await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let attacker = "203.0.113.7";
    // A session the address held before the attack.
    let session = expect_json(
        exchange_from(&app, attacker, &key, &dev).await,
        StatusCode::OK,
    )
    .await;
    let refresh_token = session["refresh_token"].as_str().unwrap();
    for i in 0..5 {
        guess_from(
            &app,
            attacker,
            &dev,
            &format!("guess {i} is a plain failure"),
        )
        .await;
    }
    // Five failures spend the budget of 5: the very next request is refused, the right key too.
    let res = exchange_from(&app, attacker, &key, &dev).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "the valid key from the address after its 5 failures",
    )
    .await;
    let res = refresh_from(&app, attacker, &dev, refresh_token).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "a refresh from the address after its 5 failures",
    )
    .await;
    crate::alerts::wait_for_alert(&app, "FAILURE_BURST").await;
    // Another IP is unaffected.
    expect_json(
        exchange_from(&app, "198.51.100.20", &key, &dev).await,
        StatusCode::OK,
    )
    .await;
}

/// IPv6 clients share a budget per /64 (`--ipv6-budget-prefix`), or one host would have 2^64
/// fresh budgets; an IPv4-mapped address is its IPv4 address for the budget, the trusted
/// proxies and the allow lists.
#[tokio::test]
async fn ipv6_clients_share_a_budget_per_prefix_and_mapped_addresses_are_ipv4() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        // The loopback proxy written as a mapped network: it must still be trusted.
        a.trusted_proxy = vec!["::ffff:127.0.0.0/104".parse().unwrap()];
        a.ip_failure_budget = 2;
    })
    .await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    guess_from(&app, "2001:db8:1:2::1", &dev, "first address of the /64").await;
    guess_from(
        &app,
        "2001:db8:1:2:ffff::2",
        &dev,
        "second address of the /64",
    )
    .await;
    expect_error(
        exchange_from(&app, "2001:db8:1:2::3", &key, &dev).await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "a third address of the same /64",
    )
    .await;
    expect_json(
        exchange_from(&app, "2001:db8:1:3::1", &key, &dev).await,
        StatusCode::OK,
    )
    .await;

    guess_from(&app, "::ffff:192.0.2.5", &dev, "mapped form").await;
    guess_from(&app, "192.0.2.5", &dev, "plain form").await;
    expect_error(
        exchange_from(&app, "::ffff:192.0.2.5", &key, &dev).await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "the mapped and the plain address share one budget",
    )
    .await;

    let (listed, _) = new_key(&app, json!({"allowed_ips": ["10.0.0.0/8"]})).await;
    expect_json(
        exchange_from(&app, "::ffff:10.0.0.5", &listed, &dev).await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        exchange_from(&app, "::ffff:11.0.0.5", &listed, &dev).await,
        StatusCode::FORBIDDEN,
        "IP_NOT_ALLOWED",
        "a mapped address outside the list",
    )
    .await;
}

/// One unauthenticated request with 200 forged, checksum-valid keys in its query used to cost
/// 200 storage reads and store 200 critical alerts naming ids of the attacker's choice. Now
/// the guard looks at the first key only, names no id it could not verify, reports look-alikes
/// once per address a minute, and counts them against the address's failure budget.
#[tokio::test]
async fn a_url_full_of_forged_keys_costs_one_check_one_alert_and_spends_the_budget() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        a.ip_failure_budget = 2;
    })
    .await;
    let (key, _) = new_key(&app, json!({})).await;
    let attacker = "203.0.113.44";
    let forged_url = || {
        let query: Vec<String> = (0..200)
            .map(|i| {
                let k = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Prod);
                format!("k{i}={}", k.expose())
            })
            .collect();
        app.url(&format!("/healthz?{}", query.join("&")))
    };
    for i in 0..2 {
        let res = app
            .client
            .get(forged_url())
            .header("X-Forwarded-For", attacker)
            .send()
            .await
            .unwrap();
        expect_error(
            res,
            StatusCode::BAD_REQUEST,
            "API_KEY_IN_URL",
            &format!("forged keys in the URL ({i})"),
        )
        .await;
    }
    let alert = crate::alerts::wait_for_alert(&app, "KEY_IN_URL").await;
    assert_eq!(alert["key_id"], serde_json::Value::Null, "{alert}");
    assert_eq!(alert["details"]["secret_verified"], false);
    assert_eq!(alert["ip"], attacker);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let alerts = expect_json(
        app.admin_get("/alerts?kind=KEY_IN_URL&limit=1000").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        alerts["alerts"].as_array().unwrap().len(),
        1,
        "400 forged keys in two requests: one alert: {alerts}"
    );
    // Each request was one failed authentication: the budget of 2 is spent.
    expect_error(
        exchange_from(&app, attacker, &key, &Device::new()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "the address after two URLs of forged keys",
    )
    .await;
}

/// Keys in path segments are caught too, and the URL's key is checked by the same key check
/// as the token endpoint's (its wrong secrets spend the id's failure budget). The alert names
/// a key only when its secret verified, and never carries a path that held a key.
#[tokio::test]
async fn keys_in_paths_are_refused_and_checked_like_any_presented_key() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        a.key_failure_budget = 2;
    })
    .await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let get_from = |ip: &'static str, path: String| {
        app.client
            .get(app.url(&path))
            .header("X-Forwarded-For", ip)
            .send()
    };
    expect_error(
        get_from("198.51.100.1", format!("/v1/revocations/{key}"))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "API_KEY_IN_URL",
        "the real key as a path segment",
    )
    .await;
    let alert = crate::alerts::wait_for_alert(&app, "KEY_IN_URL").await;
    assert_eq!(alert["key_id"], key_id);
    assert_eq!(alert["details"]["secret_verified"], true);
    assert_eq!(alert["details"]["in"], "path");
    assert_eq!(alert["details"]["path"], serde_json::Value::Null);
    assert!(!alert.to_string().contains(&key));

    // Two look-alikes of the id (from two addresses, so no address budget is involved) spend
    // the id's budget of 2: a wrong secret at the token endpoint is then refused with 429.
    let forged = crate::token::forge_same_id(&key);
    for ip in ["198.51.100.2", "198.51.100.3"] {
        let encoded = forged.replace('_', "%5F");
        let res = get_from(ip, format!("/x/{encoded}")).await.unwrap();
        expect_error(
            res,
            StatusCode::BAD_REQUEST,
            "API_KEY_IN_URL",
            "a percent-encoded look-alike in the path",
        )
        .await;
    }
    expect_error(
        exchange_from(&app, "198.51.100.4", &forged, &Device::new()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "the id's failure budget was spent by the URL checks",
    )
    .await;
}

/// Wrong secrets refused by a key id's failure budget (429) are still failed authentications
/// from their address: they spend its budget like the 401s before them, or an attacker who
/// targets one id would get free guesses from an address once that id's budget is gone.
#[tokio::test]
async fn a_429_from_the_key_id_budget_still_spends_the_addresss_budget() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        a.key_failure_budget = 3;
        a.ip_failure_budget = 5;
    })
    .await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let attacker = "203.0.113.9";
    let wrong = crate::token::forge_same_id(&key);
    for i in 0..3 {
        let res = exchange_from(&app, attacker, &wrong, &dev).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "wrong secret {i}");
    }
    for i in 0..3 {
        let res = exchange_from(&app, attacker, &wrong, &dev).await;
        expect_error(
            res,
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            &format!("the id's budget is spent ({i})"),
        )
        .await;
    }
    // 3 refusals and 2 budget 429s are 5 failures, the address's whole budget (the third 429
    // is already the address's), so a guess at another id is refused before any work. (Were
    // the id budget's 429s not counted, it would be a plain 401.)
    let guess = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
    let res = exchange_from(&app, attacker, guess.expose(), &dev).await;
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "the address's budget is spent",
    )
    .await;
    // The key's owner, elsewhere, is not locked out by either budget.
    expect_json(
        exchange_from(&app, "198.51.100.30", &key, &dev).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let db = TestDb::sqlite().await;
    // No trusted proxy: X-Forwarded-For is the client's own claim and must not be believed.
    let app = spawn_app_args(&db, |a| a.ip_failure_budget = 3).await;
    let (key, _) = new_key(&app, json!({"allowed_ips": ["198.51.100.0/24"]})).await;
    let dev = Device::new();
    // Claiming an allow-listed address does not help.
    let res = exchange_from(&app, "198.51.100.9", &key, &dev).await;
    expect_error(
        res,
        StatusCode::FORBIDDEN,
        "IP_NOT_ALLOWED",
        "spoofed X-Forwarded-For",
    )
    .await;
    // Rotating the claimed address does not escape the failure budget either: the socket
    // peer's 3 failures spend its budget of 3.
    for i in 0..3 {
        guess_from(&app, &format!("192.0.2.{i}"), &dev, &format!("guess {i}")).await;
    }
    let guess = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
    let res = exchange_from(&app, "192.0.2.99", guess.expose(), &dev).await;
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "same socket peer, new XFF",
    )
    .await;
}

#[tokio::test]
async fn allow_lists_refuse_other_networks_and_origins() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()]
    })
    .await;
    let (key, _) = new_key(
        &app,
        json!({"allowed_ips": ["198.51.100.0/24"], "allowed_origins": ["https://app.example.com"]}),
    )
    .await;
    let dev = Device::new();
    expect_error(
        exchange_from(&app, "203.0.113.1", &key, &dev).await,
        StatusCode::FORBIDDEN,
        "IP_NOT_ALLOWED",
        "outside the CIDR",
    )
    .await;
    expect_json(
        exchange_from(&app, "198.51.100.77", &key, &dev).await,
        StatusCode::OK,
    )
    .await;

    let with_origin = |origin: &'static str| {
        app.client
            .post(app.url("/v1/token"))
            .header("X-API-Key", &key)
            .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
            .header("X-Forwarded-For", "198.51.100.77")
            .header("Origin", origin)
    };
    expect_error(
        with_origin("https://evil.example").send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "ORIGIN_NOT_ALLOWED",
        "foreign origin",
    )
    .await;
    expect_json(
        with_origin("https://app.example.com").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn wrong_secrets_for_one_key_id_from_many_ips_raise_an_alert_but_never_lock_the_owner_out() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        a.ip_failure_budget = 1000;
    })
    .await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let forged = crate::token::forge_same_id(&key);
    let mut limited = 0;
    for i in 0..(keybound::limits::KEY_FAILURE_BUDGET + 3) {
        let res = exchange_from(&app, &format!("203.0.113.{i}"), &forged, &dev).await;
        match res.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        limited >= 2,
        "wrong secrets past the per-id budget are throttled"
    );
    let alert = crate::alerts::wait_for_alert(&app, "FAILURE_BURST").await;
    assert_eq!(alert["key_id"], key_id);
    // The owner, with the right secret, is not locked out.
    expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
}

#[tokio::test]
async fn usage_is_recorded_off_the_request_path_and_aggregated() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |_| {}).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();
    for _ in 0..3 {
        expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    }
    expect_error(
        exchange(&app, &key, &dev, json!({"scope": "admin:all"})).await,
        StatusCode::FORBIDDEN,
        "INSUFFICIENT_SCOPE",
        "counted as an error",
    )
    .await;
    // Unknown keys are not recorded (a flood of made-up keys must not fill the table).
    let stranger = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
    exchange(&app, stranger.expose(), &dev, json!({})).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let usage = loop {
        let usage = expect_json(
            app.admin_get(&format!("/keys/{key_id}/usage?bucket=minute"))
                .await,
            StatusCode::OK,
        )
        .await;
        let total: i64 = usage["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["requests"].as_i64().unwrap())
            .sum();
        if total >= 4 || std::time::Instant::now() > deadline {
            break usage;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let buckets = usage["buckets"].as_array().unwrap();
    let total: i64 = buckets
        .iter()
        .map(|b| b["requests"].as_i64().unwrap())
        .sum();
    let errors: i64 = buckets.iter().map(|b| b["errors"].as_i64().unwrap()).sum();
    assert_eq!((total, errors), (4, 1), "{usage}");
    expect_error(
        app.admin_get(&format!("/keys/{key_id}/usage?bucket=week"))
            .await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "bad bucket",
    )
    .await;
}

/// The anomaly kinds not covered elsewhere, each raised by its own scenario and visible in
/// `GET /admin/v1/alerts` within 1 s.
#[tokio::test]
async fn new_network_usage_spike_and_many_devices_are_alerted() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        a.usage_spike_per_minute = 5;
        a.many_per_hour = 3;
    })
    .await;
    let (key, key_id) = new_key(&app, json!({"max_devices": 10})).await;

    // One device, first from home, then from a network it was never seen on.
    let phone = Device::new();
    expect_json(
        exchange_from(&app, "198.51.100.10", &key, &phone).await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        exchange_from(&app, "203.0.113.10", &key, &phone).await,
        StatusCode::OK,
    )
    .await;
    let alert = crate::alerts::wait_for_alert(&app, "NEW_NETWORK").await;
    assert_eq!(alert["key_id"], key_id);
    assert_eq!(alert["details"]["network"], "203.0.113.0/24");

    // Four more devices: five distinct devices in the hour, over the threshold of 3.
    for _ in 0..4 {
        expect_json(
            exchange_from(&app, "198.51.100.10", &key, &Device::new()).await,
            StatusCode::OK,
        )
        .await;
    }
    let alert = crate::alerts::wait_for_alert(&app, "MANY_DEVICES_OR_NETWORKS").await;
    assert_eq!(alert["key_id"], key_id);
    // Twelve exchanges in all: whichever minute they fall in, one minute holds more than 5.
    for _ in 0..6 {
        expect_json(
            exchange_from(&app, "198.51.100.10", &key, &phone).await,
            StatusCode::OK,
        )
        .await;
    }
    let alert = crate::alerts::wait_for_alert(&app, "USAGE_SPIKE").await;
    assert_eq!(alert["key_id"], key_id);
    assert!(alert["details"]["exchanges_this_minute"].as_u64().unwrap() > 5);
}

crate::on_both_backends!(
    leak_reports_are_behind_the_address_budget,
    a_suspended_key_can_be_rotated_and_stays_suspended,
);

/// A leak report from `ip`.
async fn report_from(app: &crate::helpers::TestApp, ip: &str, key: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/leaks"))
        .header("X-Forwarded-For", ip)
        .json(&json!({"key": key, "source": "https://example.com/paste"}))
        .send()
        .await
        .unwrap()
}

/// `POST /v1/leaks` checks keys, so it spends and obeys the per-IP failure budget: reports
/// that do not verify are failures (still answered 202, the same as ever); once the budget is
/// spent the address gets 429, and its report is not acted on.
async fn leak_reports_are_behind_the_address_budget(db: TestDb) {
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
        a.ip_failure_budget = 2;
    })
    .await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let prober = "203.0.113.50";
    let fake = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
    for k in [fake.expose(), "nonsense"] {
        let res = report_from(&app, prober, k).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "{k}");
    }
    let res = report_from(&app, prober, &key).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "a report after two that did not verify",
    )
    .await;
    assert_eq!(
        app.get_key(&key_id).await["status"],
        "active",
        "refused before any work"
    );
    // The token endpoint shares the budget.
    expect_error(
        exchange_from(&app, prober, &key, &Device::new()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "the token endpoint from the same address",
    )
    .await;
    // A scanner elsewhere is heard.
    let res = report_from(&app, "198.51.100.60", &key).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(app.get_key(&key_id).await["status"], "suspended");
}

/// A reported (hence suspended) key is rotated to recover: the new key is active and works,
/// the old one stays suspended whatever the grace period.
async fn a_suspended_key_can_be_rotated_and_stays_suspended(db: TestDb) {
    let app = spawn_app_args(&db, |_| {}).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let res = app
        .client
        .post(app.url("/v1/leaks"))
        .json(&json!({"key": key, "source": "https://example.com/paste"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(app.get_key(&key_id).await["status"], "suspended");

    let rotated = expect_json(
        app.admin_post(
            &format!("/keys/{key_id}/rotate"),
            json!({"grace_seconds": 3600}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(rotated["status"], "active");
    assert_eq!(rotated["rotated_from"], key_id);
    let successor = rotated["key"].as_str().unwrap();
    let old = app.get_key(&key_id).await;
    assert_eq!(old["status"], "suspended", "the old key stays suspended");
    assert_eq!(old["rotated_to"], rotated["key_id"]);

    let dev = Device::new();
    expect_json(
        exchange(&app, successor, &dev, json!({})).await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        exchange(&app, &key, &dev, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "the suspended old key, within the grace period",
    )
    .await;

    // A revoked key still cannot be rotated.
    let (_, revoked) = new_key(&app, json!({})).await;
    expect_json(
        app.admin_post(&format!("/keys/{revoked}/revoke"), json!({"reason": "x"}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        app.admin_post(&format!("/keys/{revoked}/rotate"), json!({}))
            .await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "rotating a revoked key",
    )
    .await;
}

/// Every flag `keybound serve` knows that takes no value: hidden ones (none are left; any new
/// one is turned on here) and the ones meant for tests (`--attestation-allow-development`,
/// `--attestation-allow-custom-root`, …), from the real command-line definition.
fn every_serve_switch() -> Vec<String> {
    use clap::CommandFactory;
    let mut cli = keybound::config::Cli::command();
    // Settles each argument's action and value count (unset before a build).
    cli.build();
    let serve = cli.find_subcommand("serve").expect("serve");
    let mut switches = Vec::new();
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        assert!(
            !arg.is_hide_set() || !takes_value,
            "--{long} is hidden and takes a value: give it one here"
        );
        assert!(!long.contains("bench"), "--{long}: serve has no bench flag");
        if !takes_value && long != "help" && long != "version" {
            switches.push(format!("--{long}"));
        }
    }
    switches
}

/// Contract section 7: a `--profile prod` server has no benchmark route or switch, whatever
/// flags it is given. The real binary, `keybound serve --profile prod` behind a trusted proxy,
/// with every switch it knows turned on: each bench route answers 404. `--bench-routes` itself
/// is gone (an unknown argument): the routes live only in `keybound-bench`'s own server.
#[tokio::test]
async fn a_prod_server_has_no_bench_route_or_switch_whatever_its_flags() {
    let db = TestDb::sqlite().await;
    let bench_flag = crate::helpers::cli(&db, &["serve", "--bench-routes"]).await;
    assert_eq!(bench_flag.code, 2, "{bench_flag:?}");
    assert!(
        bench_flag
            .stderr
            .contains("unexpected argument '--bench-routes'"),
        "{bench_flag:?}"
    );

    let switches = every_serve_switch();
    for expected in [
        "--attestation-allow-development",
        "--attestation-allow-custom-root",
    ] {
        assert!(
            switches.iter().any(|s| s == expected),
            "{expected}: {switches:?}"
        );
    }
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybound"))
        .args(["--database-url", &db.url, "serve", "--profile", "prod"])
        .args([
            "--listen",
            &addr.to_string(),
            "--trusted-proxy",
            "127.0.0.1/32",
        ])
        .args(&switches)
        .env("KEYBOUND_MASTER_KEY", db.master_key())
        .env("KEYBOUND_ADMIN_TOKEN", crate::helpers::ADMIN_TOKEN)
        .current_dir(db.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("keybound serve starts");
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(Some(status)) = server.try_wait() {
            let out = server.wait_with_output().await.unwrap();
            panic!(
                "the prod server exited ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "the prod server answers /healthz");
    for (method, path) in [
        (reqwest::Method::POST, "/bench/sign"),
        (reqwest::Method::POST, "/bench/verify-sign"),
        (reqwest::Method::PUT, "/bench/switches"),
        (reqwest::Method::GET, "/bench/switches"),
    ] {
        let res = client
            .request(method, format!("{base}{path}"))
            .json(&json!({"rate_limits": false, "usage": false, "writes": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    server.kill().await.unwrap();
}

/// The same in process, where the switches can be read: after the attempts to reach them,
/// rate limits, usage tracking and writes are all still on.
#[tokio::test]
async fn a_prod_servers_switches_stay_on() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.profile = keybound::config::Profile::Prod;
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let res = app
        .client
        .put(app.url("/bench/switches"))
        .json(&json!({"rate_limits": false, "usage": false, "writes": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let switches = &app.state().switches;
    assert!(switches.rate_limits() && switches.usage() && switches.writes());
    app.stop().await;
}
