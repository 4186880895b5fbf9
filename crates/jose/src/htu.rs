//! `htu` comparison (RFC 9449 §4.3 check 9), for [`dpop::verify_proof`](crate::dpop::verify_proof).
//!
//! The check is "the `htu` claim matches the HTTP URI value for the HTTP request in which the
//! JWT was received, ignoring any query and fragment parts", and servers "SHOULD employ
//! syntax-based normalization (Section 6.2.2 of RFC 3986) and scheme-based normalization
//! (Section 6.2.3 of RFC 3986) before comparing".
//!
//! So both the proof's `htu` and the URI we expect go through [`normalize`], and the results
//! are compared as strings. What that means in practice:
//!
//! * query and fragment are dropped from **both** sides. A proof whose `htu` carries a query
//!   (which RFC 9449 §4.2 tells clients not to send) is therefore *accepted* when the rest
//!   matches. That is what §4.3 says, and it costs nothing: the query was never bound by the
//!   proof in the first place.
//! * scheme and host are compared case-insensitively (RFC 3986 §6.2.2.1);
//! * the default port (80 for http, 443 for https) and an empty port are dropped, and an empty
//!   path becomes `/` (RFC 3986 §6.2.3);
//! * percent-encodings are normalised: hex digits upper-cased, encoded unreserved characters
//!   decoded (RFC 3986 §6.2.2.2);
//! * `.` and `..` path segments are removed (RFC 3986 §6.2.2.3, algorithm of §5.2.4).
//!
//! The path is otherwise compared exactly: `/V1/token` is not `/v1/token`, and a trailing `/`
//! matters.
//!
//! We only accept what a DPoP client has any business sending, and refuse the rest as a
//! mismatch: only the `http` and `https` schemes, no userinfo (`user@host` has no meaning in a
//! target URI and is a classic phishing/confusion vector), only visible ASCII (a client sends
//! the URI encoded), and no percent-encoding in the host.

/// Returns the normalised form of an absolute `http`/`https` URI, without query or fragment,
/// or `None` when `uri` is not one we accept.
pub fn normalize(uri: &str) -> Option<String> {
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    // The fragment starts at the first '#', the query at the first '?' before it
    // (RFC 3986 §3): drop both.
    let uri = uri.split('#').next().unwrap_or_default();
    let uri = uri.split('?').next().unwrap_or_default();

    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };

    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return None;
    }

    let (host, port) = split_host_port(authority)?;
    let host = normalize_host(host)?;
    let port = match port {
        // "http://example.com:/" is the same URI as "http://example.com/" (RFC 3986 §6.2.3).
        None | Some("") => None,
        Some(digits) => {
            if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let port: u16 = digits.parse().ok()?;
            (port != default_port).then_some(port)
        }
    };

    let path = remove_dot_segments(&normalize_percent_encoding(path)?);

    let mut out = String::with_capacity(scheme.len() + host.len() + path.len() + 9);
    out.push_str(&scheme);
    out.push_str("://");
    out.push_str(&host);
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(&path);
    Some(out)
}

/// Splits `host[:port]`, where host may be an IP literal in brackets (RFC 3986 §3.2.2).
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, after) = authority.split_at(end + 1);
        match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => Some((host, Some(port))),
            None => Some((authority, None)),
        }
    }
}

/// Lower-cases the host (RFC 3986 §6.2.2.1) after checking its characters.
fn normalize_host(host: &str) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    let ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // IPv6 or IPvFuture literal; zone ids ("%25eth0") are refused with every '%'.
        !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'.')
    } else {
        // reg-name / IPv4: unreserved and sub-delims; percent-encoded hosts are refused.
        host.bytes().all(|b| is_unreserved(b) || is_sub_delim(b))
    };
    ok.then(|| host.to_ascii_lowercase())
}

/// Percent-encoding normalisation of a path (RFC 3986 §6.2.2.2): `%xx` of an unreserved
/// character is decoded, every other `%xx` gets upper-case hex digits. Characters that may not
/// appear unencoded in a path, and broken `%` escapes, make the URI unacceptable.
fn normalize_percent_encoding(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            let decoded = hi << 4 | lo;
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else if is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/') {
            out.push(char::from(b));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

/// `remove_dot_segments` of RFC 3986 §5.2.4 for the only paths we see after an authority:
/// empty or starting with `/`. An empty result becomes `/` (RFC 3986 §6.2.3).
fn remove_dot_segments(path: &str) -> String {
    let Some(rest) = path.strip_prefix('/') else {
        return "/".to_owned();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        // "/a/b/." and "/a/b/.." name a directory: keep the trailing slash.
        if i == last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equivalent_uris_normalise_to_the_same_string() {
        let expected = "https://auth.example.com/v1/token";
        let cases = [
            ("https://auth.example.com/v1/token", "identical"),
            ("HTTPS://Auth.Example.COM/v1/token", "scheme and host case"),
            (
                "https://auth.example.com:443/v1/token",
                "default https port",
            ),
            ("https://auth.example.com:/v1/token", "empty port"),
            (
                "https://auth.example.com:00443/v1/token",
                "port with leading zeros",
            ),
            (
                "https://auth.example.com/v1/token?x=1",
                "query ignored (RFC 9449 §4.3)",
            ),
            ("https://auth.example.com/v1/token#frag", "fragment ignored"),
            (
                "https://auth.example.com/v1/token?a=b#c",
                "query and fragment",
            ),
            (
                "https://auth.example.com/v1/%74oken",
                "encoded unreserved char",
            ),
            ("https://auth.example.com/v1/./token", "dot segment"),
            ("https://auth.example.com/v1/x/../token", "dot-dot segment"),
            (
                "https://auth.example.com/v1/%2E/token",
                "encoded dot segment",
            ),
        ];
        for (uri, why) in cases {
            assert_eq!(normalize(uri).as_deref(), Some(expected), "{why}: {uri}");
        }
        assert_eq!(
            normalize("http://example.com:80").as_deref(),
            Some("http://example.com/"),
            "default http port and empty path"
        );
        assert_eq!(
            normalize("http://127.0.0.1:8080/v1/token").as_deref(),
            Some("http://127.0.0.1:8080/v1/token"),
            "non-default port kept"
        );
        assert_eq!(
            normalize("http://[::1]:8080/a%2fb").as_deref(),
            Some("http://[::1]:8080/a%2Fb"),
            "IPv6 literal, reserved escape upper-cased but kept encoded"
        );
    }

    #[test]
    fn different_uris_stay_different() {
        let expected = normalize("https://auth.example.com/v1/token").unwrap();
        let cases = [
            ("http://auth.example.com/v1/token", "scheme"),
            ("https://auth.example.com:8443/v1/token", "port"),
            ("https://auth.example.org/v1/token", "host"),
            (
                "https://auth.example.com/V1/token",
                "path is case-sensitive",
            ),
            ("https://auth.example.com/v1/token/", "trailing slash"),
            ("https://auth.example.com/v1/token/refresh", "longer path"),
            (
                "https://auth.example.com/v1/%2Ftoken",
                "encoded slash is not a slash",
            ),
        ];
        for (uri, why) in cases {
            assert_ne!(
                normalize(uri).as_deref(),
                Some(expected.as_str()),
                "{why}: {uri}"
            );
        }
    }

    #[test]
    fn unacceptable_uris_are_refused() {
        let cases = [
            ("", "empty"),
            ("/v1/token", "relative"),
            ("auth.example.com/v1/token", "no scheme"),
            ("ftp://auth.example.com/v1/token", "scheme"),
            ("https:///v1/token", "empty host"),
            ("https://user@auth.example.com/v1/token", "userinfo"),
            ("https://auth.example.com:99999/", "port out of range"),
            ("https://auth.example.com:44a/", "port not numeric"),
            ("https://auth.example.com/v1/to ken", "space"),
            ("https://auth.example.com/v1/tökén", "non-ASCII"),
            ("https://auth.example.com/v1/%zz", "broken escape"),
            ("https://auth.example.com/v1/%4", "truncated escape"),
            (
                "https://auth.example.com/v1/<x>",
                "char not allowed in a path",
            ),
            ("https://auth%2Eexample.com/", "percent-encoded host"),
            ("https://[::1/", "unterminated IP literal"),
            ("https://[::1]x/", "junk after IP literal"),
        ];
        for (uri, why) in cases {
            assert_eq!(normalize(uri), None, "{why}: {uri}");
        }
    }

    #[test]
    fn dot_segments_follow_rfc_3986_section_5_2_4() {
        let cases = [
            ("", "/"),
            ("/", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../b", "/b"),
            ("/a//b", "/a//b"),
        ];
        for (path, want) in cases {
            assert_eq!(remove_dot_segments(path), want, "{path}");
        }
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(s in "\\PC{0,64}", tail in "[a-zA-Z0-9%/.:?#@\\[\\]-]{0,40}") {
            for candidate in [s.clone(), format!("https://{tail}"), format!("HTTP://h/{tail}")] {
                if let Some(once) = normalize(&candidate) {
                    prop_assert_eq!(normalize(&once), Some(once.clone()));
                }
            }
        }
    }
}
