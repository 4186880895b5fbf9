//! The SDK (`keybound-sdk`) against this server, in-process on a loopback port: the client's
//! renewal, single flight, retries and error kinds; the verifier's checks on real tokens and
//! its revocation deadline; and the `end_to_end` example.
//!
//! They live here rather than in `sdk/tests` so that the dependency runs one way: the server's
//! tests use the SDK (a dev-dependency, also needed by the examples), while the SDK's own
//! tests run against fakes and build without the server.
//!
//! Server-side counts come from the server, never from the client: a device's
//! `exchange_count` (every token issued to it, by exchange or refresh) through the admin API,
//! a key's `rate_limit_per_minute` (a second exchange would be refused), and for failed
//! requests the `/metrics` counter.

mod client;
mod outage;
mod transport;
mod verifier;

// The example is compiled into this test as a module, so `cargo test` runs exactly the code
// `cargo run --example end_to_end` runs. Its `main` is unused here.
#[allow(dead_code)]
#[path = "../../examples/end_to_end.rs"]
mod end_to_end;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keybound_sdk::{Client, ClientBuilder, DeviceKey, DpopProofBuilder};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect_json};

#[tokio::test]
async fn the_end_to_end_example_runs() {
    end_to_end::run()
        .await
        .unwrap_or_else(|e| panic!("examples/end_to_end.rs: {e}"));
}

/// A key through the admin API with `extra` settings; trusted on enrollment, so devices get
/// their full scopes and the configured TTL from the first exchange.
pub async fn create_key(app: &TestApp, extra: Value) -> Value {
    let mut body = json!({
        "name": "sdk", "env": "test", "scopes": ["read:users", "write:orders"],
        "trust_on_enroll": true,
    });
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    app.create_key(body).await
}

/// A client builder for `created` (a create answer) on `device`.
pub fn client_for(app: &TestApp, created: &Value, device: Arc<dyn DeviceKey>) -> ClientBuilder {
    Client::builder(app.url(""))
        .api_key(api_key(created))
        .device_key(device)
        .device_attribute("platform", "linux")
}

pub fn api_key(created: &Value) -> SecretString {
    SecretString::from(created["key"].as_str().expect("plaintext key").to_owned())
}

pub fn key_id(created: &Value) -> &str {
    created["key_id"].as_str().expect("key_id")
}

/// The key's devices as the admin API lists them.
pub async fn devices(app: &TestApp, key_id: &str) -> Vec<Value> {
    let res = app.admin_get(&format!("/keys/{key_id}/devices")).await;
    let body = expect_json(res, StatusCode::OK).await;
    body["devices"].as_array().expect("devices").clone()
}

/// The claims of a JWT, read without verifying it (the tests compare them).
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// `POST /v1/token` by hand with `device`'s proof (and `nonce`, if given).
pub async fn exchange(
    app: &TestApp,
    created: &Value,
    device: &dyn DeviceKey,
    nonce: Option<&str>,
) -> reqwest::Response {
    let url = app.url("/v1/token");
    let mut proof = DpopProofBuilder::new(device, "POST", &url);
    if let Some(nonce) = nonce {
        proof = proof.nonce(nonce);
    }
    app.client
        .post(url.as_str())
        .header("x-api-key", created["key"].as_str().expect("plaintext key"))
        .header("dpop", proof.sign().expect("proof"))
        .json(&json!({}))
        .send()
        .await
        .expect("request")
}

/// `keybound_http_requests_total` for `route` and `status`. The counter is process-wide, so
/// only use it for outcomes no concurrent test produces.
pub async fn requests_total(app: &TestApp, route: &str, status: u16) -> u64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
    text.lines()
        .filter(|l| l.starts_with("keybound_http_requests_total{"))
        .filter(|l| l.contains(&route) && l.contains(&status))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
