//! Extractors: JSON and form bodies in our envelope, the admin bearer token, the client IP.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, header, request::Parts};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::state::AppState;

/// A JSON body whose every rejection uses the contract's envelope: 413 over 16 KiB, 415 when
/// the content type is not JSON, 400 for malformed JSON or wrong types. An empty body is `{}`.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let json_type = is_json(req.headers());
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        // The whole body within the deadline: the body layer's timeout only bounds the pause
        // between two chunks, which a client dripping one byte at a time never exceeds.
        let read = Bytes::from_request(req, state);
        let bytes = tokio::time::timeout(state.settings.body_read_timeout, read)
            .await
            .map_err(|_| Error::InvalidRequest("the request body did not arrive in time".into()))?
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge
                } else {
                    Error::InvalidRequest("could not read the request body".into())
                }
            })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        if bytes != b"{}" && (!json_type || !has_type) {
            return Err(Error::UnsupportedMediaType);
        }
        // Every body of the API is an object. serde would also read a struct from an array
        // (`[]` as an empty struct), which is not what the client meant.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Error::InvalidRequest(
                "invalid JSON body: expected a JSON object".into(),
            ));
        }
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(|e| Error::InvalidRequest(describe(&e)))
    }
}

/// A body that is either form-encoded (`application/x-www-form-urlencoded`, the OAuth
/// endpoints' native form: RFC 7009, RFC 7662) or JSON (as [`Json`] reads it). Rejections use
/// the contract's envelope: 413 over 16 KiB, 415 for any other content type, 400 for a body
/// that does not parse (a parameter given twice included).
pub struct FormOrJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for FormOrJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        if is_form(req.headers()) {
            read_form(req, state).await.map(FormOrJson)
        } else {
            Json::from_request(req, state)
                .await
                .map(|Json(t)| FormOrJson(t))
        }
    }
}

/// Whether the content type is `application/x-www-form-urlencoded`, with or without
/// parameters (`charset=UTF-8`, as browsers and OAuth libraries send it).
pub fn is_form(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m == "application/x-www-form-urlencoded")
}

/// Reads a form-encoded body into `T` (with the same 16 KiB limit as JSON bodies). Decoding is
/// serde_urlencoded's (what axum's `Form` uses); a parameter given twice is refused, as RFC
/// 6749 section 3.2 requires, and no message echoes a value.
pub async fn read_form<T: DeserializeOwned>(req: Request, state: &AppState) -> Result<T, Error> {
    let bytes = Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge
        } else {
            Error::InvalidRequest("could not read the request body".into())
        }
    })?;
    serde_urlencoded::from_bytes(&bytes).map_err(|e| {
        Error::InvalidRequest(format!("invalid form body: {}", redact(&e.to_string())))
    })
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(mime) = media_type(headers) else {
        return false;
    };
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A serde error for the client, with input values cut out: a body may carry a secret in the
/// wrong field (or as a field name), and an error message must never echo it.
pub(super) fn describe(e: &serde_json::Error) -> String {
    format!("invalid JSON body: {}", redact(&e.to_string()))
}

/// `msg` without the client's input: serde writes input strings in double quotes, and an
/// unknown field or variant name in backticks right after `unknown field`/`unknown variant`.
/// Other backtick-quoted names are ours (`missing field `name``, `expected one of …`) and
/// stay, so the message still says what to fix.
fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_quotes = false;
    for c in msg.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
            if in_quotes {
                out.push_str("\"…\"");
            }
        } else if !in_quotes {
            out.push(c);
        }
    }
    for marker in ["unknown field `", "unknown variant `"] {
        if let Some(start) = out.find(marker).map(|i| i + marker.len())
            && let Some(len) = out[start..].find('`')
        {
            out.replace_range(start..start + len, "…");
        }
    }
    out
}

/// A query string parsed into `T`, refused with a 400 in our envelope. Like [`Json`], the
/// message never echoes an input value.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| {
                Error::InvalidRequest(format!("invalid query string: {}", redact(&e.body_text())))
            })
    }
}

/// Proof that the request carried the admin token. The admin API answers 404 when no token
/// is configured, so its existence is not advertised.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        check_admin_token(state, &parts.headers, ip).await?;
        Ok(AdminAuth)
    }
}

/// The admin-token check, for any route that accepts the admin token (the admin API, and
/// endpoints such as introspection that also take it): `NOT_FOUND` when no token is
/// configured, `RATE_LIMITED` while `ip` has spent its budget of wrong tokens
/// (`--admin-failure-budget`), `INVALID_ADMIN_TOKEN` for a missing or wrong one (which
/// spends the budget; the failure that spends it raises a `FAILURE_BURST` alert).
pub async fn check_admin_token(
    state: &AppState,
    headers: &HeaderMap,
    ip: IpAddr,
) -> Result<(), Error> {
    let Some(expected) = &state.admin_token_hash else {
        return Err(Error::NotFound);
    };
    // Refused before the comparison: past the budget, guessing gets no answer at all.
    state.admin_failures.check(ip).await?;
    if admin_token_matches(headers, expected) {
        return Ok(());
    }
    if state.admin_failures.record_failure(ip).await? {
        state.alerts.raise_once(
            crate::alerts::AlertKind::FailureBurst,
            &format!("admin:{ip}"),
            None,
            Some(ip),
            serde_json::json!({
                "credential": "admin_token",
                "budget_per_minute": state.settings.admin_failure_budget,
            }),
        );
    }
    Err(Error::InvalidAdminToken)
}

/// Whether `Authorization: Bearer <token>` carries the admin token whose SHA-256 is
/// `expected`. Digests are compared in constant time, so neither the content nor the length
/// of the token leaks by timing. An empty token never matches (none shorter than 32
/// characters can be configured).
fn admin_token_matches(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    let Some(presented) = bearer(headers).map(str::trim) else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    bool::from(digest.ct_eq(expected)) && !presented.is_empty()
}

/// The credential of an `Authorization: Bearer <credential>` header (RFC 6750 section 2.1),
/// the one parser for every bearer credential: the admin token, an API key sent as a bearer
/// token. The scheme name is case-insensitive (RFC 9110 section 11.1); `None` when the header
/// is absent, not text, or another scheme.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case("bearer ").then_some(credential)
}

/// The client's IP: the socket peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.settings.trusted_proxies,
        )))
    }
}

/// See [`ClientIp`]. Only the right-most untrusted hop can be believed: every hop to its left
/// was written by the client or by a proxy we do not control. Addresses are compared and
/// returned in canonical form ([`crate::net`]): `::ffff:10.0.0.5` is `10.0.0.5`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = crate::net::canonical(peer);
    let is_trusted = |ip: IpAddr| crate::net::any_contains(trusted, ip);
    if !is_trusted(peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>().map(crate::net::canonical) {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 5.6.7.8, 10.0.0.2".parse().unwrap(),
        );
        let untrusted_peer: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(
            client_ip(untrusted_peer, &h, &trusted),
            untrusted_peer,
            "untrusted peer"
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &HeaderMap::new(), &trusted),
            proxy,
            "no header"
        );
    }

    #[test]
    fn bearer_takes_the_credential_of_the_bearer_scheme_only() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let cases = [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Bearer ", Some("")),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("Bear", None),
        ];
        for (value, want) in cases {
            assert_eq!(bearer(&with(value)), want, "{value:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None, "no header");
    }

    #[test]
    fn mapped_addresses_are_trusted_and_returned_as_ipv4() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "::ffff:203.0.113.9, ::ffff:10.0.0.7".parse().unwrap(),
        );
        let mapped_proxy: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped_proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "a mapped peer in 10.0.0.0/8 is a trusted proxy, a mapped hop in it is skipped, \
             and the client comes back as IPv4"
        );
        let mapped_stranger: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped_stranger, &h, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap(),
            "an untrusted peer, canonical"
        );
    }

    #[test]
    fn serde_messages_do_not_echo_values() {
        let e = serde_json::from_str::<u32>("\"sk_prod_secret\"").unwrap_err();
        let d = describe(&e);
        assert!(!d.contains("sk_prod_secret"), "{d}");
    }

    #[test]
    fn unknown_names_are_cut_but_our_field_names_stay() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            name: String,
            kind: Kind,
        }
        #[derive(Debug, serde::Deserialize)]
        enum Kind {
            A,
        }
        let cases = [
            (
                r#"{"sk_prod_secret": 1}"#,
                "unknown field `…`, expected `name` or `kind`",
            ),
            (
                r#"{"name": "n", "kind": "sk_prod_secret"}"#,
                "unknown variant `…`",
            ),
            (r#"{"kind": "A"}"#, "missing field `name`"),
        ];
        for (body, want) in cases {
            let e = serde_json::from_str::<Body>(body).unwrap_err();
            let d = describe(&e);
            assert!(!d.contains("sk_prod_secret"), "{d}");
            assert!(d.contains(want), "{d}");
        }
    }
}
