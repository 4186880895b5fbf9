//! The last line of defence between a log line and stderr: anything shaped like a keybound
//! API key, refresh token or JWT is masked before the bytes leave the process.
//!
//! Secrets are kept out of logs structurally (typed secrets, spans without headers or bodies);
//! this filter exists for what structure cannot promise: a dependency's debug log quoting a
//! header, a future `?value` that formats a struct holding a token, a panic message. It knows
//! only the shapes (contract section 2 for keys, `rt_` + at least 43 base64url characters for refresh
//! tokens, three base64url parts starting `eyJ` for JWTs, which covers access tokens and DPoP
//! proofs), not the values, so it needs no access to secrets itself. Secrets without a shape
//! (admin token, master key) are covered only by their types.
//!
//! It over-masks on purpose: a checksum-invalid `sk_…` lookalike is masked too, because a
//! log line is no place to decide whether a key is real.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::LazyLock;

use regex::bytes::{Captures, Regex};
use tracing_subscriber::fmt::MakeWriter;

/// Shapes of keybound secrets, one alternative each (the first group tells which matched).
static SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(sk_(?:prod|test|dev)_)[0-9A-Za-z]{61}",
        r"|(rt_)[A-Za-z0-9_-]{43,}",
        r"|(eyJ)[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    ))
    .expect("static pattern")
});

/// Masks every secret-shaped run in `bytes`; borrows when there is none (the usual case).
pub fn redact(bytes: &[u8]) -> Cow<'_, [u8]> {
    SECRET.replace_all(bytes, |c: &Captures<'_>| {
        // Keep the prefix so a reader still sees what kind of secret was there.
        let (prefix, what): (&[u8], &[u8]) = if let Some(p) = c.get(1) {
            (p.as_bytes(), b"[REDACTED]")
        } else if let Some(p) = c.get(2) {
            (p.as_bytes(), b"[REDACTED]")
        } else {
            (b"", b"[REDACTED JWT]")
        };
        [prefix, what].concat()
    })
}

/// A [`MakeWriter`] that passes every byte through [`redact`] before `M`'s writer sees it.
#[derive(Debug, Clone)]
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.0.make_writer_for(meta))
    }
}

/// Buffers until a line is complete (no secret spans a newline), then writes it redacted.
/// `tracing_subscriber` makes one writer per event, so a line is usually the whole event;
/// whatever is left without a newline is written when the writer is dropped.
pub struct RedactingWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn new(inner: W) -> Self {
        RedactingWriter {
            inner,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, upto: usize) -> io::Result<()> {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        self.inner.write_all(&redact(&line))
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last_nl) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.emit(last_nl + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // A partial line stays pending: flushing it now could cut a secret in two.
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            let _ = self.emit(n);
        }
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;

    const KEY: &str = "sk_prod_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxy";
    const RT: &str = "rt_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";
    const JWT: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhayJ9.c2lnbmF0dXJl-_x";

    fn masked(s: &str) -> String {
        String::from_utf8(redact(s.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn fixtures_have_the_real_lengths() {
        assert_eq!(KEY.len(), "sk_prod_".len() + 61);
        assert_eq!(RT.len(), 3 + 43);
    }

    #[test]
    fn masks_each_shape_and_keeps_the_rest() {
        let cases = [
            (format!("key={KEY} ok"), "key=sk_prod_[REDACTED] ok"),
            (format!("{{\"t\":\"{RT}\"}}"), "{\"t\":\"rt_[REDACTED]\"}"),
            (format!("Bearer {JWT}."), "Bearer [REDACTED JWT]."),
            (
                format!("a {} b {RT} c {JWT}", KEY.replace("prod", "test")),
                "a sk_test_[REDACTED] b rt_[REDACTED] c [REDACTED JWT]",
            ),
            ("nothing secret here".into(), "nothing secret here"),
            (
                "sk_prod_short rt_short eyJonly".into(),
                "sk_prod_short rt_short eyJonly",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(masked(&input), want, "input: {input}");
        }
    }

    #[test]
    fn borrows_when_nothing_matches() {
        assert!(matches!(redact(b"plain line\n"), Cow::Borrowed(_)));
    }

    /// A `MakeWriter` into shared memory.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_secret_split_across_writes_is_still_masked() {
        let sink = Sink::default();
        {
            let mut w = RedactingWriter::new(sink.clone());
            let line = format!("token {RT} end\nnext {KEY}");
            for chunk in line.as_bytes().chunks(7) {
                w.write_all(chunk).unwrap();
                w.flush().unwrap();
            }
        }
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out, "token rt_[REDACTED] end\nnext sk_prod_[REDACTED]");
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    #[test]
    fn both_log_formats_are_masked_end_to_end() {
        for format in [
            crate::telemetry::LogFormat::Text,
            crate::telemetry::LogFormat::Json,
        ] {
            let sink = Sink::default();
            let filter = tracing_subscriber::EnvFilter::new("trace");
            let sub = super::super::subscriber(format, filter, sink.clone(), false);
            tracing::subscriber::with_default(sub, || {
                let _span = tracing::info_span!("request", token = RT).entered();
                tracing::debug!(key = KEY, header = ?format!("DPoP {JWT}"), "event {KEY}");
            });
            let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
            assert!(out.contains("sk_prod_[REDACTED]"), "{format:?}: {out}");
            for secret in [KEY, RT, JWT] {
                assert!(!out.contains(secret), "{format:?} leaked {secret}: {out}");
            }
        }
    }

    proptest! {
        #[test]
        fn no_key_survives_any_surroundings(pre in "[ -~]{0,40}", post in "[ -~]{0,40}",
                                            body in "[0-9A-Za-z]{61}") {
            let key = format!("sk_dev_{body}");
            let out = masked(&format!("{pre}{key}{post}"));
            prop_assert!(!out.contains(&key));
        }
    }
}
