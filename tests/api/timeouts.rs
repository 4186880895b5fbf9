//! Connection limits (issue 15 item 4): a client cannot hold a connection open with half a
//! request head, half a body or an idle keep-alive past the (here shortened) timeouts; plain
//! HTTP is HTTP/1.1 unless h2c is asked for; connections beyond the cap are closed at once.
//!
//! Every test talks raw TCP, so it sees exactly what the server does with the socket. The
//! guard below only turns "never closed" into a failure instead of a hung test; no test
//! asserts how fast anything happens.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, TestDb, spawn_app_args};

/// Far beyond the 1 s timeouts the servers here are given: reaching it means the server
/// never closed the connection.
const GUARD: Duration = Duration::from_secs(20);

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn app(db: &TestDb, h2c: bool) -> TestApp {
    spawn_app_args(db, |a| {
        a.header_read_timeout_seconds = 1;
        a.body_read_timeout_seconds = 1;
        a.http2_cleartext = h2c;
    })
    .await
}

/// Reads until the server closes the connection; everything it sent.
async fn read_until_closed(conn: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    match tokio::time::timeout(GUARD, conn.read_to_end(&mut got)).await {
        Ok(_) => got,
        Err(_) => panic!("{what}: the server kept the connection open"),
    }
}

#[tokio::test]
async fn an_unfinished_request_head_is_closed() {
    let db = TestDb::sqlite().await;
    let app = app(&db, false).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(b"POST /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_until_closed(&mut conn, "half a header").await;
    assert!(
        !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 2"),
        "no success for half a request: {}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_partial_body_is_refused_and_closed() {
    let db = TestDb::sqlite().await;
    let app = app(&db, false).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(
        b"POST /admin/v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Authorization: Bearer test-admin-token-with-enough-entropy-0123456789\r\n\
          Content-Length: 100\r\n\r\n{\"name\": \"slow",
    )
    .await
    .unwrap();
    let got =
        String::from_utf8_lossy(&read_until_closed(&mut conn, "half a body").await).into_owned();
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("\"INVALID_REQUEST\""), "{got}");
    let keys = app
        .admin_get("/keys")
        .await
        .json::<serde_json::Value>()
        .await;
    assert_eq!(
        keys.unwrap()["keys"],
        serde_json::json!([]),
        "nothing created"
    );
}

#[tokio::test]
async fn a_body_dripped_byte_by_byte_is_refused_at_the_deadline() {
    // Each byte comes well within the between-chunks timeout; the whole body does not.
    let db = TestDb::sqlite().await;
    let app = app(&db, false).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(
        b"POST /v1/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let drip = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if conn.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), drip).await;
    let got =
        String::from_utf8_lossy(&read_until_closed(&mut conn, "dripped body").await).into_owned();
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains("did not arrive in time"), "{got}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let db = TestDb::sqlite().await;
    let app = app(&db, false).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // The answer arrives and the connection stays up for the next request...
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.to_ascii_lowercase().contains("connection: close"));
    // ...until it has been idle for the timeout.
    let rest = read_until_closed(&mut conn, "idle keep-alive").await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// Sends the HTTP/2 preface and an empty SETTINGS frame; true when the server answers with
/// an HTTP/2 frame (its own SETTINGS, type 4), i.e. speaks h2c.
async fn speaks_h2c(app: &TestApp) -> bool {
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(H2_PREFACE).await.unwrap();
    conn.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    match tokio::time::timeout(GUARD, conn.read_exact(&mut head)).await {
        Ok(Ok(_)) => head[3] == 4 && !head.starts_with(b"HTTP/"),
        Ok(Err(_)) => false,
        Err(_) => panic!("no answer to the HTTP/2 preface"),
    }
}

#[tokio::test]
async fn h2c_is_refused_unless_asked_for() {
    let db = TestDb::sqlite().await;
    let plain = app(&db, false).await;
    assert!(!speaks_h2c(&plain).await, "h2c is off by default");
    let h2c = app(&db, true).await;
    assert!(speaks_h2c(&h2c).await, "--http2-cleartext turns it on");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| a.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(app.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let got = read_until_closed(&mut third, "third connection").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // A held connection closing frees its place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}
