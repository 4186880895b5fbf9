//! A minimal keep-alive HTTP/1.1 client connection for the open loop: one task writes a
//! request and reads its answer on its own socket, with no connection task beside it.
//!
//! hyper's client splits a connection in two tasks (the `SendRequest` handle and the
//! connection that does the I/O) joined by channels, so every request wakes the other task
//! twice. In the open loop the generator's workers park between the schedule's ticks, and
//! those wake-ups cost it ~10 µs an exchange more than in the closed loop, on the two cores it
//! shares with the server (`docs/benchmarks.md`, seventeenth session). This client does the
//! same exchange from the task that sends it. Requests are the `http::Request`s the phases
//! build; answers are parsed with `httparse` (hyper's own parser) and must carry a
//! `content-length` (keybound's do), anything else is an I/O error.

use std::io::Write as _;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Headers an answer may have at most.
const MAX_HEADERS: usize = 32;

/// One keep-alive connection.
pub(super) struct Wire {
    stream: TcpStream,
    /// Bytes read and not yet part of an answer.
    read: BytesMut,
    /// The request being written (reused).
    write: Vec<u8>,
}

impl Wire {
    pub(super) async fn connect(addr: SocketAddr) -> std::io::Result<Wire> {
        Ok(Wire {
            stream: super::load::tcp(addr).await?,
            read: BytesMut::with_capacity(8 * 1024),
            write: Vec::with_capacity(2 * 1024),
        })
    }

    /// Sends `req` and reads its answer: its status and body.
    pub(super) async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> std::io::Result<(StatusCode, Bytes)> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        let w = &mut self.write;
        w.clear();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(target.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        write!(w, "content-length: {}\r\n\r\n", body.len())?;
        w.extend_from_slice(&body);
        self.stream.write_all(w).await?;
        self.answer().await
    }

    async fn answer(&mut self) -> std::io::Result<(StatusCode, Bytes)> {
        loop {
            if let Some((head_len, status, body_len)) = self.head()? {
                while self.read.len() < head_len + body_len {
                    self.fill().await?;
                }
                self.read.advance(head_len);
                return Ok((status, self.read.split_to(body_len).freeze()));
            }
            self.fill().await?;
        }
    }

    /// The answer's head, once all of it is read: its length, status and body length.
    fn head(&self) -> std::io::Result<Option<(usize, StatusCode, usize)>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let head_len = match res.parse(&self.read).map_err(std::io::Error::other)? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => return Ok(None),
        };
        let status = res
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        let body_len = res
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("an answer without content-length"))?;
        Ok(Some((head_len, status, body_len)))
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that reads each request whole (sending it on the channel) and writes the
    /// given answers, one per request, each in pieces of `piece` bytes.
    async fn serve(
        answers: Vec<&'static [u8]>,
        piece: usize,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut got = Vec::new();
            for answer in answers {
                // Up to the end of the head, then the body's 2 bytes ("{}").
                while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"{}") {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(std::mem::take(&mut got));
                for chunk in answer.chunks(piece) {
                    s.write_all(chunk).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        });
        (addr, rx)
    }

    fn request() -> Request<Full<Bytes>> {
        Request::post("/v1/token?x=1")
            .header("host", "127.0.0.1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }

    #[tokio::test]
    async fn answers_in_pieces_are_read_whole_one_after_another() {
        let (addr, mut requests) = serve(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\n\r\nnope",
            ],
            7,
        )
        .await;
        let mut wire = Wire::connect(addr).await.unwrap();
        let (status, body) = wire.exchange(request()).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"{\"ok\":true}"[..]));
        let (status, body) = wire.exchange(request()).await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::UNAUTHORIZED, &b"nope"[..])
        );
        let sent = String::from_utf8(requests.recv().await.unwrap()).unwrap();
        assert_eq!(
            sent,
            "POST /v1/token?x=1 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[tokio::test]
    async fn an_answer_without_length_or_a_closed_connection_is_an_error() {
        let (addr, _) = serve(
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"],
            64,
        )
        .await;
        let mut wire = Wire::connect(addr).await.unwrap();
        assert!(wire.exchange(request()).await.is_err());
        // The server has answered its one request and gone.
        let (addr, _) = serve(vec![], 64).await;
        let mut wire = Wire::connect(addr).await.unwrap();
        assert!(wire.exchange(request()).await.is_err());
    }
}
