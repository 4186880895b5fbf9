//! Alerts are visible in `GET /admin/v1/alerts` within 1 s of the request that caused them.

use serde_json::Value;

use crate::helpers::TestApp;

/// Polls the alerts endpoint for up to 1 s and returns the newest alert of `kind`.
pub async fn wait_for_alert(app: &TestApp, kind: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let res = app.admin_get(&format!("/alerts?kind={kind}")).await;
        let body: Value = res.json().await.expect("alerts JSON");
        if let Some(a) = body["alerts"].as_array().and_then(|a| a.first()) {
            return a.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} alert within 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
