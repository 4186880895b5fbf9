//! Helpers shared by the client and the verifier for talking to keybound over HTTP.

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, Url};
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// Parses a URL the SDK will send credentials to or fetch keys from. Plain `http` is refused
/// unless the host is a loopback address (local development) or the caller opted out: over
/// `http` anyone on the path could read the API key or swap the JWKS.
pub(crate) fn parse_service_url(url: &str, allow_insecure_http: bool) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::config(format!("invalid URL {url:?}: {e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback(&parsed) => {}
        _ => {
            return Err(Error::config(format!(
                "{url:?} must use https (plain http is only accepted for loopback hosts)"
            )));
        }
    }
    if parsed.cannot_be_a_base() || parsed.host().is_none() {
        return Err(Error::config(format!("{url:?} has no host")));
    }
    Ok(parsed)
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `Retry-After` in its delta-seconds form (RFC 9110 section 10.2.3). The HTTP-date form is
/// ignored; keybound sends seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[derive(Deserialize)]
struct Envelope {
    error: EnvelopeError,
}

#[derive(Deserialize)]
struct EnvelopeError {
    code: String,
    #[serde(default)]
    message: String,
}

/// Turns a non-success answer into an [`Error`] using the contract's envelope
/// `{"error": {"code", "message"}}`. An unknown code or another body gives
/// [`ErrorKind::UnexpectedResponse`] carrying the status.
pub(crate) async fn error_from_response(response: Response) -> Error {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<Envelope>(&body) {
        Ok(Envelope { error }) => match ErrorKind::from_code(&error.code, retry_after) {
            Some(kind) => Error::new(kind)
                .with_status(status)
                .with_message(error.message),
            None => Error::new(ErrorKind::UnexpectedResponse { status })
                .with_status(status)
                .with_message(format!("unknown error code {}", error.code)),
        },
        Err(_) => Error::new(ErrorKind::UnexpectedResponse { status }).with_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(parse_service_url("https://auth.example.com", false).is_ok());
        assert!(parse_service_url("http://127.0.0.1:8080", false).is_ok());
        assert!(parse_service_url("http://[::1]:8080", false).is_ok());
        assert!(parse_service_url("http://localhost:8080", false).is_ok());
        assert!(parse_service_url("http://auth.example.com", false).is_err());
        assert!(parse_service_url("http://auth.example.com", true).is_ok());
        assert!(parse_service_url("ftp://auth.example.com", true).is_err());
        assert!(parse_service_url("not a url", false).is_err());
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
