//! Our tokens, checked by an independent JOSE implementation (`jsonwebtoken`) that knows
//! nothing but the published JWKS JSON — what an offline resource server has (contract
//! section 4).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::*;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "https://api.example.com";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims_at(iat: u64, ttl_seconds: u64) -> AccessClaims {
    AccessClaims::new(
        &AccessGrant {
            issuer: ISSUER,
            key_id: "ak_prod_0123456789ab",
            audience: AUDIENCE,
            scope: "read:users",
            jkt: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
            device_id: "dev_1",
            trust: GrantedTrust::Trusted,
            att: None,
            ttl_seconds,
            status_idx: 0,
        },
        iat,
    )
}

/// A resource server's check: find the JWKS key by the token's `kid`, then verify with
/// EdDSA only, requiring and checking `iss`, `aud`, `exp`, `nbf` and `sub`.
fn verify_with_jwks(token: &str, jwks_json: &str) -> jsonwebtoken::errors::Result<AccessClaims> {
    let jwks: JwkSet = serde_json::from_str(jwks_json).expect("our JWKS parses as a JwkSet");
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.expect("tokens carry a kid");
    let jwk = jwks.find(&kid).ok_or(ErrorKind::InvalidKeyFormat)?;
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = 0;
    jsonwebtoken::decode::<AccessClaims>(token, &key, &validation).map(|data| data.claims)
}

fn kind(result: jsonwebtoken::errors::Result<AccessClaims>) -> ErrorKind {
    result.expect_err("verification must fail").into_kind()
}

#[test]
fn an_access_token_verifies_with_only_the_jwks() {
    let key = SigningKey::generate();
    let claims = claims_at(now(), 300);
    let token = claims.sign(&key);
    let jwks = jwks_json(&[&key]).to_string();

    assert_eq!(verify_with_jwks(&token, &jwks).unwrap(), claims);

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(key.kid()));
}

#[test]
fn a_token_from_a_retired_key_still_verifies_while_published() {
    let (retired, active) = (SigningKey::generate(), SigningKey::generate());
    let jwks = jwks_json(&[&active, &retired]).to_string();
    let token = claims_at(now(), 300).sign(&retired);
    assert!(verify_with_jwks(&token, &jwks).is_ok());
    // Once unpublished, it no longer verifies.
    let jwks = jwks_json(&[&active]).to_string();
    assert_eq!(
        kind(verify_with_jwks(&token, &jwks)),
        ErrorKind::InvalidKeyFormat
    );
}

#[test]
fn a_tampered_token_fails() {
    let key = SigningKey::generate();
    let jwks = jwks_json(&[&key]).to_string();
    let token = claims_at(now(), 300).sign(&key);
    let parts: Vec<&str> = token.split('.').collect();

    // Widen the scope, keep the signature.
    let mut forged = claims_at(now(), 300);
    forged.scope = "admin".to_owned();
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    let forged_token = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(
        kind(verify_with_jwks(&forged_token, &jwks)),
        ErrorKind::InvalidSignature,
        "payload swapped"
    );

    // Flip one signature bit (the first character keeps all 6 of its bits significant).
    let mut signature = parts[2].to_owned();
    let first = if signature.starts_with('A') { "B" } else { "A" };
    signature.replace_range(0..1, first);
    let bad_signature = format!("{}.{}.{signature}", parts[0], parts[1]);
    assert_eq!(
        kind(verify_with_jwks(&bad_signature, &jwks)),
        ErrorKind::InvalidSignature,
        "signature altered"
    );

    // Signed by a key that is not in the JWKS, but claiming the published kid.
    let intruder = SigningKey::generate();
    let intruder_token = intruder.sign_jws("at+jwt", &claims_at(now(), 300));
    let intruder_parts: Vec<&str> = intruder_token.split('.').collect();
    let relabelled = format!("{}.{}.{}", parts[0], intruder_parts[1], intruder_parts[2]);
    assert_eq!(
        kind(verify_with_jwks(&relabelled, &jwks)),
        ErrorKind::InvalidSignature,
        "another key's signature"
    );
}

#[test]
fn wrong_issuer_audience_or_time_fails() {
    let key = SigningKey::generate();
    let jwks = jwks_json(&[&key]).to_string();

    let mut other_issuer = claims_at(now(), 300);
    other_issuer.iss = "https://evil.example".to_owned();
    assert_eq!(
        kind(verify_with_jwks(&other_issuer.sign(&key), &jwks)),
        ErrorKind::InvalidIssuer
    );

    let mut other_audience = claims_at(now(), 300);
    other_audience.aud = "https://other.example".to_owned();
    assert_eq!(
        kind(verify_with_jwks(&other_audience.sign(&key), &jwks)),
        ErrorKind::InvalidAudience
    );

    let expired = claims_at(now() - 3600, 300);
    assert_eq!(
        kind(verify_with_jwks(&expired.sign(&key), &jwks)),
        ErrorKind::ExpiredSignature
    );

    let future = claims_at(now() + 600, 300);
    assert_eq!(
        kind(verify_with_jwks(&future.sign(&key), &jwks)),
        ErrorKind::ImmatureSignature
    );
}

#[test]
fn the_revocation_list_typ_is_signed_the_same_way() {
    let key = SigningKey::generate();
    let jws = key.sign_jws(
        signing::TYP_REVOCATIONS,
        &serde_json::json!({"iss": ISSUER, "iat": now(), "revocations": [], "next": "0"}),
    );
    let header = jsonwebtoken::decode_header(&jws).unwrap();
    assert_eq!(header.typ.as_deref(), Some("revocations+jwt"));
    assert_eq!(header.kid.as_deref(), Some(key.kid()));

    let jwks: JwkSet = serde_json::from_value(jwks_json(&[&key])).unwrap();
    let decoding = DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.set_issuer(&[ISSUER]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&jws, &decoding, &validation).unwrap();
    assert_eq!(data.claims["next"], "0");
}
