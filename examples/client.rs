//! An app using keybound: exchanges its API key for a device-bound token, calls a resource
//! server with it, and keeps going so the refreshes show.
//!
//! ```sh
//! KEYBOUND_API_KEY=sk_test_… cargo run --example client
//! ```
//!
//! Settings (environment): `KEYBOUND_URL` (default `http://127.0.0.1:8080`), `KEYBOUND_API_KEY`
//! (required), `RESOURCE_URL` (default `http://127.0.0.1:3000/v1/whoami`, the
//! `resource_server` example), `DEVICE_KEY_PATH` (default `keybound-device.key`).

use keybound_sdk::{Client, DeviceKey, Ed25519DeviceKey, ErrorKind};
use std::env;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let issuer = env::var("KEYBOUND_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let resource =
        env::var("RESOURCE_URL").unwrap_or_else(|_| "http://127.0.0.1:3000/v1/whoami".into());
    let key_path = env::var("DEVICE_KEY_PATH").unwrap_or_else(|_| "keybound-device.key".into());
    let api_key = env::var("KEYBOUND_API_KEY")
        .map_err(|_| "set KEYBOUND_API_KEY to a key from `keybound keys create`")?;

    // The device key is the device's identity: keep it across runs.
    let device = Arc::new(Ed25519DeviceKey::load_or_create(&key_path)?);
    println!("device key {key_path}, thumbprint {}", device.thumbprint()?);

    let client = Client::builder(&issuer)
        .api_key(api_key.into())
        .device_key(device)
        .device_name("keybound-sdk example")
        .device_attribute("platform", env::consts::OS)
        .device_attribute("app_version", env!("CARGO_PKG_VERSION"))
        .build()?;
    let http = reqwest::Client::new();

    let mut current = None;
    loop {
        match client.token().await {
            Ok(token) => {
                if current.as_deref() != Some(token.expose_secret()) {
                    let left = token
                        .expires_at()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    println!(
                        "new token: scope {:?}, device {} ({}, score {:.2}), expires in {}s",
                        token.scope(),
                        token.device_id(),
                        token.trust_level(),
                        token.trust_score(),
                        left.as_secs()
                    );
                    current = Some(token.expose_secret().to_owned());
                }
            }
            Err(e) if e.kind() == &ErrorKind::InvalidApiKey => {
                eprintln!("the API key was refused (revoked, suspended, expired or wrong): {e}");
                return Ok(());
            }
            Err(e) => {
                eprintln!("no token: {e}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        }

        let headers = client.authorize("GET", &resource).await?;
        match http.get(&resource).headers(headers).send().await {
            Ok(response) => {
                let status = response.status();
                println!("GET {resource} -> {status} {}", response.text().await?);
            }
            Err(e) => println!("GET {resource} failed: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
