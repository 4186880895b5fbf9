//! `keybound audit verify`: intact after a series of operations from the CLI and the API;
//! an edited or deleted row is named by its `seq` with a non-zero exit. Row 1 is always the
//! `integrity.enable` row the first start (server or CLI) writes; see tests/api/integrity.rs
//! for checkpoints.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{CliOutput, TestDb, cli, expect_json, key_body, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    verify_passes_after_a_series_of_operations,
    an_edited_row_is_named,
    a_deleted_row_is_named,
);

/// Creates five audit rows (create, suspend, resume, rotate, revoke) from the CLI and the
/// API after the enable row; returns the API's view of all six.
async fn series(db: &TestDb) -> Vec<Value> {
    let app = spawn_app(db).await;
    let a = app.create_key(key_body("a")).await;
    let id = a["key_id"].as_str().unwrap().to_owned();
    cli(db, &["keys", "suspend", &id]).await.ok();
    expect_json(
        app.admin_post(&format!("/keys/{id}/resume"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    let rotated = cli(db, &["keys", "rotate", &id, "--json"])
        .await
        .ok()
        .json();
    let new_id = rotated["key_id"].as_str().unwrap();
    expect_json(
        app.admin_post(
            &format!("/keys/{new_id}/revoke"),
            json!({"reason": "end of test"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let log = expect_json(app.admin_get("/audit").await, StatusCode::OK).await;
    app.stop().await;
    log["entries"].as_array().unwrap().clone()
}

fn assert_broken_at(out: &CliOutput, seq: i64, why: &str) {
    assert_eq!(out.code, 1, "{why}: {out:?}");
    assert!(
        out.all().contains(&format!("seq {seq}:")),
        "{why}: names seq {seq}: {out:?}"
    );
}

async fn verify_passes_after_a_series_of_operations(db: TestDb) {
    let empty = cli(&db, &["audit", "verify", "--json"]).await.ok().json();
    assert_eq!(empty["intact"], true);
    assert_eq!(
        empty["rows"], 1,
        "a new log holds its integrity.enable row: {empty}"
    );

    let entries = series(&db).await;
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "integrity.enable",
            "key.create",
            "key.suspend",
            "key.resume",
            "key.rotate",
            "key.revoke"
        ]
    );
    let actors: Vec<&str> = entries
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(
        actors,
        [
            "system",
            "admin-api",
            "cli",
            "admin-api",
            "cli",
            "admin-api"
        ]
    );
    let head = entries.last().unwrap()["hash"].as_str().unwrap();

    let out = cli(&db, &["audit", "verify"]).await.ok();
    assert!(out.stdout.contains("6 rows"), "{out:?}");
    assert!(out.stdout.contains(head), "prints the head MAC: {out:?}");
    let v = cli(&db, &["audit", "verify", "--json"]).await.ok().json();
    assert_eq!(
        v,
        json!({"intact": true, "rows": 6, "head_hash": head, "checkpoint_seq": null})
    );
}

async fn an_edited_row_is_named(db: TestDb) {
    let entries = series(&db).await;
    let original_details = serde_json::to_string(&entries[4]["details"]).unwrap();
    let edits = [
        (
            3,
            "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3",
            "UPDATE audit_log SET actor = 'cli' WHERE seq = 3",
            "actor",
        ),
        (
            5,
            "UPDATE audit_log SET details = '{\"new_key_id\": \"ak_prod_AAAAAAAAAAAA\"}' WHERE seq = 5",
            &*format!("UPDATE audit_log SET details = '{original_details}' WHERE seq = 5"),
            "details",
        ),
        (
            4,
            "UPDATE audit_log SET at = at + 1 WHERE seq = 4",
            "UPDATE audit_log SET at = at - 1 WHERE seq = 4",
            "time",
        ),
        (
            6,
            "UPDATE audit_log SET ip = '10.9.9.9' WHERE seq = 6",
            "UPDATE audit_log SET ip = '127.0.0.1' WHERE seq = 6",
            "ip of the newest row",
        ),
        (
            1,
            "UPDATE audit_log SET action = 'key.create' WHERE seq = 1",
            "UPDATE audit_log SET action = 'integrity.enable' WHERE seq = 1",
            "the enable row",
        ),
    ];
    for (seq, tamper, restore, what) in edits {
        assert_eq!(db.execute(tamper).await, 1, "{what}: one row edited");
        let out = cli(&db, &["audit", "verify"]).await;
        assert_broken_at(&out, seq, what);
        let v = cli(&db, &["audit", "verify", "--json"]).await;
        assert_eq!(v.code, 1);
        assert_eq!(v.json()["seq"], seq, "{what}");
        assert_eq!(v.json()["intact"], false, "{what}");

        db.execute(restore).await;
        cli(&db, &["audit", "verify"]).await.ok();
    }
}

async fn a_deleted_row_is_named(db: TestDb) {
    series(&db).await;
    assert_eq!(db.execute("DELETE FROM audit_log WHERE seq = 3").await, 1);
    let out = cli(&db, &["audit", "verify"]).await;
    assert_broken_at(&out, 3, "middle row deleted");
    assert!(out.stdout.is_empty(), "the finding goes to stderr: {out:?}");

    assert_eq!(db.execute("DELETE FROM audit_log WHERE seq = 1").await, 1);
    let out = cli(&db, &["audit", "verify"]).await;
    assert_broken_at(&out, 1, "first row deleted");
}
