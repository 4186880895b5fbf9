//! The foreign bindings, generated from the built library the way an app's build does it
//! (uniffi's library mode), and the Python ones run against real keybound servers.
//!
//! - Kotlin and Swift are generated on every run, so a change that breaks their generation
//!   fails here; they cannot be compiled on this machine (no Kotlin or Swift toolchain).
//! - Python is generated, loaded with the cdylib, and `tests/python/test_keybound.py` runs
//!   against real servers started in this process: three reached directly, two behind the
//!   suite's own man-in-the-middle proxy, and, with `KEYBOUND_TEST_POSTGRES_URL`, one whose
//!   PostgreSQL database is gone. It needs `python3` with `cryptography` (found, or installed
//!   into a throwaway venv from PyPI). Without `python3` the test is skipped, except under
//!   `CI=true`, where it fails (as it does then without PostgreSQL).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use camino::Utf8PathBuf;
use keybound::config::ServeArgs;
use keybound::keys::service::{self, Actor};
use keybound::server::Running;
use keybound::store::{Store, testing};
use secrecy::SecretString;
use serde_json::json;
use sha2::{Digest, Sha256};

const ADMIN_TOKEN: &str = "binding-tests-admin-token-0123456789abcdef";

/// The cdylib cargo built for this test (next to the test binary, or one level up).
fn cdylib() -> PathBuf {
    let name = format!(
        "{}keybound_ffi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    [
        deps.join(&name),
        deps.parent().expect("profile dir").join(&name),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| panic!("{name} not found near {}", deps.display()))
}

fn generate(language: uniffi::TargetLanguage, out: &Path) {
    uniffi::generate(uniffi::GenerateOptions {
        languages: vec![language.clone()],
        source: Utf8PathBuf::from_path_buf(cdylib()).expect("UTF-8 path"),
        out_dir: Utf8PathBuf::from_path_buf(out.to_owned()).expect("UTF-8 path"),
        config_override: None,
        // No ktlint/swiftformat here; formatting is cosmetic.
        format: false,
        crate_filter: None,
        metadata_no_deps: true,
    })
    .unwrap_or_else(|e| panic!("{language:?} bindings: {e:#}"));
}

fn read_all(dir: &Path) -> String {
    let mut text = String::new();
    for entry in walk(dir) {
        text.push_str(&std::fs::read_to_string(entry).unwrap_or_default());
    }
    text
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("out dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn kotlin_and_swift_bindings_generate_with_the_whole_surface() {
    let out = tempfile::tempdir().unwrap();
    generate(uniffi::TargetLanguage::Kotlin, &out.path().join("kotlin"));
    generate(uniffi::TargetLanguage::Swift, &out.path().join("swift"));

    let kotlin = read_all(&out.path().join("kotlin"));
    let swift = read_all(&out.path().join("swift"));
    for name in [
        "KeyboundClient",
        "DeviceSigner",
        "SessionStore",
        "AttestationProvider",
        "StoredSession",
        "ClientConfig",
        "KeyboundException",
    ] {
        assert!(kotlin.contains(name), "Kotlin lacks {name}");
    }
    for name in [
        "KeyboundClient",
        "DeviceSigner",
        "SessionStore",
        "AttestationProvider",
        "StoredSession",
        "ClientConfig",
        "KeyboundError",
    ] {
        assert!(swift.contains(name), "Swift lacks {name}");
    }
    assert!(
        kotlin.contains("suspend fun `sign`"),
        "Kotlin: sign is a suspend function"
    );
    assert!(
        swift.contains("func sign(message: Data) async throws"),
        "Swift: sign is async"
    );
    assert!(
        walk(&out.path().join("swift"))
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "modulemap")),
        "Swift needs its module map"
    );
}

/// `python3` with `cryptography`: the system one if it has it, else a venv in `scratch`.
fn python(scratch: &Path) -> Option<PathBuf> {
    let works = |python: &Path, code: &str| {
        Command::new(python)
            .args(["-c", code])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let system = PathBuf::from("python3");
    if !works(&system, "import sys") {
        return None;
    }
    if works(&system, "import cryptography") {
        return Some(system);
    }
    let venv = scratch.join("venv");
    let status = Command::new(&system)
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(status.success(), "cannot create a venv");
    let python = venv.join("bin").join("python3");
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "cryptography"])
        .status()
        .expect("pip");
    assert!(status.success(), "cannot install cryptography from PyPI");
    Some(python)
}

async fn server(scratch: &Path, name: &str, configure: impl FnOnce(&mut ServeArgs)) -> Running {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let store = keybound::store::open(&format!("sqlite://{}", dir.join("keybound.db").display()))
        .await
        .expect("store");
    start(store, configure).await
}

async fn start(store: Arc<dyn Store>, configure: impl FnOnce(&mut ServeArgs)) -> Running {
    let mut args = ServeArgs::for_tests();
    args.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    configure(&mut args);
    keybound::server::start(args, store)
        .await
        .expect("server starts")
}

/// A server on a PostgreSQL database of its own, with one API key, and then the database
/// dropped under it (as `tests/api/health.rs` does): the suite's exchanges meet a server that
/// has lost its storage and must fail closed with 503 `UNAVAILABLE`. The key is made before
/// the drop because nothing can be created once the database is gone. `None` without
/// `KEYBOUND_TEST_POSTGRES_URL`, which panics under `CI=true` instead.
async fn server_without_its_database() -> Option<(Running, String)> {
    let base = testing::postgres_test_url()?;
    let url = testing::fresh_postgres_url(&base).await;
    let store = keybound::store::open(&url).await.expect("PostgreSQL store");
    let settings = serde_json::from_value(json!({
        "name": "python", "env": "test", "scopes": ["read:users"], "trust_on_enroll": true,
    }))
    .expect("key settings");
    // The server enables integrity protection on the store it is given (key hashes are stored
    // MAC'd under keys sealed by its master key), so the key is made after it started.
    let server = start(store.clone(), |_| {}).await;
    let created = service::create(&*store, settings, &Actor::cli(), keybound::state::now())
        .await
        .expect("key created");
    testing::drop_postgres_database(&url).await;
    Some((server, created.key.expose().to_owned()))
}

// Unix only: the proxy's socket is passed as a file descriptor (and the venv layout is Unix's).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_bindings_pass_their_suite_against_real_servers() {
    use std::os::fd::OwnedFd;

    let scratch = tempfile::tempdir().unwrap();
    let Some(python) = python(scratch.path()) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 is missing and CI=true: the Python binding tests must run"
        );
        eprintln!("skipped: python3 not found");
        return;
    };

    // The bindings and the library they load, side by side.
    let bindings = scratch.path().join("bindings");
    generate(uniffi::TargetLanguage::Python, &bindings);
    let library = cdylib();
    std::fs::copy(&library, bindings.join(library.file_name().unwrap())).unwrap();

    // Three servers reached directly: short tokens (a refresh comes within the test), nonces,
    // and HTTPS.
    let plain = server(scratch.path(), "plain", |a| a.access_ttl_seconds = 3).await;
    let nonce = server(scratch.path(), "nonce", |a| a.require_dpop_nonce = true).await;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (
        scratch.path().join("tls.crt"),
        scratch.path().join("tls.key"),
    );
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    // The pin from rcgen's own encoding of the key, not from the SDK's certificate parsing.
    let pin = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(
        rcgen::PublicKeyData::subject_public_key_info(&cert.signing_key),
    ));
    let tls = server(scratch.path(), "tls", |a| {
        a.tls_cert = Some(cert_path.clone());
        a.tls_key = Some(key_path.clone());
    })
    .await;

    // Two servers behind the suite's man-in-the-middle proxy (a plain one and one demanding
    // nonces), which the suite reaches under the path prefixes `/plain` and `/nonce`. A proof's
    // `htu` is the URL the client used, so their issuers are the proxy's URLs, whose port must
    // be known before they start: the listening socket is bound here and handed to Python as
    // its stdin (inetd's way; the one descriptor std passes to a child without unsafe code),
    // so no other process can take the port in between.
    let mitm_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", mitm_listener.local_addr().unwrap());
    let mitm = server(scratch.path(), "mitm", |a| {
        a.issuer = Some(format!("{proxy}/plain"));
    })
    .await;
    let mitm_nonce = server(scratch.path(), "mitm-nonce", |a| {
        a.issuer = Some(format!("{proxy}/nonce"));
        a.require_dpop_nonce = true;
    })
    .await;
    let upstreams = json!({
        "plain": format!("http://{}", mitm.addr),
        "nonce": format!("http://{}", mitm_nonce.addr),
    });

    let down = server_without_its_database().await;

    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_keybound.py");
    let mut command = tokio::process::Command::new(&python);
    if let Some((server, key)) = &down {
        command
            .env("KB_DOWN_URL", format!("http://{}", server.addr))
            .env("KB_DOWN_KEY", key);
    }
    let output = command
        .arg(&suite)
        .env("PYTHONPATH", &bindings)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KB_URL", format!("http://{}", plain.addr))
        .env("KB_NONCE_URL", format!("http://{}", nonce.addr))
        .env("KB_TLS_URL", format!("https://{}", tls.addr))
        .env("KB_TLS_CA", &cert_path)
        .env("KB_TLS_PIN", &pin)
        .env("KB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KB_MITM_UPSTREAMS", upstreams.to_string())
        .stdin(Stdio::from(OwnedFd::from(mitm_listener)))
        .output()
        .await
        .expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stderr);
    eprintln!("{report}");
    for server in [plain, nonce, tls, mitm, mitm_nonce]
        .into_iter()
        .chain(down.map(|(server, _)| server))
    {
        server.stop().await;
    }
    assert!(
        output.status.success(),
        "the Python suite failed:\n{report}"
    );
    assert!(
        report.contains("Ran 10 tests"),
        "every Python test was collected:\n{report}"
    );
}
