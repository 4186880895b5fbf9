//! `/healthz` (the process is alive) and `/readyz` (storage answers; 503 `UNAVAILABLE` when
//! it does not).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestDb, expect_error, expect_json, spawn_app};
use crate::on_both_backends;

on_both_backends!(health_and_readiness);

async fn health_and_readiness(db: TestDb) {
    let app = spawn_app(&db).await;
    let h = expect_json(
        app.client.get(app.url("/healthz")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(h, json!({"status": "ok"}));
    let r = expect_json(
        app.client.get(app.url("/readyz")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(r["status"], "ready");
    let backend = match db.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(r["storage"], backend);
}

/// The database disappears under a running server: `/readyz` fails closed, `/healthz` (the
/// process) stays up, and the admin API answers 503 rather than anything made up.
#[tokio::test]
async fn readyz_is_503_when_the_postgres_database_is_dropped() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app(&db).await;
    assert_eq!(
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    db.drop_postgres_database().await;

    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    expect_error(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "readyz after DROP DATABASE",
    )
    .await;
    let res = app.admin_get("/keys").await;
    expect_error(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "admin list after DROP DATABASE",
    )
    .await;
    let h = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::OK, "the process itself is alive");
}
