//! keybound from end to end, in one process: the server on a throwaway SQLite database, an API
//! key, an app using the SDK's `Client`, a resource server checking tokens offline with the
//! SDK's `Verifier`, and an attacker holding a stolen token.
//!
//! ```sh
//! cargo run --example end_to_end
//! ```
//!
//! It takes a few seconds (tokens live 3 s here, so that a refresh happens during the run) and
//! exits 0 when every step went as it should; otherwise it stops at the first step that did
//! not and says which. Everything listens on 127.0.0.1 and nothing is written outside a
//! temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::get;
use axum::{Json, Router};
use keybound_sdk::{
    AccessToken, Client, DeviceKey, DpopProofBuilder, Ed25519DeviceKey, ErrorKind, VerifiedToken,
    Verifier,
};
use rand::Rng;
use rand::distributions::Alphanumeric;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use secrecy::SecretString;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Access tokens live 3 s here (the server's default is 300 s) so that the refresh shows.
const ACCESS_TTL_SECONDS: u64 = 3;
/// How often the resource server reads keybound's revocation feed (the SDK's default is 5 s).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> Result<(), Error> {
    run().await
}

/// The whole walk-through. An `Err` names the first step that did not behave as described.
pub async fn run() -> Result<(), Error> {
    // keybound runs in-process on a database in a temporary directory. `for_tests` gives the
    // settings an embedded server wants: 127.0.0.1 on a port the OS picks and a random master
    // key, so no key file is written to the working directory.
    let dir = tempfile::tempdir()?;
    let database = format!("sqlite://{}", dir.path().join("keybound.db").display());
    let store = keybound::store::open(&database).await?;
    let admin_token = random_secret();
    let mut args = keybound::config::ServeArgs::for_tests();
    args.admin_token = Some(SecretString::from(admin_token.clone()));
    args.access_ttl_seconds = ACCESS_TTL_SECONDS;
    let keybound = keybound::server::start(args, store).await?;
    let issuer = format!("http://{}", keybound.addr);
    step(1, format!("keybound is listening on {issuer} ({database})"));

    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{issuer}/admin/v1/keys"))
        .bearer_auth(&admin_token)
        .json(&json!({
            "name": "end-to-end example",
            "env": "test",
            "scopes": ["read:users", "write:orders"],
            // A new device is `limited` unless the key trusts devices on enrollment.
            "trust_on_enroll": true,
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let key_id = created["key_id"].as_str().ok_or("no key_id")?;
    let api_key = SecretString::from(created["key"].as_str().ok_or("no key")?.to_owned());
    step(
        2,
        format!(
            "an operator created the API key {key_id} (its secret is shown once; kept in memory here)"
        ),
    );

    // The resource server knows keybound only by its issuer URL: the SDK discovers the JWKS
    // and polls the revocation feed; no call to keybound per request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let verifier = Verifier::builder(&issuer)
        .resource_url(&api)
        .revocation_poll_interval(POLL_INTERVAL)
        .build()
        .await?;
    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .with_state(Arc::new(verifier));
    let resource_server = tokio::spawn(async move { axum::serve(listener, app).await });
    step(3, format!("a resource server is listening on {api}"));

    // The app: its device key is its identity (a real app keeps it with
    // `Ed25519DeviceKey::load_or_create` or in a platform keystore).
    let device = Arc::new(Ed25519DeviceKey::generate());
    let client = app_client(&issuer, &api_key, device.clone())?;
    let token = client.token().await?;
    step(
        4,
        format!(
            "the app exchanged its key for a token bound to its device key: device {}, {} (score {:.2}), scope {:?}, {} s left",
            token.device_id(),
            token.trust_level(),
            token.trust_score(),
            token.scope(),
            seconds_left(&token),
        ),
    );

    let whoami = format!("{api}/v1/whoami");
    let captured = client.authorize("GET", &whoami).await?;
    let (status, body) = get_whoami(&http, &whoami, captured.clone()).await?;
    check(status == StatusCode::OK, "the app's own call is accepted")?;
    step(
        5,
        format!("GET /v1/whoami with the token and a fresh DPoP proof -> {status} {body}"),
    );

    step(
        6,
        "an attacker copies that request off the wire (token and proof), but not the device key:",
    );
    let stolen = token.expose_secret();
    attack(&http, &whoami, "replays the request as it was", captured).await?;
    let token_only = headers(&[(AUTHORIZATION.as_str(), format!("DPoP {stolen}"))]);
    attack(
        &http,
        &whoami,
        "sends the token without a proof",
        token_only,
    )
    .await?;
    let as_bearer = headers(&[(AUTHORIZATION.as_str(), format!("Bearer {stolen}"))]);
    attack(&http, &whoami, "sends it as a Bearer token", as_bearer).await?;
    let own_key = Ed25519DeviceKey::generate();
    let own_proof = DpopProofBuilder::new(&own_key, "GET", &whoami)
        .access_token(stolen)
        .sign()?;
    let with_own_proof = headers(&[
        (AUTHORIZATION.as_str(), format!("DPoP {stolen}")),
        ("dpop", own_proof),
    ]);
    attack(
        &http,
        &whoami,
        "signs a fresh proof with a key of its own",
        with_own_proof,
    )
    .await?;

    // The client renews once less than 20 % of the token's life is left.
    let renew_at = token
        .expires_at()
        .checked_sub(Duration::from_millis(400))
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    tokio::time::sleep(renew_at).await;
    let renewed = client.token().await?;
    check(
        renewed.expose_secret() != token.expose_secret()
            && renewed.device_id() == token.device_id(),
        "the client renews the token for the same device",
    )?;
    let (status, _) = get_whoami(&http, &whoami, client.authorize("GET", &whoami).await?).await?;
    check(status == StatusCode::OK, "the renewed token is accepted")?;
    step(
        7,
        format!(
            "{} s before expiry the client refreshed: a new token for the same device, {} s left; GET /v1/whoami -> {status}",
            seconds_left(&token),
            seconds_left(&renewed),
        ),
    );

    let revoked = Instant::now();
    http.post(format!(
        "{issuer}/admin/v1/devices/{}/revoke",
        renewed.device_id()
    ))
    .bearer_auth(&admin_token)
    .send()
    .await?
    .error_for_status()?;
    let refused_after = loop {
        // A fresh proof each time: a replayed one would be refused for that reason instead.
        let (status, _) = get_whoami(&http, &whoami, signed(&*device, &renewed, &whoami)?).await?;
        if status == StatusCode::UNAUTHORIZED {
            break revoked.elapsed();
        }
        check(
            revoked.elapsed() < 3 * POLL_INTERVAL,
            "the revocation reaches the resource server within its poll interval",
        )?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    step(
        8,
        format!(
            "an operator revoked the device; {} ms later the resource server refused its still unexpired token (poll interval {} ms)",
            refused_after.as_millis(),
            POLL_INTERVAL.as_millis(),
        ),
    );

    let again = app_client(&issuer, &api_key, device)?.token().await;
    let refused = matches!(&again, Err(e) if e.kind() == &ErrorKind::DeviceRevoked);
    check(refused, "keybound refuses the revoked device a new token")?;
    step(
        9,
        "and keybound refuses that device a new token: DEVICE_REVOKED",
    );

    resource_server.abort();
    keybound.stop().await;
    println!("done: every step behaved as described");
    Ok(())
}

/// The resource server's one route: who is calling, from the verified token.
async fn whoami(token: VerifiedToken) -> Json<Value> {
    Json(json!({
        "api_key": token.subject(),
        "device_id": token.device_id(),
        "scopes": token.scopes(),
    }))
}

fn app_client(
    issuer: &str,
    api_key: &SecretString,
    device: Arc<Ed25519DeviceKey>,
) -> keybound_sdk::Result<Client> {
    Client::builder(issuer)
        .api_key(api_key.clone())
        .device_key(device)
        .device_name("end-to-end example")
        .device_attribute("platform", std::env::consts::OS)
        .build()
}

/// A call to the resource server; its status and body.
async fn get_whoami(
    http: &reqwest::Client,
    url: &str,
    headers: HeaderMap,
) -> Result<(StatusCode, String), Error> {
    let response = http.get(url).headers(headers).send().await?;
    Ok((response.status(), response.text().await?))
}

/// One attempt with a stolen token, which must be refused.
async fn attack(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    headers: HeaderMap,
) -> Result<(), Error> {
    let response = http.get(url).headers(headers).send().await?;
    let status = response.status();
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    println!("    it {what} -> {status}, WWW-Authenticate: {challenge}");
    check(
        status == StatusCode::UNAUTHORIZED,
        &format!("the resource server refuses an attacker who {what}"),
    )
}

/// The two headers for `url` with `token`, built by hand (what `Client::authorize` does).
fn signed(device: &dyn DeviceKey, token: &AccessToken, url: &str) -> Result<HeaderMap, Error> {
    let proof = DpopProofBuilder::new(device, "GET", url)
        .access_token(token.expose_secret())
        .sign()?;
    Ok(headers(&[
        (
            AUTHORIZATION.as_str(),
            format!("DPoP {}", token.expose_secret()),
        ),
        ("dpop", proof),
    ]))
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).expect("valid name");
        map.insert(name, HeaderValue::from_str(value).expect("valid value"));
    }
    map
}

fn seconds_left(token: &AccessToken) -> String {
    let left = token
        .expires_at()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    format!("{:.1}", left.as_secs_f64())
}

fn random_secret() -> String {
    rand::thread_rng()
        .sample_iter(Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

fn step(n: u32, what: impl AsRef<str>) {
    println!("[{n}] {}", what.as_ref());
}

fn check(ok: bool, expectation: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected: {expectation}").into())
    }
}
