//! Token status lists (contract section 10): every token names its device's entry, and the
//! signed list at that URI says 0, 1 or 2 through every key and device transition. The list is
//! verified with an independent JOSE implementation (jsonwebtoken, against the JWKS only) and
//! decompressed with an independent ZLIB implementation (python3's `zlib`, run by the test).

use std::io::Write as _;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, expect_error, expect_json, now, spawn_app};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::{exchange, ios, new_key, verify_with_jwks};

on_both_backends!(
    status_values_follow_every_key_and_device_transition,
    unknown_lists_are_not_found,
    the_feed_is_pruned_keeps_cursors_valid_and_starts_at_a_time
);

/// One device's place in the lists, from its token's `status` claim.
pub struct Entry {
    pub uri: String,
    pub idx: u64,
}

/// Exchanges `key` for `dev` and returns where the token says its status is.
pub async fn entry_of(app: &TestApp, key: &str, dev: &Device) -> Entry {
    let body = expect_json(
        exchange(app, key, dev, json!({"device": ios("i")})).await,
        StatusCode::OK,
    )
    .await;
    let claims = crate::token::claims_of(body["access_token"].as_str().unwrap());
    let sl = &claims["status"]["status_list"];
    Entry {
        uri: sl["uri"]
            .as_str()
            .expect("status.status_list.uri")
            .to_owned(),
        idx: sl["idx"].as_u64().expect("status.status_list.idx"),
    }
}

/// Fetches the list at `url`, checks the response and the JWS (jsonwebtoken against the JWKS of
/// `app`), and returns its claims.
pub async fn fetch_list(app: &TestApp, url: &str) -> Value {
    let res = app.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{url}");
    let h = res.headers();
    assert_eq!(h["content-type"], "application/statuslist+jwt");
    assert_eq!(
        h["access-control-allow-origin"], "*",
        "cross-origin readable"
    );
    let jws = res.text().await.unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub", "iat"]);
    let (header, claims) = verify_with_jwks(app, &jws, &validation).await;
    assert_eq!(header.typ.as_deref(), Some("statuslist+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(claims["sub"], url, "sub is the list's own URI");
    assert_eq!(claims["status_list"]["bits"], 2);
    let (iat, exp, ttl) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
        claims["ttl"].as_i64().unwrap(),
    );
    assert!((iat - now()).abs() <= 10, "iat is recent: {iat}");
    assert!(
        ttl > 0 && exp >= iat + ttl,
        "exp {exp} leaves a verifier its ttl {ttl}"
    );
    claims
}

/// The values at `indexes` of a `status_list` claim, decoded by python3's `zlib` (RFC 1950)
/// and `base64`, not by our code; `None` (skip) without python3, except under `CI=true`.
pub fn values_by_python(claims: &Value, indexes: &[u64]) -> Option<Vec<u8>> {
    const SCRIPT: &str = "import sys, zlib, base64\n\
        lst = sys.stdin.read().strip()\n\
        raw = zlib.decompress(base64.urlsafe_b64decode(lst + '=' * (-len(lst) % 4)))\n\
        print(len(raw), *[(raw[i // 4] >> (2 * (i % 4))) & 3 for i in map(int, sys.argv[1:])])\n";
    let child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(indexes.iter().map(u64::to_string))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "python3 is needed under CI: {e}"
            );
            eprintln!("skipped: no python3 ({e})");
            return None;
        }
    };
    let lst = claims["status_list"]["lst"].as_str().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lst.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 could not decode the list");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    let len = fields.next().unwrap();
    assert!(
        len * 4 >= 1_000_000,
        "one list holds at least 1 000 000 entries: {len} bytes"
    );
    Some(fields.map(|v| v as u8).collect())
}

/// The value of `e` in the list as served now.
async fn value(app: &TestApp, e: &Entry) -> u8 {
    let claims = fetch_list(app, &e.uri).await;
    match values_by_python(&claims, &[e.idx]) {
        Some(v) => v[0],
        // Without python3 (outside CI), our own decoder is all there is.
        None => keybound_decode(&claims, e.idx),
    }
}

pub fn keybound_decode(claims: &Value, idx: u64) -> u8 {
    use base64::Engine as _;
    use std::io::Read as _;
    let z = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims["status_list"]["lst"].as_str().unwrap())
        .unwrap();
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&z[..])
        .read_to_end(&mut raw)
        .unwrap();
    (raw[(idx / 4) as usize] >> (2 * (idx % 4))) & 3
}

async fn status_values_follow_every_key_and_device_transition(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key_a, id_a) = new_key(&app, json!({})).await;
    let (key_b, id_b) = new_key(&app, json!({})).await;
    let (key_c, id_c) = new_key(&app, json!({})).await;
    let (phone, tablet, other) = (Device::new(), Device::new(), Device::new());
    let e_phone = entry_of(&app, &key_a, &phone).await;
    let e_tablet = entry_of(&app, &key_a, &tablet).await;
    let e_other = entry_of(&app, &key_b, &other).await;
    let e_expiring = entry_of(&app, &key_c, &Device::new()).await;
    assert_eq!(e_phone.uri, app.url("/v1/status-lists/0"));
    let idxs = [e_phone.idx, e_tablet.idx, e_other.idx, e_expiring.idx];
    let mut distinct = idxs.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "one index per device: {idxs:?}");
    // The same device exchanging again keeps its index.
    assert_eq!(entry_of(&app, &key_a, &phone).await.idx, e_phone.idx);

    let claims = fetch_list(&app, &e_phone.uri).await;
    assert_eq!(claims["ttl"], 60, "the default ttl");
    if let Some(v) = values_by_python(&claims, &idxs) {
        assert_eq!(v, [0, 0, 0, 0], "all valid at first");
    }

    // Each transition, then the value every entry must have right after it.
    let steps: [(&str, Value, [u8; 3]); 5] = [
        (&format!("/keys/{id_a}/suspend"), json!({}), [2, 2, 0]),
        (&format!("/keys/{id_a}/resume"), json!({}), [0, 0, 0]),
        ("DEVICE", json!({}), [1, 0, 0]),
        (&format!("/keys/{id_a}/suspend"), json!({}), [1, 2, 0]),
        (
            &format!("/keys/{id_b}/revoke"),
            json!({"reason": "test"}),
            [1, 2, 1],
        ),
    ];
    let phone_id = device_id_of(&app, &id_a, 0).await;
    for (path, body, want) in steps {
        let path = if path == "DEVICE" {
            format!("/devices/{phone_id}/revoke")
        } else {
            path.to_owned()
        };
        expect_json(app.admin_post(&path, body).await, StatusCode::OK).await;
        let got = [
            value(&app, &e_phone).await,
            value(&app, &e_tablet).await,
            value(&app, &e_other).await,
        ];
        assert_eq!(got, want, "after {path} (phone, tablet, other)");
    }

    // Expiry changes the list with no write at all: the list built before it knows when.
    assert_eq!(value(&app, &e_expiring).await, 0);
    let at = now() + 2;
    db.execute(&format!(
        "UPDATE api_keys SET expires_at = {at} WHERE key_id = '{id_c}'"
    ))
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    loop {
        let v = value(&app, &e_expiring).await;
        if v == 1 {
            break;
        }
        assert_eq!(v, 0);
        assert!(
            std::time::Instant::now() < deadline,
            "an expired key's devices read 1"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(now() >= at, "not before the key expired");
    app.stop().await;
}

async fn device_id_of(app: &TestApp, key_id: &str, n: usize) -> String {
    let list = expect_json(
        app.admin_get(&format!("/keys/{key_id}/devices")).await,
        StatusCode::OK,
    )
    .await;
    list["devices"][n]["device_id"].as_str().unwrap().to_owned()
}

async fn unknown_lists_are_not_found(db: TestDb) {
    let app = spawn_app(&db).await;
    // List 0 exists before any device does.
    let claims = fetch_list(&app, &app.url("/v1/status-lists/0")).await;
    if let Some(v) = values_by_python(&claims, &[0, 999_999]) {
        assert_eq!(v, [0, 0]);
    }
    for path in [
        "1",
        "42",
        "999999999",
        "abc",
        "-1",
        "+1",
        "1.0",
        "99999999999999999999",
    ] {
        expect_error(
            app.client
                .get(app.url(&format!("/v1/status-lists/{path}")))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            path,
        )
        .await;
    }
    app.stop().await;
}

/// Reads `GET /v1/revocations?<query>`: (the subjects, `next`, `more`).
async fn feed(app: &TestApp, query: &str) -> (Vec<String>, String, bool) {
    let res = app
        .client
        .get(app.url(&format!("/v1/revocations?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{query}");
    let claims = crate::token::claims_of(&res.text().await.unwrap());
    let ids = claims["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    (
        ids,
        claims["next"].as_str().unwrap().to_owned(),
        claims["more"].as_bool().unwrap(),
    )
}

async fn the_feed_is_pruned_keeps_cursors_valid_and_starts_at_a_time(db: TestDb) {
    let app = spawn_app(&db).await;
    // Three entries from half an hour ago (inside the retention, so the server's own hourly
    // prune, which also runs at start, leaves them), then one made now.
    let old = now() - 1800;
    for n in 1..=3 {
        db.execute(&format!(
            "INSERT INTO revocations (kind, subject, at) VALUES ('key', 'ak_test_old{n}', {old})"
        ))
        .await;
    }
    let (_, id_new) = new_key(&app, json!({})).await;
    expect_json(
        app.admin_post(&format!("/keys/{id_new}/revoke"), json!({"reason": "t"}))
            .await,
        StatusCode::OK,
    )
    .await;
    let (all, head, more) = feed(&app, "").await;
    assert_eq!(
        all,
        [
            "ak_test_old1",
            "ak_test_old2",
            "ak_test_old3",
            id_new.as_str()
        ]
    );
    assert!(!more);
    // A cursor into the old entries, as a verifier that read one of them holds it.
    let (after_first, _, _) = feed(&app, "since=1").await;
    assert_eq!(after_first.len(), 3);

    // Pruning (as the hourly task does with REVOCATION_FEED_RETENTION; here with a shorter
    // horizon) drops the old entries.
    const { assert!(keybound::tokens::access::REVOCATION_FEED_RETENTION > 1800) };
    let pruned = app.store.prune_revocations(now() - 600).await.unwrap();
    assert_eq!(pruned, 3);
    let (kept, next, _) = feed(&app, "since=1").await;
    assert_eq!(
        kept,
        [id_new.as_str()],
        "a cursor from before the pruned range reads on"
    );
    assert_eq!(next, head);
    let (from_start, _, _) = feed(&app, "").await;
    assert_eq!(from_start, [id_new.as_str()]);

    // since_time: from the first entry made at or after that time.
    let (recent, next_recent, _) = feed(&app, &format!("since_time={}", now() - 60)).await;
    assert_eq!(recent, [id_new.as_str()]);
    assert_eq!(next_recent, head);
    let (none, at_head, more) = feed(&app, &format!("since_time={}", now() + 3600)).await;
    assert!(none.is_empty() && !more);
    assert_eq!(at_head, head, "nothing that recent: the cursor is the head");
    let (_, id_later) = new_key(&app, json!({})).await;
    expect_json(
        app.admin_post(&format!("/keys/{id_later}/suspend"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    let (later, _, _) = feed(&app, &format!("since={at_head}")).await;
    assert_eq!(
        later,
        [id_later.as_str()],
        "and reading on from it sees what comes next"
    );

    for (query, why) in [
        (format!("since=1&since_time={}", now()), "both"),
        ("since_time=abc".to_owned(), "not a number"),
        ("since_time=-5".to_owned(), "negative"),
    ] {
        expect_error(
            app.client
                .get(app.url(&format!("/v1/revocations?{query}")))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            why,
        )
        .await;
    }
    app.stop().await;
}
