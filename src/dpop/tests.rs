//! Proof verification tests. Proofs are built and signed by `jsonwebtoken`, an independent
//! JOSE implementation, so these tests check interoperability and not just self-consistency.
//! Hand-made headers (for attacks `jsonwebtoken` refuses to build) are still signed by it.

use super::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use rand::rngs::OsRng;
use serde_json::{Value, json};

const NOW: i64 = 1_700_000_000;
const HTU: &str = "https://auth.example.com/v1/token";

/// A device key: the PKCS#8 signing key for `jsonwebtoken` and its public JWK as
/// `jsonwebtoken` derives it.
struct DeviceKeyPair {
    encoding: EncodingKey,
    alg: Algorithm,
    jwk: Jwk,
}

impl DeviceKeyPair {
    fn ed25519() -> Self {
        Self::ed25519_from(&ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    fn ed25519_from(signing: &ed25519_dalek::SigningKey) -> Self {
        // PKCS#8 v1 (RFC 8410 without the optional public key): the form jsonwebtoken
        // derives a JWK from.
        let pkcs8 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: signing.to_bytes(),
            public_key: None,
        };
        let der = pkcs8.to_pkcs8_der().unwrap();
        Self::from_der(EncodingKey::from_ed_der(der.as_bytes()), Algorithm::EdDSA)
    }

    fn p256() -> Self {
        let secret = p256::SecretKey::random(&mut OsRng);
        let der = secret.to_pkcs8_der().unwrap();
        Self::from_der(EncodingKey::from_ec_der(der.as_bytes()), Algorithm::ES256)
    }

    fn from_der(encoding: EncodingKey, alg: Algorithm) -> Self {
        let jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        Self { encoding, alg, jwk }
    }

    fn jwk_value(&self) -> Value {
        serde_json::to_value(&self.jwk).unwrap()
    }

    /// A proof with `jsonwebtoken`'s own header type.
    fn proof(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.typ = Some(DPOP_TYP.to_owned());
        header.jwk = Some(self.jwk.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// A proof with a hand-made header, signed by `jsonwebtoken` with this key.
    fn proof_with_header(&self, header: &Value, claims: &Value) -> String {
        sign_raw(header, claims, &self.encoding, self.alg)
    }

    fn header(&self) -> Value {
        json!({"typ": DPOP_TYP, "alg": alg_name(self.alg), "jwk": self.jwk_value()})
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::HS256 => "HS256",
        other => panic!("unused in tests: {other:?}"),
    }
}

fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{signature}")
}

fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    )
}

fn claims() -> Value {
    json!({
        "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        "htm": "POST",
        "htu": HTU,
        "iat": NOW,
    })
}

fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn verify(proof: &str) -> Result<VerifiedProof, DpopError> {
    verify_proof(proof, "POST", HTU, NOW, &VerifyOptions::default())
}

// The RFC 7638 / RFC 8037 test vectors (thumbprints, the A.4/A.5 Ed25519 signature) run in
// the `keybound-jose` crate, where the code they check lives.

// ---------------------------------------------------------------------------------------
// Proofs that must be accepted

#[test]
fn accepts_an_eddsa_proof_made_by_jsonwebtoken() {
    let key = DeviceKeyPair::ed25519();
    let claims = claims();
    let verified = verify(&key.proof(&claims)).expect("valid EdDSA proof");

    assert_eq!(verified.alg, ProofAlg::EdDsa);
    assert_eq!(verified.jti, claims["jti"].as_str().unwrap());
    assert_eq!(verified.iat, NOW);
    assert_eq!(verified.nonce, None);
    assert_eq!(verified.ath, None);
    // jsonwebtoken computes the thumbprint independently.
    assert_eq!(
        verified.jkt,
        key.jwk.thumbprint(ThumbprintHash::SHA256).unwrap()
    );
    let presented = key.jwk_value();
    assert_eq!(
        *verified.jwk(),
        json!({"kty": "OKP", "crv": "Ed25519", "x": presented["x"]}),
        "only the thumbprint members are kept (jsonwebtoken also sends alg)"
    );
}

#[test]
fn accepts_an_es256_proof_made_by_jsonwebtoken() {
    let key = DeviceKeyPair::p256();
    let verified = verify(&key.proof(&claims())).expect("valid ES256 proof");
    assert_eq!(verified.alg, ProofAlg::Es256);
    assert_eq!(
        verified.jkt,
        key.jwk.thumbprint(ThumbprintHash::SHA256).unwrap()
    );
    let presented = key.jwk_value();
    assert_eq!(
        *verified.jwk(),
        json!({"kty": "EC", "crv": "P-256", "x": presented["x"], "y": presented["y"]})
    );
}

#[test]
fn accepts_the_rfc_9864_ed25519_alg_name() {
    let key = DeviceKeyPair::ed25519();
    let mut header = key.header();
    header["alg"] = json!("Ed25519");
    let verified = verify(&key.proof_with_header(&header, &claims())).unwrap();
    assert_eq!(verified.alg, ProofAlg::Ed25519);
}

#[test]
fn returns_nonce_and_ath_for_the_caller_to_check() {
    let key = DeviceKeyPair::ed25519();
    let proof = key.proof(&claims_with(
        json!({"nonce": "n-123", "ath": "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"}),
    ));
    let verified = verify(&proof).unwrap();
    assert_eq!(verified.nonce.as_deref(), Some("n-123"));
    assert_eq!(
        verified.ath.as_deref(),
        Some("fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo")
    );
}

#[test]
fn accepts_iat_at_both_ends_of_the_window_and_fractional_iat() {
    let key = DeviceKeyPair::ed25519();
    for iat in [json!(NOW - 60), json!(NOW + 60), json!(NOW as f64 + 0.75)] {
        let verified = verify(&key.proof(&claims_with(json!({"iat": iat})))).unwrap();
        assert!((NOW - 60..=NOW + 60).contains(&verified.iat), "{iat}");
    }
    let verified = verify(&key.proof(&claims_with(json!({"iat": NOW as f64 + 0.75})))).unwrap();
    assert_eq!(verified.iat, NOW, "fractional iat is rounded down");
}

#[test]
fn htu_is_compared_after_normalisation_ignoring_query_and_fragment() {
    let key = DeviceKeyPair::p256();
    for htu in [
        "https://auth.example.com/v1/token?foo=bar",
        "https://auth.example.com/v1/token#frag",
        "HTTPS://AUTH.example.com:443/v1/token",
    ] {
        let proof = key.proof(&claims_with(json!({"htu": htu})));
        assert!(verify(&proof).is_ok(), "{htu} should match {HTU}");
    }
    // The expected URI is normalised too.
    let proof = key.proof(&claims());
    let verified = verify_proof(
        &proof,
        "POST",
        "https://Auth.Example.com:443/v1/token?ignored",
        NOW,
        &VerifyOptions::default(),
    );
    assert!(verified.is_ok());
}

/// ECDSA signatures are malleable: (r, n - s) verifies whenever (r, s) does. We accept high-S
/// (see `DeviceKey::verify`); replay protection keys on `jti`, which stays the same.
#[test]
fn accepts_a_high_s_es256_signature() {
    let key = DeviceKeyPair::p256();
    let claims = claims();
    let proof = key.proof(&claims);
    let (input, sig_b64) = proof.rsplit_once('.').unwrap();
    let sig =
        p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig_b64).unwrap()).unwrap();
    let flipped =
        p256::ecdsa::Signature::from_scalars(sig.r().to_bytes(), (-*sig.s()).to_bytes()).unwrap();
    assert_ne!(sig, flipped);
    let high = if sig.normalize_s().is_some() {
        sig
    } else {
        flipped
    };
    let low = if sig.normalize_s().is_some() {
        flipped
    } else {
        sig
    };

    for s in [high, low] {
        let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(s.to_bytes()));
        let verified = verify(&proof).expect("both S forms verify");
        assert_eq!(verified.jti, claims["jti"].as_str().unwrap());
        assert_eq!(
            verified.replay_key(),
            format!("{}:{}", verified.jkt, verified.jti),
            "so a malleated copy has the same replay key"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Proofs that must be refused

#[test]
fn refuses_alg_none() {
    let key = DeviceKeyPair::ed25519();
    let mut header = key.header();
    header["alg"] = json!("none");
    assert_eq!(
        verify(&unsigned(&header, &claims(), "")),
        Err(DpopError::AlgNotAllowed)
    );
}

/// HS256 with a key in the header is the classic "the attacker picks the key" attack.
#[test]
fn refuses_hs256_even_when_correctly_signed() {
    let secret = EncodingKey::from_secret(b"attacker-chosen secret");
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some(DPOP_TYP.to_owned());
    header.jwk = Some(Jwk::from_encoding_key(&secret, Algorithm::HS256).unwrap());
    let proof = jsonwebtoken::encode(&header, &claims(), &secret).unwrap();
    assert_eq!(verify(&proof), Err(DpopError::AlgNotAllowed));

    // Key confusion: HMAC keyed with the device's public key bytes.
    let device = DeviceKeyPair::ed25519();
    let public = URL_SAFE_NO_PAD
        .decode(device.jwk_value()["x"].as_str().unwrap())
        .unwrap();
    let mut header = device.header();
    header["alg"] = json!("HS256");
    let proof = sign_raw(
        &header,
        &claims(),
        &EncodingKey::from_secret(&public),
        Algorithm::HS256,
    );
    assert_eq!(verify(&proof), Err(DpopError::AlgNotAllowed));
}

#[test]
fn refuses_every_other_alg_name() {
    let key = DeviceKeyPair::ed25519();
    for alg in [
        json!("RS256"),
        json!("PS256"),
        json!("ES384"),
        json!("ES256K"),
        json!("eddsa"),
        json!("EDDSA"),
        json!("Ed448"),
        json!(""),
        json!(null),
        json!(1),
        json!(["EdDSA"]),
    ] {
        let mut header = key.header();
        header["alg"] = alg.clone();
        // Signed with the real Ed25519 key, so only the alg name is wrong.
        let proof = sign_raw(&header, &claims(), &key.encoding, Algorithm::EdDSA);
        assert_eq!(verify(&proof), Err(DpopError::AlgNotAllowed), "alg {alg}");
    }
    let mut header = key.header();
    header.as_object_mut().unwrap().remove("alg");
    let proof = sign_raw(&header, &claims(), &key.encoding, Algorithm::EdDSA);
    assert_eq!(verify(&proof), Err(DpopError::AlgNotAllowed), "alg missing");
}

#[test]
fn refuses_a_key_that_does_not_fit_alg() {
    let ed = DeviceKeyPair::ed25519();
    let ec = DeviceKeyPair::p256();

    let mut header = ed.header();
    header["alg"] = json!("ES256");
    let proof = sign_raw(&header, &claims(), &ec.encoding, Algorithm::ES256);
    assert_eq!(
        verify(&proof),
        Err(DpopError::KeyAlgMismatch),
        "ES256 with an OKP jwk"
    );

    let mut header = ec.header();
    header["alg"] = json!("EdDSA");
    let proof = sign_raw(&header, &claims(), &ed.encoding, Algorithm::EdDSA);
    assert_eq!(
        verify(&proof),
        Err(DpopError::KeyAlgMismatch),
        "EdDSA with an EC jwk"
    );
}

#[test]
fn refuses_wrong_or_missing_typ() {
    let key = DeviceKeyPair::ed25519();
    for typ in [
        json!("JWT"),
        json!("at+jwt"),
        json!("DPOP+JWT"),
        json!("application/dpop+jwt"),
        json!(""),
        json!(null),
        json!(7),
    ] {
        let mut header = key.header();
        header["typ"] = typ.clone();
        assert_eq!(
            verify(&key.proof_with_header(&header, &claims())),
            Err(DpopError::WrongTyp),
            "typ {typ}"
        );
    }
    let mut header = key.header();
    header.as_object_mut().unwrap().remove("typ");
    assert_eq!(
        verify(&key.proof_with_header(&header, &claims())),
        Err(DpopError::WrongTyp)
    );
}

#[test]
fn refuses_private_key_material_in_jwk() {
    let signing = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let key = DeviceKeyPair::ed25519_from(&signing);
    let mut header = key.header();
    // The proof is correctly signed by the very key whose private half it leaks.
    header["jwk"]["d"] = json!(URL_SAFE_NO_PAD.encode(signing.to_bytes()));
    assert_eq!(
        verify(&key.proof_with_header(&header, &claims())),
        Err(DpopError::PrivateKeyInJwk)
    );

    // Every private member of RFC 7518 §6 and RFC 8037, the list the SDK's verifier refuses too
    // (`sdk/src/dpop/check.rs`, `every_private_jwk_member_is_refused_as_the_server_refuses_it`):
    // both run the one list of `keybound-jose`.
    let ec = DeviceKeyPair::p256();
    for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        let mut header = ec.header();
        header["jwk"][member] = json!("AQAB");
        assert_eq!(
            verify(&ec.proof_with_header(&header, &claims())),
            Err(DpopError::PrivateKeyInJwk),
            "member {member}"
        );
    }
}

#[test]
fn refuses_missing_jwk_and_crit() {
    let key = DeviceKeyPair::ed25519();
    let mut header = key.header();
    header.as_object_mut().unwrap().remove("jwk");
    header["kid"] = json!("device-1");
    assert_eq!(
        verify(&key.proof_with_header(&header, &claims())),
        Err(DpopError::MissingJwk)
    );

    // RFC 7515 §4.1.3: jwk is a JSON object, so anything else is a malformed header.
    let mut header = key.header();
    header["jwk"] = json!("not an object");
    assert_eq!(
        verify(&key.proof_with_header(&header, &claims())),
        Err(DpopError::Malformed)
    );

    let mut header = key.header();
    header["crit"] = json!(["b64"]);
    header["b64"] = json!(false);
    assert_eq!(
        verify(&key.proof_with_header(&header, &claims())),
        Err(DpopError::UnsupportedCrit)
    );
}

#[test]
fn refuses_a_signature_by_another_key() {
    for (claimed, signer) in [
        (DeviceKeyPair::ed25519(), DeviceKeyPair::ed25519()),
        (DeviceKeyPair::p256(), DeviceKeyPair::p256()),
    ] {
        let proof = sign_raw(&claimed.header(), &claims(), &signer.encoding, signer.alg);
        assert_eq!(verify(&proof), Err(DpopError::BadSignature));
    }
}

#[test]
fn refuses_tampered_payload_and_signature() {
    let key = DeviceKeyPair::ed25519();
    let proof = key.proof(&claims());
    let (header, rest) = proof.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();

    let forged_claims =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims_with(json!({"jti": "forged"}))).unwrap());
    assert_eq!(
        verify(&format!("{header}.{forged_claims}.{signature}")),
        Err(DpopError::BadSignature)
    );

    let truncated = &signature[..signature.len() - 2];
    assert!(
        verify(&format!(
            "{header}.{rest_payload}.{truncated}",
            rest_payload = rest.split_once('.').unwrap().0
        ))
        .is_err()
    );
    assert_eq!(
        verify(&format!("{header}.{}.", rest.split_once('.').unwrap().0)),
        Err(DpopError::BadSignature)
    );
}

#[test]
fn refuses_wrong_htm() {
    let key = DeviceKeyPair::ed25519();
    for htm in ["GET", "post", "PUT", ""] {
        let proof = key.proof(&claims_with(json!({"htm": htm})));
        assert_eq!(verify(&proof), Err(DpopError::HtmMismatch), "htm {htm}");
    }
    let proof = key.proof(&claims_with(json!({"htm": null})));
    assert_eq!(verify(&proof), Err(DpopError::InvalidClaim("htm")));
}

#[test]
fn refuses_wrong_htu() {
    let key = DeviceKeyPair::p256();
    for htu in [
        "https://auth.example.com/v1/token/refresh",
        "https://evil.example.com/v1/token",
        "http://auth.example.com/v1/token",
        "https://auth.example.com:8443/v1/token",
        "https://auth.example.com/V1/token",
        "https://user@auth.example.com/v1/token",
        "/v1/token",
        "not a uri",
    ] {
        let proof = key.proof(&claims_with(json!({"htu": htu})));
        assert_eq!(verify(&proof), Err(DpopError::HtuMismatch), "htu {htu}");
    }
    let proof = key.proof(&claims_with(json!({"htu": 42})));
    assert_eq!(verify(&proof), Err(DpopError::InvalidClaim("htu")));

    let proof = key.proof(&claims());
    assert_eq!(
        verify_proof(&proof, "POST", "/v1/token", NOW, &VerifyOptions::default()),
        Err(DpopError::InvalidExpectedHtu)
    );
}

#[test]
fn refuses_stale_and_future_iat() {
    let key = DeviceKeyPair::ed25519();
    for iat in [NOW - 61, NOW + 61, 0, i64::MIN, i64::MAX] {
        let proof = key.proof(&claims_with(json!({"iat": iat})));
        assert_eq!(
            verify(&proof),
            Err(DpopError::IatOutsideWindow),
            "iat {iat}"
        );
    }
    let proof = key.proof(&claims_with(json!({"iat": 1e300})));
    assert_eq!(
        verify(&proof),
        Err(DpopError::IatOutsideWindow),
        "huge float"
    );

    for iat in [json!(null), json!("1700000000"), json!(true)] {
        let proof = key.proof(&claims_with(json!({"iat": iat})));
        assert_eq!(
            verify(&proof),
            Err(DpopError::InvalidClaim("iat")),
            "iat {iat}"
        );
    }

    let narrow = VerifyOptions {
        iat_leeway_secs: 5,
        ..VerifyOptions::default()
    };
    let proof = key.proof(&claims_with(json!({"iat": NOW - 6})));
    assert_eq!(
        verify_proof(&proof, "POST", HTU, NOW, &narrow),
        Err(DpopError::IatOutsideWindow)
    );
}

#[test]
fn refuses_missing_or_bad_jti() {
    let key = DeviceKeyPair::ed25519();
    for jti in [
        json!(null),
        json!(""),
        json!(12345),
        json!("x".repeat(MAX_JTI_BYTES + 1)),
    ] {
        let proof = key.proof(&claims_with(json!({"jti": jti})));
        assert_eq!(verify(&proof), Err(DpopError::InvalidJti), "jti {jti:.40}");
    }
    let proof = key.proof(&claims_with(json!({"jti": "x".repeat(MAX_JTI_BYTES)})));
    assert!(verify(&proof).is_ok(), "256 bytes is allowed");
}

#[test]
fn refuses_optional_claims_of_the_wrong_type() {
    let key = DeviceKeyPair::ed25519();
    let proof = key.proof(&claims_with(json!({"nonce": 5})));
    assert_eq!(verify(&proof), Err(DpopError::InvalidClaim("nonce")));
    let proof = key.proof(&claims_with(json!({"ath": ["a"]})));
    assert_eq!(verify(&proof), Err(DpopError::InvalidClaim("ath")));
}

/// Two parsers reading `{"alg":"ES256","alg":"none"}` differently is how verification gets
/// bypassed; we refuse duplicated members outright.
#[test]
fn refuses_duplicate_members() {
    let key = DeviceKeyPair::ed25519();
    let jwk = serde_json::to_string(&key.jwk_value()).unwrap();
    let header = format!(r#"{{"typ":"dpop+jwt","alg":"EdDSA","alg":"EdDSA","jwk":{jwk}}}"#);
    let payload = serde_json::to_string(&claims()).unwrap();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, Algorithm::EdDSA).unwrap();
    assert_eq!(
        verify(&format!("{input}.{signature}")),
        Err(DpopError::Malformed)
    );

    // With "last one wins" this proof would verify: it is signed by the key of the last x.
    let x = key.jwk_value()["x"].as_str().unwrap().to_owned();
    let other_x = DeviceKeyPair::ed25519().jwk_value()["x"]
        .as_str()
        .unwrap()
        .to_owned();
    let header = format!(
        r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{{"kty":"OKP","crv":"Ed25519","x":"{other_x}","x":"{x}"}}}}"#
    );
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, Algorithm::EdDSA).unwrap();
    assert_eq!(
        verify(&format!("{input}.{signature}")),
        Err(DpopError::Malformed),
        "jwk with two x"
    );

    let header = serde_json::to_string(&key.header()).unwrap();
    let payload = format!(r#"{{"jti":"a","jti":"b","htm":"POST","htu":"{HTU}","iat":{NOW}}}"#);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, Algorithm::EdDSA).unwrap();
    assert_eq!(
        verify(&format!("{input}.{signature}")),
        Err(DpopError::Malformed)
    );
}

#[test]
fn refuses_garbage() {
    let key = DeviceKeyPair::ed25519();
    let good = key.proof(&claims());
    let cases = [
        String::new(),
        "garbage".to_owned(),
        "a.b".to_owned(),
        "..".to_owned(),
        "a.b.c".to_owned(),
        "a.b.c.d.e".to_owned(),
        format!("{good}.extra"),
        format!("{good}="),
        format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode("[1]")),
        format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode("not json")),
        "eyJhbGciOiJFZERTQSJ9==.e30.AAAA".to_owned(),
        "\u{0}\u{1}.\u{2}.\u{3}".to_owned(),
    ];
    for proof in cases {
        assert_eq!(verify(&proof), Err(DpopError::Malformed), "{proof:.60}");
    }

    // A correctly signed payload that is a JSON array, not a claims object: serde would map
    // it onto the claims positionally if we let it.
    let array = json!(["a", "POST", HTU, NOW]);
    assert_eq!(
        verify(&key.proof_with_header(&key.header(), &array)),
        Err(DpopError::Malformed)
    );
}

#[test]
fn refuses_oversize_input_before_parsing() {
    let opts = VerifyOptions::default();
    let big = "a".repeat(opts.max_proof_bytes + 1);
    assert_eq!(verify(&big), Err(DpopError::TooLarge { limit: 8 * 1024 }));

    // A valid proof over a smaller limit is refused on size alone.
    let key = DeviceKeyPair::ed25519();
    let proof = key.proof(&claims());
    let tight = VerifyOptions {
        max_proof_bytes: proof.len() - 1,
        ..opts.clone()
    };
    assert!(matches!(
        verify_proof(&proof, "POST", HTU, NOW, &tight),
        Err(DpopError::TooLarge { .. })
    ));
    let exact = VerifyOptions {
        max_proof_bytes: proof.len(),
        ..opts
    };
    assert!(verify_proof(&proof, "POST", HTU, NOW, &exact).is_ok());
}

#[test]
fn error_messages_never_contain_the_proof() {
    let key = DeviceKeyPair::ed25519();
    let proofs = [
        key.proof(&claims_with(json!({"htm": "GET"}))),
        key.proof(&claims_with(json!({"htu": "https://evil.example.com/x"}))),
        key.proof(&claims_with(json!({"iat": 0}))),
        key.proof(&claims_with(json!({"jti": ""}))),
        sign_raw(
            &key.header(),
            &claims(),
            &DeviceKeyPair::ed25519().encoding,
            Algorithm::EdDSA,
        ),
    ];
    for proof in proofs {
        let message = verify(&proof).unwrap_err().to_string();
        for part in proof.split('.') {
            assert!(!message.contains(part), "{message}");
        }
        assert!(!message.contains("evil"), "{message}");
    }
}

#[test]
fn replay_ttl_covers_the_whole_acceptance_window() {
    let opts = VerifyOptions::default();
    // First seen at iat - 60, still acceptable at iat + 60: 120 s, plus rounding and skew.
    assert!(opts.replay_ttl() >= Duration::from_secs(121));
    assert_eq!(opts.replay_ttl(), Duration::from_secs(126));
}

proptest! {
    #[test]
    fn random_strings_never_panic(s in "\\PC{0,200}") {
        let _ = verify(&s);
    }

    #[test]
    fn random_three_part_inputs_never_panic(
        a in proptest::collection::vec(any::<u8>(), 0..200),
        b in proptest::collection::vec(any::<u8>(), 0..200),
        c in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let proof = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(a), URL_SAFE_NO_PAD.encode(b), URL_SAFE_NO_PAD.encode(c));
        prop_assert!(verify(&proof).is_err());
    }

    #[test]
    fn random_headers_and_claims_never_panic(
        alg in prop_oneof![Just(json!("EdDSA")), Just(json!("ES256")), Just(json!("Ed25519")), any::<i64>().prop_map(|n| json!(n))],
        kty in prop_oneof![Just("OKP"), Just("EC"), Just("RSA"), Just("oct")],
        x in proptest::collection::vec(any::<u8>(), 0..40),
        y in proptest::collection::vec(any::<u8>(), 0..40),
        iat in prop_oneof![any::<i64>().prop_map(|n| json!(n)), any::<f64>().prop_map(|f| json!(f)), Just(json!("x"))],
        sig in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let header = json!({"typ": DPOP_TYP, "alg": alg, "jwk": {
            "kty": kty, "crv": if kty == "EC" { "P-256" } else { "Ed25519" },
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}});
        let claims = json!({"jti": "j", "htm": "POST", "htu": HTU, "iat": iat});
        let proof = unsigned(&header, &claims, &URL_SAFE_NO_PAD.encode(sig));
        prop_assert!(verify(&proof).is_err());
    }
}

// ---------------------------------------------------------------------------------------
// The proof-key cache (`ProofKeys`)

impl ProofKeys {
    fn len(&self) -> u64 {
        self.0.run_pending_tasks();
        self.0.entry_count()
    }
}

fn verify_cached(proof: &str, keys: &ProofKeys) -> Result<VerifiedProof, DpopError> {
    verify_proof_with(proof, "POST", HTU, NOW, &VerifyOptions::default(), keys)
}

#[test]
fn a_proof_key_is_kept_only_once_its_signature_verified() {
    let keys = ProofKeys::default();
    let key = DeviceKeyPair::ed25519();
    let other = DeviceKeyPair::ed25519();
    // Signed by another key: refused, and the presented key is not kept.
    let forged = other.proof_with_header(&key.header(), &claims());
    assert_eq!(verify_cached(&forged, &keys), Err(DpopError::BadSignature));
    assert_eq!(keys.len(), 0);

    let uncached = verify(&key.proof(&claims())).unwrap();
    let first = verify_cached(&key.proof(&claims()), &keys).unwrap();
    assert_eq!(keys.len(), 1);
    let again = verify_cached(&key.proof(&claims()), &keys).unwrap();
    assert_eq!(keys.len(), 1);
    // From the cache or not, the same thumbprint and JWK.
    for v in [&first, &again] {
        assert_eq!((&v.jkt, v.jwk()), (&uncached.jkt, uncached.jwk()));
    }
}

#[test]
fn a_kept_proof_key_still_needs_each_proof_signed_and_its_jwk_checked() {
    let keys = ProofKeys::default();
    let signing = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let key = DeviceKeyPair::ed25519_from(&signing);
    verify_cached(&key.proof(&claims()), &keys).unwrap();
    assert_eq!(keys.len(), 1);

    // The kept key, presented with a proof someone else signed: the signature is checked.
    let forged = DeviceKeyPair::ed25519().proof_with_header(&key.header(), &claims());
    assert_eq!(verify_cached(&forged, &keys), Err(DpopError::BadSignature));
    // A valid proof whose signature was then altered.
    let proof = key.proof(&claims());
    let (input, sig) = proof.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[0] ^= 1;
    let altered = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(verify_cached(&altered, &keys), Err(DpopError::BadSignature));
    // The same `x` with private material, or under another `alg`, is refused before the
    // cache is asked.
    let mut header = key.header();
    header["jwk"]["d"] = json!(URL_SAFE_NO_PAD.encode(signing.to_bytes()));
    assert_eq!(
        verify_cached(&key.proof_with_header(&header, &claims()), &keys),
        Err(DpopError::PrivateKeyInJwk)
    );
    let mut header = key.header();
    header["alg"] = json!("ES256");
    assert_eq!(
        verify_cached(&key.proof_with_header(&header, &claims()), &keys),
        Err(DpopError::KeyAlgMismatch)
    );
    // The claims are still checked too.
    assert_eq!(
        verify_cached(&key.proof(&claims_with(json!({"htm": "GET"}))), &keys),
        Err(DpopError::HtmMismatch)
    );
}

#[test]
fn p256_proof_keys_are_not_kept() {
    let keys = ProofKeys::default();
    let key = DeviceKeyPair::p256();
    verify_cached(&key.proof(&claims()), &keys).unwrap();
    verify_cached(&key.proof(&claims()), &keys).unwrap();
    assert_eq!(keys.len(), 0);
}

// ---------------------------------------------------------------------------------------
// Signatures checked in batches (`SignatureBatcher`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_checked_at_once_each_get_their_own_answer() {
    let keys = std::sync::Arc::new(ProofKeys::default());
    let signatures = std::sync::Arc::new(SignatureBatcher::default());
    // Sixty proofs in flight together: every fifth signed by a key other than the one it
    // carries, a few by P-256 keys (checked alone), the rest good Ed25519 proofs.
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let key = if i % 7 == 3 {
                DeviceKeyPair::p256()
            } else {
                DeviceKeyPair::ed25519()
            };
            let claims = claims_with(json!({"jti": format!("j-{i}")}));
            let proof = if i % 5 == 0 {
                DeviceKeyPair::ed25519().proof_with_header(&key.header(), &claims)
            } else {
                key.proof(&claims)
            };
            let (keys, signatures) = (keys.clone(), signatures.clone());
            tokio::spawn(async move {
                let opts = VerifyOptions::default();
                let answer =
                    verify_proof_batched(&proof, "POST", HTU, NOW, &opts, &keys, &signatures).await;
                (i, answer)
            })
        })
        .collect();
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        if i % 5 == 0 {
            assert_eq!(answer, Err(DpopError::BadSignature), "proof {i}");
        } else {
            assert_eq!(answer.expect("a good proof").jti, format!("j-{i}"));
        }
    }
    // Only keys whose proofs verified were kept (the Ed25519 ones among the good).
    let kept = (0..60).filter(|i| i % 5 != 0 && i % 7 != 3).count();
    assert_eq!(keys.len(), kept as u64);
}

/// Each proof alone (a batch of one) and in a batch with others, with the answers of the
/// unbatched check.
#[tokio::test]
async fn a_batched_proof_is_checked_like_one_checked_alone() {
    let keys = ProofKeys::default();
    let key = DeviceKeyPair::ed25519();
    let opts = VerifyOptions::default();
    let good = key.proof(&claims());
    let cases = [
        (good.clone(), verify(&good)),
        (
            DeviceKeyPair::ed25519().proof_with_header(&key.header(), &claims()),
            Err(DpopError::BadSignature),
        ),
        (
            key.proof(&claims_with(json!({"htm": "GET"}))),
            Err(DpopError::HtmMismatch),
        ),
        (
            key.proof(&claims_with(json!({"iat": NOW - 3600}))),
            Err(DpopError::IatOutsideWindow),
        ),
    ];
    // Alone: one after another, each its own batch of one.
    let signatures = SignatureBatcher::default();
    for (proof, want) in &cases {
        let got = verify_proof_batched(proof, "POST", HTU, NOW, &opts, &keys, &signatures).await;
        assert_eq!(&got, want);
        assert_eq!(verify(proof), *want);
    }
    // Every case's signature is checked (the claims after it, in the unbatched order).
    assert_eq!(signatures.batch_sizes(), [1, 1, 1, 1]);
    // Together: all four at once, each with three good proofs beside it in the batch.
    let signatures = SignatureBatcher::default();
    let others: Vec<_> = (0..3).map(|_| key.proof(&claims())).collect();
    for (proof, want) in &cases {
        let checks = std::iter::once(proof)
            .chain(&others)
            .map(|p| verify_proof_batched(p, "POST", HTU, NOW, &opts, &keys, &signatures));
        let mut got = futures::future::join_all(checks).await.into_iter();
        assert_eq!(&got.next().unwrap(), want);
        assert!(got.all(|g| g.is_ok()));
    }
    assert_eq!(signatures.batch_sizes(), [4, 4, 4, 4]);
}

/// Spawns `n` good proofs' checks at once on the current (single-threaded) runtime, asserts
/// each got its own answer, and gives the sizes of the batches they were checked in. The
/// spawned tasks all run (and reach their signature) before the first is polled again.
async fn sizes_of_batches_for(n: usize) -> Vec<usize> {
    let keys = std::sync::Arc::new(ProofKeys::default());
    let signatures = std::sync::Arc::new(SignatureBatcher::default());
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let proof =
                DeviceKeyPair::ed25519().proof(&claims_with(json!({"jti": format!("j-{i}")})));
            let (keys, signatures) = (keys.clone(), signatures.clone());
            tokio::spawn(async move {
                let opts = VerifyOptions::default();
                verify_proof_batched(&proof, "POST", HTU, NOW, &opts, &keys, &signatures).await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(
            task.await.unwrap().expect("a good proof").jti,
            format!("j-{i}")
        );
    }
    signatures.batch_sizes()
}

/// The signatures ready on the runtime at the same moment are checked in one batch: the first
/// to arrive yields, and the others join it before it comes back.
#[tokio::test]
async fn signatures_ready_together_are_checked_in_one_batch() {
    assert_eq!(sizes_of_batches_for(10).await, [10]);
}

/// A batch is checked as soon as it is full, by the request whose signature filled it; its
/// leader, back from its yield, checks what was opened since.
#[tokio::test]
async fn a_full_batch_is_checked_at_once() {
    use crate::dpop::batch::MAX_GATHER;
    // The full batch at once; the first leader, back, takes the five opened since (whose own
    // leader then finds nothing open).
    assert_eq!(sizes_of_batches_for(MAX_GATHER + 5).await, [MAX_GATHER, 5]);
}

/// A batch's leader that goes away while it yields (its request cancelled) still checks the
/// batch: the signatures that joined it get their answers.
#[tokio::test]
async fn a_cancelled_leader_still_answers_its_batch() {
    use futures::FutureExt;
    let keys = ProofKeys::default();
    let signatures = SignatureBatcher::default();
    let opts = VerifyOptions::default();
    let key = DeviceKeyPair::ed25519();
    let (first, second) = (key.proof(&claims()), key.proof(&claims()));
    let bad = DeviceKeyPair::ed25519().proof_with_header(&key.header(), &claims());
    let check = |proof| {
        Box::pin(verify_proof_batched(
            proof,
            "POST",
            HTU,
            NOW,
            &opts,
            &keys,
            &signatures,
        ))
    };
    let (mut leader, mut joined, mut refused) = (check(&first), check(&second), check(&bad));
    assert!((&mut leader).now_or_never().is_none(), "the leader yields");
    assert!(
        (&mut joined).now_or_never().is_none(),
        "the others wait for it"
    );
    assert!((&mut refused).now_or_never().is_none());
    assert!(signatures.batch_sizes().is_empty());
    drop(leader);
    assert_eq!(signatures.batch_sizes(), [3]);
    assert!(joined.await.is_ok());
    assert_eq!(refused.await, Err(DpopError::BadSignature));
}
