//! Unit tests of the verification core: real vectors verified with the built-in roots at their
//! own time, and generated attestations under a test root, each broken in one way and failing
//! with its own message.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::testing::*;
use super::*;

/// A time when the generated certificates are valid.
const NOW: i64 = 1_800_000_000;
const CHALLENGE: &str = "q8Yl3bq1Pq0aWm2l1b0T3kYQp2s5fX8uR4nJ6cV9eZA";

fn client_data() -> Vec<u8> {
    format!("{CHALLENGE}.thumbprint-of-the-dpop-key").into_bytes()
}

fn settings(root: &TestRoot) -> Settings {
    Settings {
        apple_app_ids: vec!["OTHERTEAM1.com.example.other".into(), TEST_APP_ID.into()],
        allow_development: false,
        android_packages: vec![TEST_PACKAGE.into()],
        android_signing_cert_sha256: vec![TEST_SIGNING_CERT_SHA256],
        extra_roots_pem: vec![root.root_pem().into_bytes()],
        android_revoked_serials: HashSet::new(),
    }
}

fn verifier(settings: Settings) -> Verifier {
    Verifier::new(settings).expect("verifier")
}

fn attestation(member: serde_json::Value) -> Attestation {
    serde_json::from_value(member).expect("an attestation member")
}

fn check(
    v: &Verifier,
    member: serde_json::Value,
    client_data: &[u8],
    jwk: &serde_json::Value,
    now: i64,
) -> Result<Attested, String> {
    v.verify(&attestation(member), client_data, jwk, now)
        .map_err(|e| e.to_string())
}

/// Asserts a failure with exactly `expected`.
#[track_caller]
fn assert_fails(result: Result<Attested, String>, expected: &str) {
    match result {
        Ok(a) => panic!("expected {expected:?}, but it verified: {a:?}"),
        Err(e) => assert_eq!(e, expected),
    }
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/attestation/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex32(s: &str) -> [u8; 32] {
    parse_signing_cert_sha256(s).expect("64 hex digits")
}

// ---------------------------------------------------------------------------------------
// The member, formats, settings parsers

#[test]
fn the_member_deserializes_both_formats_and_refuses_others() {
    let apple = attestation(
        serde_json::json!({"format": "apple-appattest", "challenge": "c", "key_id": "k", "object": "o"}),
    );
    assert_eq!(apple.format(), Format::AppleAppAttest);
    assert_eq!(apple.challenge(), "c");
    let android = attestation(
        serde_json::json!({"format": "android-key", "challenge": "d", "certificate_chain": ["a"]}),
    );
    assert_eq!(android.format(), Format::AndroidKey);
    assert_eq!(android.challenge(), "d");
    for bad in [
        serde_json::json!({"format": "tpm", "challenge": "c"}),
        serde_json::json!({"format": "android-key", "challenge": "c"}),
        serde_json::json!({"challenge": "c", "key_id": "k", "object": "o"}),
    ] {
        assert!(
            serde_json::from_value::<Attestation>(bad.clone()).is_err(),
            "{bad}"
        );
    }
    for f in [Format::AppleAppAttest, Format::AndroidKey] {
        assert_eq!(Format::parse(f.as_str()), Some(f));
    }
    assert_eq!(Format::parse("apple"), None);
}

#[test]
fn signing_cert_digests_parse_in_every_documented_spelling() {
    let lower = "68856d1d06f637d6255face5b224db43a9514ace538bb1548b844480fcd85c87";
    let want = hex32(lower);
    assert_eq!(want[0], 0x68);
    assert_eq!(want[31], 0x87);
    assert_eq!(parse_signing_cert_sha256(&lower.to_uppercase()), Ok(want));
    let colons = lower
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(parse_signing_cert_sha256(&colons), Ok(want));
    for bad in [
        "",
        &lower[..62],
        &format!("{lower}00"),
        &format!("{}zz", &lower[..62]),
        &format!("{}:{}", &lower[..2], &lower[2..]),
        "6:8856d1d06f637d6255face5b224db43a9514ace538bb1548b844480fcd85c87",
    ] {
        assert!(parse_signing_cert_sha256(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_status_list_yields_revoked_and_suspended_serials_in_lower_case() {
    let json = br#"{"entries": {
        "2c8cdddfd5e03bfc": {"status": "REVOKED", "expires": "2020-11-13", "reason": "KEY_COMPROMISE"},
        "00C8966FCB2FBE32": {"status": "SUSPENDED", "reason": "SOFTWARE_FLAW"},
        "9a1b2c": {"status": "SOMETHING_ELSE"}
    }}"#;
    let serials = parse_android_revocations(json).expect("a status list");
    let mut got: Vec<_> = serials.into_iter().collect();
    got.sort();
    assert_eq!(got, ["2c8cdddfd5e03bfc", "c8966fcb2fbe32"]);
    assert!(parse_android_revocations(b"[]").is_err());
    assert!(parse_android_revocations(b"{\"entries\": 3}").is_err());
}

#[test]
fn the_built_in_apple_root_is_apples_published_certificate() {
    let der = x509_parser::pem::parse_x509_pem(APPLE_ROOT_PEM)
        .expect("PEM")
        .1
        .contents;
    assert_eq!(
        format!("{:x}", Sha256::digest(&der)),
        "1cb9823ba28ba6ad2d33a006941de2ae4f513ef1d4e831b9f7e0fa7b6242c932"
    );
    let google = chain::Anchor::from_pem_bundle(GOOGLE_ROOTS_PEM).expect("Google roots");
    assert_eq!(
        google.len(),
        5,
        "RSA root in four certificates + the P-384 root"
    );
}

#[test]
fn a_bad_attestation_root_file_is_refused_at_startup() {
    let with_root = |pem: &[u8]| Settings {
        extra_roots_pem: vec![pem.to_vec()],
        ..Settings::default()
    };
    let err = Verifier::new(with_root(b"no certificate here")).unwrap_err();
    assert!(err.contains("--attestation-root file 1"), "{err}");
    assert!(
        Verifier::new(with_root(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        ))
        .is_err()
    );
}

// ---------------------------------------------------------------------------------------
// Real vectors (tests/fixtures/attestation/README.md names their sources)

const APPLE_SAMPLE_APP_ID: &str = "0352187391.com.apple.example_app_attest";
const APPLE_SAMPLE_KEY_ID: &str = "bSrEhF8TIzIvWSPwvZ0i2+UOBre4ASH84rK15m6emNY=";
/// 2024-04-18T00:00:00Z: inside the sample credential certificate's validity (17-20 April).
const APPLE_SAMPLE_TIME: i64 = 1_713_398_400;

fn apple_sample_verifier() -> Verifier {
    verifier(Settings {
        apple_app_ids: vec![APPLE_SAMPLE_APP_ID.into()],
        ..Settings::default()
    })
}

#[test]
fn apples_sample_attestation_verifies_with_the_built_in_root_at_its_time() {
    // Apple's sample app passed the raw challenge as clientDataHash (the guide's published
    // intermediate values append "test_server_challenge" itself to authData), so the whole
    // validation runs with that clientDataHash.
    let v = apple_sample_verifier();
    let object = fixture("apple-sample.b64");
    let attested = apple::verify(
        &v.apple_policy(),
        APPLE_SAMPLE_KEY_ID,
        object.trim(),
        b"test_server_challenge",
        APPLE_SAMPLE_TIME,
    )
    .expect("Apple's sample verifies");
    assert_eq!(attested.format, Format::AppleAppAttest);
    assert_eq!(
        attested.key_id.unwrap(),
        B64.decode(APPLE_SAMPLE_KEY_ID).unwrap()
    );
    let pk = attested.public_key.unwrap();
    assert_eq!(pk.len(), 65);
    assert_eq!(pk[0], 0x04);
}

#[test]
fn apples_sample_through_the_server_path_fails_only_at_the_nonce() {
    // Through `verify`, clientDataHash is SHA-256 of the client data (contract section 8):
    // the chain validates and the nonce, the first check after it, names the mismatch.
    let v = apple_sample_verifier();
    let member = serde_json::json!({"format": "apple-appattest", "challenge": "test_server_challenge",
        "key_id": APPLE_SAMPLE_KEY_ID, "object": fixture("apple-sample.b64").trim()});
    assert_fails(
        check(
            &v,
            member.clone(),
            b"test_server_challenge",
            &serde_json::json!({}),
            APPLE_SAMPLE_TIME,
        ),
        "apple-appattest: the certificate's nonce is not SHA-256(authData || clientDataHash): \
         wrong challenge or client data",
    );
    // Three days later the credential certificate has expired: the clock is the server's.
    assert_fails(
        check(
            &v,
            member.clone(),
            b"test_server_challenge",
            &serde_json::json!({}),
            APPLE_SAMPLE_TIME + 4 * 86_400,
        ),
        "apple-appattest: certificate 0 has expired",
    );
    // Without the App ID configured the format is refused before anything is parsed.
    let v = verifier(Settings::default());
    assert_fails(
        check(
            &v,
            member,
            b"test_server_challenge",
            &serde_json::json!({}),
            APPLE_SAMPLE_TIME,
        ),
        "apple-appattest: no --apple-app-id is configured",
    );
}

struct RealChain {
    file: &'static str,
    now: i64,
    challenge: &'static [u8],
    package: &'static str,
    digest: &'static str,
    level: &'static str,
}

const REAL_CHAINS: &[RealChain] = &[
    // Google's sample: a remotely provisioned (RKP) TEE chain under the RSA root, Feb 2023.
    RealChain {
        file: "android-google-rkp.chain",
        now: 1_677_628_800, // 2023-03-01
        challenge: b"challenge",
        package: "com.google.attestationexample",
        digest: "68856d1d06f637d6255face5b224db43a9514ace538bb1548b844480fcd85c87",
        level: "TrustedEnvironment",
    },
    // A Samsung phone's TEE chain (KeyMint 1), factory provisioned, under the RSA root.
    RealChain {
        file: "android-samsung-tee.chain",
        now: 1_654_041_600, // 2022-06-01
        challenge: b"",
        package: "com.ubinetic.attested.executor.test.testnet",
        digest: "bdcb4560f6b3c41dad920668169c28be1ef9ea49f23d98cd8eb2f37ae4488ff9",
        level: "TrustedEnvironment",
    },
    // A Pixel's StrongBox chain (Keymaster 4.1) under the 2016 RSA root certificate.
    RealChain {
        file: "android-pixel-strongbox.chain",
        now: 1_657_500_000, // 2022-07-11
        challenge: b"testasdf",
        package: "com.ubinetic.attested.executor.test.testnet",
        digest: "bdcb4560f6b3c41dad920668169c28be1ef9ea49f23d98cd8eb2f37ae4488ff9",
        level: "StrongBox",
    },
];

fn real_chain(file: &str) -> (serde_json::Value, serde_json::Value) {
    let chain: Vec<String> = fixture(file)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let leaf = B64.decode(&chain[0]).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let jwk = p256_jwk(cert.public_key().subject_public_key.data.as_ref());
    let member =
        serde_json::json!({"format": "android-key", "challenge": "c", "certificate_chain": chain});
    (member, jwk)
}

fn real_settings(c: &RealChain) -> Settings {
    Settings {
        android_packages: vec![c.package.into()],
        android_signing_cert_sha256: vec![hex32(c.digest)],
        ..Settings::default()
    }
}

#[test]
fn real_android_chains_verify_with_the_built_in_google_roots_at_their_time() {
    for c in REAL_CHAINS {
        let (member, jwk) = real_chain(c.file);
        let v = verifier(real_settings(c));
        let attested = check(&v, member, c.challenge, &jwk, c.now)
            .unwrap_or_else(|e| panic!("{}: {e}", c.file));
        assert_eq!(attested.format, Format::AndroidKey, "{}", c.file);
        assert_eq!(
            attested.security_level.as_deref(),
            Some(c.level),
            "{}",
            c.file
        );
    }
}

#[test]
fn real_android_chains_fail_the_policy_checks_they_should() {
    for c in REAL_CHAINS {
        let (member, jwk) = real_chain(c.file);
        // Another app's package: the chain verified, the package check refuses.
        let mut s = real_settings(c);
        s.android_packages = vec!["com.example.other".into()];
        assert_fails(
            check(&verifier(s), member.clone(), c.challenge, &jwk, c.now),
            "android-key: the attested package name is none of the configured --android-package",
        );
        // The right package, another signing certificate.
        let mut s = real_settings(c);
        s.android_signing_cert_sha256 = vec![[7; 32]];
        assert_fails(
            check(&verifier(s), member.clone(), c.challenge, &jwk, c.now),
            "android-key: no attested signing-certificate digest is one of --android-signing-cert-sha256",
        );
        // Another challenge.
        assert_fails(
            check(
                &verifier(real_settings(c)),
                member.clone(),
                b"another challenge",
                &jwk,
                c.now,
            ),
            "android-key: attestationChallenge is not the client data: wrong challenge or DPoP key",
        );
        // Another DPoP key.
        let (_, _, other) = dpop_p256_key();
        assert_fails(
            check(
                &verifier(real_settings(c)),
                member.clone(),
                c.challenge,
                &other,
                c.now,
            ),
            "android-key: the leaf certificate's key is not the DPoP proof's key",
        );
        // Google's status list revokes the leaf's issuer.
        let chain: Vec<String> = fixture(c.file)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let issuer = B64.decode(&chain[1]).unwrap();
        let serial = format!(
            "{:x}",
            X509Certificate::from_der(&issuer)
                .unwrap()
                .1
                .tbs_certificate
                .serial
        );
        let mut s = real_settings(c);
        s.android_revoked_serials = HashSet::from([serial.clone()]);
        assert_fails(
            check(&verifier(s), member.clone(), c.challenge, &jwk, c.now),
            &format!(
                "android-key: certificate 1 (serial {serial}) is revoked by the attestation status list"
            ),
        );
    }
    // Today (December 2026) the Pixel chain's root certificate (2016-2026) has expired.
    let pixel = &REAL_CHAINS[2];
    let (member, jwk) = real_chain(pixel.file);
    assert_fails(
        check(
            &verifier(real_settings(pixel)),
            member,
            pixel.challenge,
            &jwk,
            1_796_000_000,
        ),
        "android-key: certificate 3 has expired",
    );
}

#[test]
fn a_real_chain_with_one_signature_byte_changed_is_refused() {
    let c = &REAL_CHAINS[0];
    let mut chain: Vec<String> = fixture(c.file)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut leaf = B64.decode(&chain[0]).unwrap();
    let last = leaf.len() - 1;
    leaf[last] ^= 1;
    chain[0] = B64.encode(&leaf);
    let (_, jwk) = real_chain(c.file);
    let member =
        serde_json::json!({"format": "android-key", "challenge": "c", "certificate_chain": chain});
    assert_fails(
        check(
            &verifier(real_settings(c)),
            member,
            c.challenge,
            &jwk,
            c.now,
        ),
        "android-key: certificate 0's signature does not verify with certificate 1's key",
    );
}

#[test]
fn real_android_chains_are_refused_without_the_google_roots_or_settings() {
    let c = &REAL_CHAINS[0];
    let (member, jwk) = real_chain(c.file);
    // Under only a test root (as if the chain ended elsewhere): drop the built-in root and
    // present the chain without its root certificate, signed by nothing we trust.
    let mut chain: Vec<String> = fixture(c.file)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    chain.truncate(2);
    let truncated =
        serde_json::json!({"format": "android-key", "challenge": "c", "certificate_chain": chain});
    assert_fails(
        check(
            &verifier(real_settings(c)),
            truncated,
            c.challenge,
            &jwk,
            c.now,
        ),
        "android-key: the certificate chain does not end at a trusted root",
    );
    let mut s = real_settings(c);
    s.android_packages.clear();
    assert_fails(
        check(&verifier(s), member.clone(), c.challenge, &jwk, c.now),
        "android-key: no --android-package is configured",
    );
    let mut s = real_settings(c);
    s.android_signing_cert_sha256.clear();
    assert_fails(
        check(&verifier(s), member, c.challenge, &jwk, c.now),
        "android-key: no --android-signing-cert-sha256 is configured",
    );
}

// ---------------------------------------------------------------------------------------
// Generated App Attest objects

fn apple(root: &TestRoot, opts: AppleOpts) -> serde_json::Value {
    apple_attestation(root, CHALLENGE, &client_data(), TEST_APP_ID, &opts)
}

#[test]
fn a_generated_app_attest_object_verifies_and_reports_its_key() {
    let root = TestRoot::new();
    let v = verifier(settings(&root));
    let member = apple(&root, AppleOpts::default());
    let key_id = B64.decode(member["key_id"].as_str().unwrap()).unwrap();
    // Any DPoP key: App Attest keys are not linked to the proof key.
    let attested = check(
        &v,
        member,
        &client_data(),
        &serde_json::json!({"kty": "OKP"}),
        NOW,
    )
    .expect("verifies");
    assert_eq!(attested.format, Format::AppleAppAttest);
    assert_eq!(attested.security_level, None);
    assert_eq!(attested.key_id.as_deref(), Some(key_id.as_slice()));
    assert_eq!(
        Sha256::digest(attested.public_key.unwrap()).as_slice(),
        key_id.as_slice()
    );
}

#[test]
fn the_development_aaguid_needs_the_setting() {
    let root = TestRoot::new();
    let opts = AppleOpts {
        aaguid: Some(AAGUID_DEVELOPMENT),
        ..AppleOpts::default()
    };
    let jwk = serde_json::json!({});
    assert_fails(
        check(
            &verifier(settings(&root)),
            apple(&root, opts.clone()),
            &client_data(),
            &jwk,
            NOW,
        ),
        "apple-appattest: the AAGUID is appattestdevelop (a development key) and \
         --attestation-allow-development is off",
    );
    let mut s = settings(&root);
    s.allow_development = true;
    check(&verifier(s), apple(&root, opts), &client_data(), &jwk, NOW).expect("allowed");
}

#[test]
fn every_app_attest_check_fails_with_its_own_message() {
    let root = TestRoot::new();
    let v = verifier(settings(&root));
    let jwk = serde_json::json!({});
    let cases: Vec<(AppleOpts, &str)> = vec![
        (
            AppleOpts {
                fmt: Some("packed".into()),
                ..Default::default()
            },
            "apple-appattest: fmt is not apple-appattest",
        ),
        (
            AppleOpts {
                wrong_nonce: true,
                ..Default::default()
            },
            "apple-appattest: the certificate's nonce is not SHA-256(authData || clientDataHash): \
             wrong challenge or client data",
        ),
        (
            AppleOpts {
                no_nonce_extension: true,
                ..Default::default()
            },
            "apple-appattest: the credential certificate has no nonce extension",
        ),
        (
            AppleOpts {
                key_id_mismatch: true,
                ..Default::default()
            },
            "apple-appattest: key_id is not the SHA-256 of the credential certificate's public key",
        ),
        (
            AppleOpts {
                credential_id_mismatch: true,
                ..Default::default()
            },
            "apple-appattest: the authenticator data's credential id is not the key id",
        ),
        (
            AppleOpts {
                rp_id: Some("ABCDE12345.com.example.evil".into()),
                ..Default::default()
            },
            "apple-appattest: rpIdHash matches none of the configured --apple-app-id",
        ),
        (
            AppleOpts {
                counter: 1,
                ..Default::default()
            },
            "apple-appattest: the counter is 1, not 0",
        ),
        (
            AppleOpts {
                aaguid: Some(*b"somethingelse\0\0\0"),
                ..Default::default()
            },
            "apple-appattest: the AAGUID is not App Attest's",
        ),
        (
            AppleOpts {
                expired: true,
                ..Default::default()
            },
            "apple-appattest: certificate 0 has expired",
        ),
        (
            AppleOpts {
                forged_leaf: true,
                ..Default::default()
            },
            "apple-appattest: certificate 0's signature does not verify with certificate 1's key",
        ),
        (
            AppleOpts {
                intermediate_not_ca: true,
                ..Default::default()
            },
            "apple-appattest: certificate 1 signs another but is not a CA",
        ),
    ];
    for (opts, expected) in cases {
        let member = apple(&root, opts.clone());
        assert_fails(check(&v, member, &client_data(), &jwk, NOW), expected);
    }
    // The right object for other client data (another challenge or another DPoP key).
    assert_fails(
        check(
            &v,
            apple(&root, AppleOpts::default()),
            b"other.client-data",
            &jwk,
            NOW,
        ),
        "apple-appattest: the certificate's nonce is not SHA-256(authData || clientDataHash): \
         wrong challenge or client data",
    );
    // Before the certificates' validity.
    assert_fails(
        check(
            &v,
            apple(&root, AppleOpts::default()),
            &client_data(),
            &jwk,
            1_500_000_000,
        ),
        "apple-appattest: certificate 0 is not yet valid",
    );
    // Under a root nobody configured.
    let stranger = TestRoot::new();
    assert_fails(
        check(
            &v,
            apple(&stranger, AppleOpts::default()),
            &client_data(),
            &jwk,
            NOW,
        ),
        "apple-appattest: the certificate chain does not end at a trusted root",
    );
}

#[test]
fn malformed_app_attest_members_fail_before_any_crypto() {
    let root = TestRoot::new();
    let v = verifier(settings(&root));
    let good = apple(&root, AppleOpts::default());
    let with = |key: &str, value: &str| {
        let mut m = good.clone();
        m[key] = value.into();
        m
    };
    let jwk = serde_json::json!({});
    let cases = [
        (
            with("key_id", "not base64!"),
            "apple-appattest: key_id is not base64",
        ),
        (
            with("object", "%%%"),
            "apple-appattest: object is not base64",
        ),
        (
            with("object", &B64.encode([0xff, 0x00])),
            "apple-appattest: object is not a CBOR attestation object",
        ),
        (
            with("object", &B64.encode([0xa0])),
            "apple-appattest: fmt is not apple-appattest",
        ),
    ];
    for (member, expected) in cases {
        assert_fails(check(&v, member, &client_data(), &jwk, NOW), expected);
    }
    // Settings absent: refused whatever the object.
    let mut s = settings(&root);
    s.apple_app_ids.clear();
    assert_fails(
        check(&verifier(s), good, &client_data(), &jwk, NOW),
        "apple-appattest: no --apple-app-id is configured",
    );
}

// ---------------------------------------------------------------------------------------
// Generated Android chains

fn android(root: &TestRoot, point: &[u8], opts: AndroidOpts) -> serde_json::Value {
    android_chain(root, CHALLENGE, &client_data(), point, &opts)
}

#[test]
fn a_generated_android_chain_verifies_with_or_without_its_root() {
    let root = TestRoot::new();
    let v = verifier(settings(&root));
    let (_, point, jwk) = dpop_p256_key();
    for omit_root in [false, true] {
        let member = android(
            &root,
            &point,
            AndroidOpts {
                omit_root,
                ..Default::default()
            },
        );
        let attested = check(&v, member, &client_data(), &jwk, NOW).expect("verifies");
        assert_eq!(attested.format, Format::AndroidKey);
        assert_eq!(
            attested.security_level.as_deref(),
            Some("TrustedEnvironment")
        );
        assert!(attested.public_key.is_none() && attested.key_id.is_none());
    }
    let strongbox = AndroidOpts {
        attestation_security_level: 2,
        keymint_security_level: 2,
        ..Default::default()
    };
    let attested = check(
        &v,
        android(&root, &point, strongbox),
        &client_data(),
        &jwk,
        NOW,
    )
    .unwrap();
    assert_eq!(attested.security_level.as_deref(), Some("StrongBox"));
}

#[test]
fn every_android_check_fails_with_its_own_message() {
    let root = TestRoot::new();
    let v = verifier(settings(&root));
    let (_, point, jwk) = dpop_p256_key();
    let cases: Vec<(AndroidOpts, &str)> = vec![
        (
            AndroidOpts {
                forged_leaf: true,
                ..Default::default()
            },
            "android-key: certificate 0's signature does not verify with certificate 1's key",
        ),
        (
            AndroidOpts {
                intermediate_not_ca: true,
                ..Default::default()
            },
            "android-key: certificate 1 signs another but is not a CA",
        ),
        (
            AndroidOpts {
                expired: true,
                ..Default::default()
            },
            "android-key: certificate 0 has expired",
        ),
        (
            AndroidOpts {
                key_description_in_intermediate: true,
                ..Default::default()
            },
            "android-key: certificate 1 above the leaf carries a key description \
             (attest-key chains are not accepted)",
        ),
        (
            AndroidOpts {
                no_key_description: true,
                ..Default::default()
            },
            "android-key: the leaf certificate has no key description extension",
        ),
        (
            AndroidOpts {
                malformed_key_description: true,
                ..Default::default()
            },
            "android-key: the key description extension is malformed",
        ),
        (
            AndroidOpts {
                challenge: Some(b"another challenge".to_vec()),
                ..Default::default()
            },
            "android-key: attestationChallenge is not the client data: wrong challenge or DPoP key",
        ),
        (
            AndroidOpts {
                attestation_security_level: 0,
                ..Default::default()
            },
            "android-key: attestationSecurityLevel is Software, not TrustedEnvironment or StrongBox",
        ),
        (
            AndroidOpts {
                keymint_security_level: 0,
                ..Default::default()
            },
            "android-key: keyMintSecurityLevel is Software, not TrustedEnvironment or StrongBox",
        ),
        (
            AndroidOpts {
                no_root_of_trust: true,
                ..Default::default()
            },
            "android-key: the hardware-enforced list has no rootOfTrust",
        ),
        (
            AndroidOpts {
                root_of_trust_in_software: true,
                ..Default::default()
            },
            "android-key: the hardware-enforced list has no rootOfTrust",
        ),
        (
            AndroidOpts {
                verified_boot_state: 2,
                ..Default::default()
            },
            "android-key: verifiedBootState is Unverified, not Verified",
        ),
        (
            AndroidOpts {
                verified_boot_state: 1,
                ..Default::default()
            },
            "android-key: verifiedBootState is SelfSigned, not Verified",
        ),
        (
            AndroidOpts {
                device_locked: false,
                ..Default::default()
            },
            "android-key: deviceLocked is false (the bootloader is unlocked)",
        ),
        (
            AndroidOpts {
                no_application_id: true,
                ..Default::default()
            },
            "android-key: the software-enforced list has no attestationApplicationId",
        ),
        (
            AndroidOpts {
                package: "com.example.evil".into(),
                ..Default::default()
            },
            "android-key: the attested package name is none of the configured --android-package",
        ),
        (
            AndroidOpts {
                signing_cert_sha256: [1; 32],
                ..Default::default()
            },
            "android-key: no attested signing-certificate digest is one of --android-signing-cert-sha256",
        ),
    ];
    for (opts, expected) in cases {
        let member = android(&root, &point, opts.clone());
        assert_fails(check(&v, member, &client_data(), &jwk, NOW), expected);
    }

    let good = android(&root, &point, AndroidOpts::default());
    // The chain of another key than the proof's.
    let (_, _, other_jwk) = dpop_p256_key();
    assert_fails(
        check(&v, good.clone(), &client_data(), &other_jwk, NOW),
        "android-key: the leaf certificate's key is not the DPoP proof's key",
    );
    // A proof key that is not P-256 can never be the attested key.
    assert_fails(
        check(
            &v,
            good.clone(),
            &client_data(),
            &serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AA"}),
            NOW,
        ),
        "android-key: the DPoP key is not an ES256 (P-256) key",
    );
    // Other client data (the challenge, or the jkt of another key).
    assert_fails(
        check(&v, good.clone(), b"other.client-data", &jwk, NOW),
        "android-key: attestationChallenge is not the client data: wrong challenge or DPoP key",
    );
    // Not yet valid.
    assert_fails(
        check(&v, good.clone(), &client_data(), &jwk, 1_500_000_000),
        "android-key: certificate 0 is not yet valid",
    );
    // Revoked intermediate.
    let mut s = settings(&root);
    s.android_revoked_serials = HashSet::from([ANDROID_INTERMEDIATE_SERIAL_HEX.to_string()]);
    assert_fails(
        check(&verifier(s), good.clone(), &client_data(), &jwk, NOW),
        &format!(
            "android-key: certificate 1 (serial {ANDROID_INTERMEDIATE_SERIAL_HEX}) is revoked by \
             the attestation status list"
        ),
    );
    // Under a root nobody configured.
    let stranger = TestRoot::new();
    assert_fails(
        check(
            &v,
            android(&stranger, &point, AndroidOpts::default()),
            &client_data(),
            &jwk,
            NOW,
        ),
        "android-key: the certificate chain does not end at a trusted root",
    );
    // The generated chain under the built-in roots only (no --attestation-root).
    let mut s = settings(&root);
    s.extra_roots_pem.clear();
    assert_fails(
        check(&verifier(s), good, &client_data(), &jwk, NOW),
        "android-key: the certificate chain does not end at a trusted root",
    );
}

#[test]
fn malformed_android_chains_fail_before_any_crypto() {
    let root = TestRoot::new();
    let v = verifier(settings(&root));
    let (_, point, jwk) = dpop_p256_key();
    let chain_of = |certs: Vec<String>| serde_json::json!({"format": "android-key", "challenge": CHALLENGE, "certificate_chain": certs});
    let cases = [
        (
            chain_of(vec![]),
            "android-key: certificate_chain must hold 1 to 8 certificates",
        ),
        (
            chain_of(vec!["AAAA".into(); 9]),
            "android-key: certificate_chain must hold 1 to 8 certificates",
        ),
        (
            chain_of(vec!["***".into()]),
            "android-key: certificate 0 is not base64",
        ),
        (
            chain_of(vec![B64.encode(b"not DER")]),
            "android-key: certificate 0 is not a valid X.509 certificate",
        ),
    ];
    for (member, expected) in cases {
        assert_fails(check(&v, member, &client_data(), &jwk, NOW), expected);
    }
    // A certificate with trailing bytes is not a certificate.
    let good = android(&root, &point, AndroidOpts::default());
    let mut chain: Vec<String> = serde_json::from_value(good["certificate_chain"].clone()).unwrap();
    let mut leaf = B64.decode(&chain[0]).unwrap();
    leaf.push(0);
    chain[0] = B64.encode(leaf);
    assert_fails(
        check(&v, chain_of(chain), &client_data(), &jwk, NOW),
        "android-key: certificate 0 is not a valid X.509 certificate",
    );
}

#[test]
fn base64_is_accepted_in_both_alphabets_with_or_without_padding() {
    assert_eq!(decode_base64("+/8="), Some(vec![0xfb, 0xff]));
    assert_eq!(decode_base64("+/8"), Some(vec![0xfb, 0xff]));
    assert_eq!(decode_base64("-_8"), Some(vec![0xfb, 0xff]));
    assert_eq!(decode_base64("-_8="), Some(vec![0xfb, 0xff]));
    assert_eq!(decode_base64("a b"), None);
}

// ---------------------------------------------------------------------------------------
// The fuzz target's property-test twin (`fuzz/fuzz_targets/attestation.rs`)

#[test]
fn the_fuzz_targets_unmutated_inputs_reach_the_end_of_both_verifications() {
    // Mode 4 with nothing to XOR presents the real Android chain as is: it verifies, so
    // mutations of it explore every check behind the parsers.
    crate::fuzzing::attestation(&[4]);
    let v = crate::fuzzing::attestation_verifier();
    let (member, jwk) = real_chain("android-google-rkp.chain");
    v.verify(
        &attestation(member),
        b"challenge",
        &jwk,
        crate::fuzzing::ATTESTATION_NOW,
    )
    .expect("the fuzz target's Android seed verifies");
    let apple = attestation(
        serde_json::json!({"format": "apple-appattest", "challenge": "c",
        "key_id": APPLE_SAMPLE_KEY_ID, "object": fixture("apple-sample.b64").trim()}),
    );
    // Apple's sample reaches the nonce check (the last one it can reach through `verify`).
    assert!(
        v.verify(&apple, b"test_server_challenge", &jwk, APPLE_SAMPLE_TIME)
            .unwrap_err()
            .to_string()
            .contains("nonce")
    );
}

mod properties {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary bytes in every mode never panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            crate::fuzzing::attestation(&data);
        }

        /// Mutations of the real Apple object and Android chain (modes 3 and 4) never panic,
        /// and a mutated Apple sample is never accepted.
        #[test]
        fn mutations_of_real_vectors_never_panic(
            mode in 3u8..5,
            offset in any::<u16>(),
            xor in proptest::collection::vec(any::<u8>(), 1..16),
        ) {
            let mut data = vec![mode];
            data.extend_from_slice(&offset.to_be_bytes());
            data.extend_from_slice(&xor);
            crate::fuzzing::attestation(&data);
        }

        /// Arbitrary base64 strings as App Attest objects, key ids and chain entries.
        #[test]
        fn arbitrary_base64_members_never_panic(
            key_id in "[A-Za-z0-9+/=_-]{0,60}",
            object in "[A-Za-z0-9+/=_-]{0,400}",
            chain in proptest::collection::vec("[A-Za-z0-9+/=_-]{0,300}", 0..10),
        ) {
            let apple = serde_json::json!({"format": "apple-appattest", "challenge": "c", "key_id": key_id, "object": object});
            let android = serde_json::json!({"format": "android-key", "challenge": "c", "certificate_chain": chain});
            for member in [apple, android] {
                crate::fuzzing::attestation(&[&[0u8][..], member.to_string().as_bytes()].concat());
            }
        }
    }
}

#[test]
fn a_verified_intermediate_vouches_only_for_its_exact_bytes() {
    // The first verification caches the CA links; the second is answered from the cache.
    let c = &REAL_CHAINS[0];
    let v = verifier(real_settings(c));
    let (member, jwk) = real_chain(c.file);
    for _ in 0..2 {
        check(&v, member.clone(), c.challenge, &jwk, c.now).expect("verifies, then from cache");
    }
    // The same intermediate with one signature byte changed is checked again, and refused.
    let mut chain: Vec<String> = fixture(c.file)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut ca = B64.decode(&chain[2]).unwrap();
    let last = ca.len() - 1;
    ca[last] ^= 1;
    chain[2] = B64.encode(&ca);
    let member =
        serde_json::json!({"format": "android-key", "challenge": "c", "certificate_chain": chain});
    assert_fails(
        check(&v, member, c.challenge, &jwk, c.now),
        "android-key: certificate 2's signature does not verify with certificate 3's key",
    );
}

/// `object_b64` (an App Attest object) with `edit` applied to its x5c certificates' DER.
fn with_edited_x5c(object_b64: &str, edit: impl FnOnce(&mut [ciborium::Value])) -> String {
    let bytes = B64.decode(object_b64.trim()).unwrap();
    let mut object: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
    let att_stmt = object
        .as_map_mut()
        .unwrap()
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("attStmt"))
        .map(|(_, v)| v)
        .unwrap();
    let x5c = att_stmt
        .as_map_mut()
        .unwrap()
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("x5c"))
        .map(|(_, v)| v)
        .unwrap();
    edit(x5c.as_array_mut().unwrap());
    let mut out = Vec::new();
    ciborium::into_writer(&object, &mut out).unwrap();
    B64.encode(out)
}

/// The intermediate with the last byte of its serial number changed: the same names and key,
/// so the credential certificate still verifies with it, but bytes the root never signed.
fn with_tampered_apple_intermediate(object_b64: &str) -> String {
    with_edited_x5c(object_b64, |x5c| {
        let der = x5c[1].as_bytes_mut().unwrap();
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        // The serial follows the version: [0] { INTEGER 2 }, INTEGER <serial>.
        let mut pattern = vec![0xa0, 0x03, 0x02, 0x01, 0x02, 0x02];
        let serial = cert.tbs_certificate.raw_serial();
        pattern.push(serial.len() as u8);
        pattern.extend_from_slice(serial);
        let at = der
            .windows(pattern.len())
            .position(|w| w == pattern.as_slice())
            .expect("a v3 certificate's serial");
        der[at + pattern.len() - 1] ^= 1;
    })
}

/// The credential certificate with the last byte of its signature changed.
fn with_tampered_apple_leaf_signature(object_b64: &str) -> String {
    with_edited_x5c(object_b64, |x5c| {
        let der = x5c[0].as_bytes_mut().unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
    })
}
#[test]
fn a_cached_app_attest_intermediate_vouches_only_for_its_exact_bytes() {
    // Apple's real sample: the intermediate (Apple App Attestation CA 1) is checked against
    // the built-in root once, then answered from the cache; the credential certificate's
    // signature is checked every time.
    let v = apple_sample_verifier();
    let object = fixture("apple-sample.b64");
    let run = |object: &str, now: i64| {
        apple::verify(
            &v.apple_policy(),
            APPLE_SAMPLE_KEY_ID,
            object,
            b"test_server_challenge",
            now,
        )
        .map_err(|e| e.to_string())
    };
    for _ in 0..2 {
        run(object.trim(), APPLE_SAMPLE_TIME).expect("verifies, then from the cache");
    }
    assert_eq!(
        v.links.len(),
        1,
        "one link cached: Apple's CA 1 to its root"
    );
    // The cache does not skip the validity check: the same object, warm, after the credential
    // certificate expired.
    assert_fails(
        run(object.trim(), APPLE_SAMPLE_TIME + 4 * 86_400),
        "apple-appattest: certificate 0 has expired",
    );
    // The intermediate with one byte of its serial changed (other DER, same name and key)
    // misses the cache, is checked against the root again and refused.
    let tampered = with_tampered_apple_intermediate(&object);
    assert_fails(
        run(&tampered, APPLE_SAMPLE_TIME),
        "apple-appattest: the certificate chain does not end at a trusted root",
    );
    assert_eq!(v.links.len(), 1, "a failed check is not cached");

    // The same with a generated object, through the server's path.
    let root = TestRoot::new();
    let v = verifier(settings(&root));
    let member = apple(&root, AppleOpts::default());
    let jwk = serde_json::json!({});
    for _ in 0..2 {
        check(&v, member.clone(), &client_data(), &jwk, NOW).expect("verifies");
    }
    let mut tampered = member.clone();
    tampered["object"] =
        with_tampered_apple_intermediate(member["object"].as_str().unwrap()).into();
    assert_fails(
        check(&v, tampered, &client_data(), &jwk, NOW),
        "apple-appattest: the certificate chain does not end at a trusted root",
    );
    // Under the cached intermediate, the credential certificate's signature is still
    // checked: one byte of it changed is refused.
    let mut forged = member.clone();
    forged["object"] =
        with_tampered_apple_leaf_signature(member["object"].as_str().unwrap()).into();
    assert_fails(
        check(&v, forged, &client_data(), &jwk, NOW),
        "apple-appattest: certificate 0's signature does not verify with certificate 1's key",
    );
}
