//! No accepted write is lost across a restart.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestDb, cli, expect_json, key_body, spawn_app};
use crate::on_both_backends;

on_both_backends!(keys_survive_a_restart);

async fn keys_survive_a_restart(db: TestDb) {
    let app = spawn_app(&db).await;
    let a = app.create_key(key_body("survivor")).await;
    let a_id = a["key_id"].as_str().unwrap().to_owned();
    let b = app.create_key(key_body("revoked before restart")).await;
    let b_id = b["key_id"].as_str().unwrap().to_owned();
    expect_json(
        app.admin_post(&format!("/keys/{b_id}/revoke"), json!({"reason": "r"}))
            .await,
        StatusCode::OK,
    )
    .await;
    let before = expect_json(app.admin_get("/keys").await, StatusCode::OK).await;
    let audit_before = expect_json(app.admin_get("/audit").await, StatusCode::OK).await;
    app.stop().await;

    // A new server (and a new store, with its own connections) on the same database.
    let app = spawn_app(&db).await;
    let after = expect_json(app.admin_get("/keys").await, StatusCode::OK).await;
    assert_eq!(after, before, "every key, exactly as it was");
    assert_eq!(app.get_key(&a_id).await["name"], "survivor");
    assert_eq!(app.get_key(&b_id).await["status"], "revoked");
    let audit_after = expect_json(app.admin_get("/audit").await, StatusCode::OK).await;
    assert_eq!(audit_after, audit_before);

    // And the restarted server keeps extending the same chain.
    app.create_key(key_body("after restart")).await;
    app.stop().await;
    let verify = cli(&db, &["audit", "verify", "--json"]).await.ok().json();
    assert_eq!(verify["intact"], true);
    assert_eq!(
        verify["rows"], 5,
        "the integrity.enable row and four changes"
    );
}
