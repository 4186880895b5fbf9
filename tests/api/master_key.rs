//! Master key rotation: `keybound signing-keys reseal` re-seals every signing key under a new
//! master key, all or nothing; servers then start with the new key only, and the keys (kids,
//! JWKS, tokens already issued) stay the same.

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{TestDb, cli, expect_json, spawn_app, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::signing_keys::jwks_kids;
use crate::token::{exchange, new_key};

on_both_backends!(reseal_moves_every_signing_key_to_the_new_master_key);

fn random_master_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

async fn reseal_moves_every_signing_key_to_the_new_master_key(db: TestDb) {
    let old = db.master_key().to_owned();
    let new = random_master_key();
    // Two keys: an active one and a retired one still published.
    let app = spawn_app(&db).await;
    let kids_before = jwks_kids(&app).await;
    // A key made before the rotation: its stored hash is MAC'd under the integrity root,
    // which the reseal moves to the new master key with the signing keys.
    let (before, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    app.stop().await;
    cli(&db, &["signing-keys", "rotate", "--master-key", &old])
        .await
        .ok();

    // A wrong current key changes nothing.
    let wrong = random_master_key();
    let out = cli(
        &db,
        &[
            "signing-keys",
            "reseal",
            "--master-key",
            &wrong,
            "--new-master-key",
            &new,
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("nothing was changed"), "{out:?}");

    let out = cli(
        &db,
        &[
            "signing-keys",
            "reseal",
            "--master-key",
            &old,
            "--new-master-key",
            &new,
            "--json",
        ],
    )
    .await
    .ok();
    assert_eq!(out.json()["resealed"].as_array().unwrap().len(), 2);
    assert!(
        !out.all().contains(&new) && !out.all().contains(&old),
        "no key material printed"
    );

    // The old master key no longer opens the active key; the new one does, and serves the
    // same keys.
    let mut args = keybound::config::ServeArgs::for_tests();
    args.master_key = Some(SecretString::from(old.clone()));
    assert!(
        keybound::server::start(args, db.store().await)
            .await
            .is_err()
    );
    let app = spawn_app_args(&db, |a| {
        a.master_key = Some(SecretString::from(new.clone()))
    })
    .await;
    let kids_after = jwks_kids(&app).await;
    assert_eq!(kids_after.len(), 2);
    assert!(
        kids_after.contains(&kids_before[0]),
        "the first key is still published"
    );
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    for key in [&key, &before] {
        expect_json(
            exchange(&app, key, &Device::new(), json!({})).await,
            StatusCode::OK,
        )
        .await;
    }

    // The reseal is in the audit log, naming the kids and nothing secret.
    let audit = expect_json(app.admin_get("/audit").await, StatusCode::OK).await;
    let row = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "signing_key.reseal")
        .expect("a signing_key.reseal audit row");
    assert_eq!(row["details"]["kids"].as_array().unwrap().len(), 2);
    // The audit chain, MAC'd under the same root, verifies with the new master key.
    assert_eq!(
        cli(&db, &["audit", "verify", "--master-key", &new])
            .await
            .code,
        0
    );
}
