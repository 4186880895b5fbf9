//! No secret and no hash of one in any list, show or log output, from the API or the CLI.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use keybound::keys::ApiKey;
use keybound::store::{KeyRecord, KeyStatus};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestDb, cli, expect_json, key_body, spawn_app};
use crate::on_both_backends;

on_both_backends!(secrets_are_absent_from_every_list_and_show_output);

/// Every form in which a key's secret could leak: the plaintext, its secret part, and the
/// stored hash in hex (both cases) and base64 (all four alphabets).
fn forms(plaintext: &str) -> Vec<(String, &'static str)> {
    let key = ApiKey::parse(plaintext).expect("valid key");
    let hash = key.secret_hash();
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let secret = &plaintext[plaintext.len() - 49..plaintext.len() - 6];
    vec![
        (plaintext.to_owned(), "plaintext"),
        (secret.to_owned(), "secret part"),
        (hex.to_uppercase(), "hash, upper hex"),
        (hex, "hash, hex"),
        (STANDARD.encode(hash), "hash, base64"),
        (STANDARD_NO_PAD.encode(hash), "hash, base64 unpadded"),
        (URL_SAFE.encode(hash), "hash, base64url"),
        (URL_SAFE_NO_PAD.encode(hash), "hash, base64url unpadded"),
    ]
}

async fn secrets_are_absent_from_every_list_and_show_output(db: TestDb) {
    let app = spawn_app(&db).await;
    // Keys made every way: API, CLI, rotation; then every status change.
    let mut plaintexts = Vec::new();
    let a = app.create_key(key_body("api")).await;
    plaintexts.push(a["key"].as_str().unwrap().to_owned());
    let b = cli(
        &db,
        &["keys", "create", "--name", "cli", "--scopes", "s", "--json"],
    )
    .await
    .ok()
    .json();
    plaintexts.push(b["key"].as_str().unwrap().to_owned());
    let a_id = a["key_id"].as_str().unwrap().to_owned();
    let b_id = b["key_id"].as_str().unwrap().to_owned();
    let rotated = expect_json(
        app.admin_post(&format!("/keys/{a_id}/rotate"), json!({}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    plaintexts.push(rotated["key"].as_str().unwrap().to_owned());
    let c_id = rotated["key_id"].as_str().unwrap().to_owned();

    let mut outputs: Vec<(String, String)> = Vec::new();
    for (path, body) in [
        (format!("/keys/{b_id}/suspend"), json!({})),
        (format!("/keys/{b_id}/resume"), json!({})),
        (format!("/keys/{c_id}"), json!({"name": "renamed"})),
    ] {
        let res = if path.ends_with(&c_id) {
            app.admin_patch(&path, body).await
        } else {
            app.admin_post(&path, body).await
        };
        outputs.push((path, res.text().await.unwrap()));
    }
    let out = cli(&db, &["keys", "revoke", &b_id, "--reason", "test"])
        .await
        .ok();
    outputs.push(("cli revoke".into(), out.all()));
    let mut api_paths = vec!["/keys".to_owned(), "/keys?limit=1".into(), "/audit".into()];
    for id in [&a_id, &b_id, &c_id] {
        api_paths.push(format!("/keys/{id}"));
        api_paths.push(format!("/keys/{id}/devices"));
    }
    for path in api_paths {
        let text = app.admin_get(&path).await.text().await.unwrap();
        outputs.push((format!("GET {path}"), text));
    }
    let mut cli_runs: Vec<Vec<String>> = vec![
        vec!["keys".into(), "list".into()],
        vec!["keys".into(), "list".into(), "--json".into()],
        vec!["audit".into(), "verify".into()],
        vec!["audit".into(), "verify".into(), "--json".into()],
    ];
    for id in [&a_id, &b_id, &c_id] {
        cli_runs.push(vec!["keys".into(), "show".into(), id.clone()]);
        cli_runs.push(vec![
            "keys".into(),
            "show".into(),
            id.clone(),
            "--json".into(),
        ]);
        cli_runs.push(vec!["devices".into(), "list".into(), id.clone()]);
    }
    for args in cli_runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&db, &args).await.ok();
        outputs.push((args.join(" "), out.all()));
    }
    // And what the store has in its audit log, read directly.
    let rows = app.store.list_audit(0, 1000).await.unwrap();
    outputs.push(("audit rows".into(), serde_json::to_string(&rows).unwrap()));

    for plaintext in &plaintexts {
        for (needle, form) in forms(plaintext) {
            for (source, text) in &outputs {
                assert!(
                    !text.contains(&needle),
                    "{form} of a key appears in {source}: {text}"
                );
            }
        }
    }
    assert!(
        outputs.iter().all(|(_, t)| !t.contains("secret_hash")),
        "no output names the hash field"
    );
}

#[test]
fn a_key_record_never_serializes_its_hash() {
    let record = KeyRecord {
        key_id: "ak_test_AAAAAAAAAAAA".parse().unwrap(),
        env: keybound::keys::KeyEnv::Test,
        name: "n".into(),
        description: None,
        secret_hash: vec![0xab; 32],
        scopes: vec!["s".parse().unwrap()],
        limited_scopes: None,
        rate_limit_per_minute: 1,
        allowed_ips: vec![],
        allowed_origins: vec![],
        max_devices: 1,
        trust_on_enroll: false,
        attestation: keybound::store::AttestationPolicy::Preferred,
        status: KeyStatus::Active,
        status_reason: None,
        status_changed_at: None,
        created_at: 0,
        expires_at: None,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    };
    let v = serde_json::to_value(&record).unwrap();
    assert!(v.get("secret_hash").is_none(), "{v}");
    let text = v.to_string();
    assert!(!text.contains("abab"), "{text}");
    assert!(
        !text.contains(&STANDARD_NO_PAD.encode([0xab; 32])),
        "{text}"
    );
}
