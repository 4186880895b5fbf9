//! `keybound signing-keys list|rotate`: rotation needs the servers' master key, never prints
//! key material, and reaches a running server's JWKS.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestDb, cli, cli_with_master_key, expect_json, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    rotation_reaches_the_running_server,
    a_revoked_key_leaves_the_jwks_at_once
);

pub async fn jwks_kids(app: &crate::helpers::TestApp) -> Vec<String> {
    let res = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    let jwks = expect_json(res, StatusCode::OK).await;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn rotation_reaches_the_running_server(db: TestDb) {
    let empty = cli(&db, &["signing-keys", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(empty["signing_keys"], Value::Array(vec![]));

    let app = spawn_app(&db).await;
    let first = cli(&db, &["signing-keys", "list", "--json"])
        .await
        .ok()
        .json();
    let keys = first["signing_keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1, "the server made its first key: {first}");
    let first_kid = keys[0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(keys[0]["active"], true);
    assert_eq!(jwks_kids(&app).await, vec![first_kid.clone()]);

    // No master key (and no key file in the working directory): refused, nothing changes.
    let refused = cli_with_master_key(&db, None, &["signing-keys", "rotate"]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("no master key"), "{refused:?}");
    assert!(
        !db.dir.path().join("keybound-data").exists(),
        "no key file was created"
    );
    // A different master key: refused, nothing changes.
    let other = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let wrong = cli(&db, &["signing-keys", "rotate", "--master-key", other]).await;
    assert_eq!(wrong.code, 2, "{wrong:?}");
    assert!(wrong.stderr.contains("master key differs"), "{wrong:?}");
    let unchanged = cli(&db, &["signing-keys", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(unchanged["signing_keys"].as_array().unwrap().len(), 1);

    let rotated = cli(
        &db,
        &[
            "signing-keys",
            "rotate",
            "--master-key",
            db.master_key(),
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, first_kid);
    assert_eq!(rotated["active"], true);
    let table = cli(&db, &["signing-keys", "list"]).await.ok();
    assert!(table.stdout.starts_with("KID"), "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    assert!(
        lines[1].starts_with(&new_kid) && lines[1].contains("active"),
        "newest first: {table:?}"
    );
    assert!(
        lines[2].starts_with(&first_kid) && lines[2].contains("retired"),
        "{table:?}"
    );
    for out in [&rotated.to_string(), &table.stdout] {
        assert!(
            !out.contains("sealed") && !out.contains("private"),
            "no key material: {out}"
        );
    }

    // The running server reloads its key ring within seconds: both keys are published.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let kids = jwks_kids(&app).await;
        if kids.contains(&new_kid) {
            assert!(
                kids.contains(&first_kid),
                "the retired key stays published: {kids:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never picked up the new key: {kids:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let audit = app.store.list_audit(0, 100).await.unwrap();
    let row = audit
        .iter()
        .find(|r| r.entry.action == "signing_key.rotate")
        .expect("audited");
    assert_eq!(row.entry.actor, "cli");
    assert_eq!(row.entry.target.as_deref(), Some(new_kid.as_str()));
    cli(&db, &["audit", "verify"]).await.ok();
}

/// `rotate --revoke-previous` (issue 15 item 14): the compromised key is out of the running
/// server's JWKS on its next reload, not kept published for the token lifetime.
async fn a_revoked_key_leaves_the_jwks_at_once(db: TestDb) {
    let app = spawn_app(&db).await;
    let old = jwks_kids(&app).await;
    assert_eq!(old.len(), 1);
    let rotated = cli(
        &db,
        &[
            "signing-keys",
            "rotate",
            "--revoke-previous",
            "--master-key",
            db.master_key(),
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_eq!(rotated["revoked_kid"], old[0].as_str());
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let kids = jwks_kids(&app).await;
        if kids.contains(&new_kid) {
            assert_eq!(
                kids,
                std::slice::from_ref(&new_kid),
                "the revoked key is gone at once"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never reloaded: {kids:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let listed = cli(&db, &["signing-keys", "list", "--json"])
        .await
        .ok()
        .json();
    let revoked = listed["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == old[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(revoked["active"], false);
    assert!(revoked["published_until"].as_i64().unwrap() <= keybound::clock::now());
    let audit = app.store.list_audit(0, 100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.entry.action == "signing_key.rotate_revoke"
                && r.entry.details["retired_kid"] == old[0].as_str()),
        "audited"
    );
}
