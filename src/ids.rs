//! The values the stored records hold, as types that parse: a key's id and environment, a
//! scope, a browser origin and a device key's thumbprint. Once you hold one, it is valid.
//!
//! A base module (it imports nothing of ours) so that the store can decode rows into these
//! types once (`store/rows.rs`) and every layer above reads them without parsing again; the
//! API key format itself, which builds [`KeyId`]s, stays in [`crate::keys::format`] and
//! re-exports [`KeyId`] and [`KeyEnv`].
//!
//! Each serializes as the plain string it was parsed from (JSON and database alike), and
//! deserializes only through its parser. Each carries its OpenAPI schema (`utoipa::ToSchema`),
//! which states the parser's rule, so the document describes what the code accepts.
//!
//! It also makes the random UUIDs that name new records and requests ([`uuid_v4`],
//! [`uuid_v7`]), from the thread's CSPRNG rather than a system call each.

use std::fmt;
use std::ops::Deref;

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Length of the public id part of a key (and of its id): 12 base62 characters.
pub const ID_LEN: usize = 12;

/// Longest origin accepted, in bytes, so one key cannot bloat every row.
const MAX_ORIGIN: usize = 256;

/// A value that did not parse as the type it was read into. The message names the type,
/// never the value (a misplaced secret must not come back in an error or a log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {0}")]
pub struct InvalidValue(&'static str);

/// Implements what every string newtype here shares: `as_str`, `Deref<Target = str>`,
/// `Borrow<str>`,
/// `Serialize` as the plain string, `Display`, comparisons with strings, and `FromStr` and
/// `TryFrom<String>` through the type's `parse` (the latter is what its
/// `#[serde(try_from = "String")]` reads with).
macro_rules! string_type {
    ($T:ident, $what:literal) => {
        impl $T {
            /// The value as a string, as stored and sent.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $T {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        // By hand rather than `into = "String"`, which would copy the string first.
        impl Serialize for $T {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        // Hash and Eq are the string's, as `Borrow` requires: a map keyed by these types
        // can be read with a `&str`, and a list of them joined like strings.
        impl std::borrow::Borrow<str> for $T {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $T {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $T {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $T {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $T {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $T {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$T> for str {
            fn eq(&self, other: &$T) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$T> for String {
            fn eq(&self, other: &$T) -> bool {
                *self == other.0
            }
        }

        impl From<$T> for String {
            fn from(v: $T) -> String {
                v.0
            }
        }

        impl std::str::FromStr for $T {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<$T, InvalidValue> {
                $T::parse(s).ok_or(InvalidValue($what))
            }
        }

        impl TryFrom<String> for $T {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<$T, InvalidValue> {
                $T::parse(&s).ok_or(InvalidValue($what))
            }
        }
    };
}

/// The environment a key belongs to; part of both the key and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyEnv {
    /// Production traffic.
    Prod,
    /// Test environments.
    Test,
    /// Development.
    Dev,
}

impl KeyEnv {
    /// The lowercase name used in keys and ids.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEnv::Prod => "prod",
            KeyEnv::Test => "test",
            KeyEnv::Dev => "dev",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<KeyEnv> {
        match s {
            "prod" => Some(KeyEnv::Prod),
            "test" => Some(KeyEnv::Test),
            "dev" => Some(KeyEnv::Dev),
            _ => None,
        }
    }
}

impl std::str::FromStr for KeyEnv {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyEnv::parse(s)
            .ok_or_else(|| format!("unknown environment {s:?} (expected prod, test or dev)"))
    }
}

impl fmt::Display for KeyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key id, `ak_<env>_<12 base62>`. Safe to log and show.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(pattern = "^ak_(prod|test|dev)_[0-9A-Za-z]{12}$")]
pub struct KeyId(String);

string_type!(KeyId, "key id");

impl KeyId {
    /// Parses `ak_<env>_<12 base62>`.
    pub fn parse(s: &str) -> Option<KeyId> {
        let rest = s.strip_prefix("ak_")?;
        let (env, id) = rest.split_once('_')?;
        KeyEnv::parse(env)?;
        (id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| KeyId(s.to_owned()))
    }

    /// The id of the key of `env` whose public id is `id` (12 base62 characters: the caller,
    /// the key format, checked them).
    pub(crate) fn from_parts(env: KeyEnv, id: &str) -> KeyId {
        debug_assert!(id.len() == ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        KeyId(format!("ak_{}_{}", env.as_str(), id))
    }

    /// The environment encoded in the id.
    pub fn env(&self) -> KeyEnv {
        self.0[3..]
            .split('_')
            .next()
            .and_then(KeyEnv::parse)
            .unwrap_or(KeyEnv::Dev)
    }
}

/// An RFC 6749 scope token (section 3.3): 1 to 128 printable ASCII characters, no space, `"`
/// or `\`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(pattern = "^[\\x21\\x23-\\x5B\\x5D-\\x7E]{1,128}$")]
pub struct Scope(String);

string_type!(Scope, "scope");

impl Scope {
    /// Parses one scope token.
    pub fn parse(s: &str) -> Option<Scope> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        ok.then(|| Scope(s.to_owned()))
    }

    /// A scope read from storage: parsed, or, when it predates the current check, kept as
    /// stored, so a key created under older rules keeps working as it did instead of failing
    /// to load (`docs/design.md`, "Records are typed").
    pub fn from_stored(s: String) -> Scope {
        Scope::parse(&s).unwrap_or(Scope(s))
    }
}

// Kept lowercase without a trailing `/`, so it compares with a presented `Origin` header as
// RFC 6454 section 6.1 serializes it.
/// A browser origin `http(s)://host[:port]`, ASCII, no path; stored lowercase, without a
/// trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(
    max_length = 256,
    pattern = "^[Hh][Tt][Tt][Pp]([Ss])?://([A-Za-z0-9.-]+|\\[(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))\\])(:[0-9]{1,5})?/*$"
)]
pub struct Origin(String);

string_type!(Origin, "origin");

impl Origin {
    /// Parses an origin, normalised: lowercase, trailing `/`s dropped. At most 256 bytes
    /// as given.
    pub fn parse(s: &str) -> Option<Origin> {
        let lower = s.trim_end_matches('/').to_ascii_lowercase();
        (s.len() <= MAX_ORIGIN && is_origin(&lower)).then_some(Origin(lower))
    }

    /// An origin read from storage: parsed, or, when it predates the current check (origins
    /// were checked more loosely before 2026-11-22), kept as stored. Such an origin matches
    /// exactly what it matched before (the header compared ignoring ASCII case) and keeps the
    /// key's list restrictive; failing the whole key instead would refuse its non-browser
    /// clients too, which the list never concerned.
    pub fn from_stored(s: String) -> Origin {
        Origin::parse(&s).unwrap_or(Origin(s))
    }

    /// Whether `presented` (an `Origin` header) is this origin, compared as [`Origin::parse`]
    /// normalises it, without allocating.
    pub fn matches(&self, presented: &str) -> bool {
        // Stored origins are lowercase ASCII: equal to the lowercased header exactly when
        // equal to the header ignoring ASCII case.
        self.0.eq_ignore_ascii_case(presented.trim_end_matches('/'))
    }
}

/// `http(s)://host[:port]` in lowercase: a host of letters, digits, `.` and `-`, or a
/// bracketed IPv6 address, and a port of 1 to 5 digits. ASCII only (RFC 6454 section 6.1:
/// hosts in their IDNA form; an IPv6 literal as in RFC 3986). The grammar of [`Origin`]'s
/// schema.
fn is_origin(lower: &str) -> bool {
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return false;
    };
    let (host_ok, port) = match rest.strip_prefix('[') {
        Some(literal) => match literal.split_once(']') {
            Some((ip, port)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => (false, ""),
        },
        None => {
            let end = rest.find(':').unwrap_or(rest.len());
            let (host, port) = rest.split_at(end);
            (
                !host.is_empty()
                    && host.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-'
                    }),
                port,
            )
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

// Computed by `keybound_jose` (as a string: the JOSE core is shared with the SDK and has no
// OpenAPI dependency); this type only checks the shape, once, where a thumbprint becomes part
// of a record.
/// The RFC 7638 SHA-256 thumbprint of a device's public key, base64url without padding (43
/// characters): a device's identity under its key and the access token's `cnf.jkt`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, ToSchema)]
#[serde(try_from = "String")]
#[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
pub struct Thumbprint(String);

string_type!(Thumbprint, "thumbprint");

impl Thumbprint {
    /// Length of a SHA-256 digest in unpadded base64url.
    pub const LEN: usize = 43;

    /// Parses a base64url SHA-256 thumbprint.
    pub fn parse(s: &str) -> Option<Thumbprint> {
        (s.len() == Thumbprint::LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Thumbprint(s.to_owned()))
    }
}

/// A random (version 4) UUID, its bits from the thread's CSPRNG.
///
/// `uuid`'s own constructors make one `getrandom` system call per id; `rand::thread_rng` is
/// ChaCha12, seeded and regularly reseeded from the operating system, so an id costs no
/// system call. The token path made three such calls an exchange (the request id, the refresh
/// family's id, the `jti`: `docs/benchmarks.md`, sixteenth session). `uuid` still sets the
/// version and variant bits.
pub fn uuid_v4() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::thread_rng().r#gen()).into_uuid()
}

/// A time-ordered (version 7) UUID: the Unix time in milliseconds, then 74 bits from the
/// thread's CSPRNG (see [`uuid_v4`]). Ids made in the same millisecond are not ordered among
/// themselves (`Uuid::now_v7` keeps a counter for that); they are as unlikely to repeat as
/// version 4 ids of 74 bits.
pub fn uuid_v7() -> uuid::Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random: [u8; 10] = rand::thread_rng().r#gen();
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_type_serializes_as_its_string_and_reads_only_valid_ones() {
        let id = KeyId::parse("ak_test_AAAAAAAAAAAA").expect("a key id");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#""ak_test_AAAAAAAAAAAA""#
        );
        assert_eq!(id.env(), KeyEnv::Test);
        assert_eq!(
            serde_json::from_str::<KeyId>(r#""ak_test_AAAAAAAAAAAA""#).unwrap(),
            id
        );
        let bad = serde_json::from_str::<KeyId>(r#""ak_live_AAAAAAAAAAAA""#).unwrap_err();
        assert!(!bad.to_string().contains("live"), "no value echoed: {bad}");

        let scope = Scope::parse("read:users").expect("a scope");
        assert_eq!(serde_json::to_string(&scope).unwrap(), r#""read:users""#);
        assert!(serde_json::from_str::<Vec<Scope>>(r#"["a b"]"#).is_err());

        let origin = Origin::parse("HTTPS://App.Example.com/").expect("an origin");
        assert_eq!(origin, "https://app.example.com");
        assert_eq!(
            serde_json::to_string(&origin).unwrap(),
            r#""https://app.example.com""#
        );

        let jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
        assert_eq!(Thumbprint::parse(jkt).unwrap(), jkt);
        assert!(Thumbprint::parse(&jkt[1..]).is_none(), "42 characters");
        assert!(
            Thumbprint::parse(&jkt.replace('-', "+")).is_none(),
            "not base64url"
        );

        assert_eq!(serde_json::to_string(&KeyEnv::Dev).unwrap(), r#""dev""#);
    }

    #[test]
    fn scopes_are_rfc_6749_tokens() {
        for ok in ["read:users", "a", &"x".repeat(128), "!#[]~"] {
            assert!(Scope::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "a b", "a\"b", "a\\b", &"x".repeat(129), "é", "a\tb"] {
            assert!(Scope::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn origins_are_scheme_host_port() {
        for (origin, ok) in [
            ("https://app.example.com", true),
            ("http://[::1]:8080/", true),
            ("http://localhost:3000", true),
            ("http://[", false),
            ("http://[de.ad]", false),
            ("https://exämple.com", false),
            ("https://a:123456", false),
            ("https://a.com/path", false),
            ("ftp://a.com", false),
        ] {
            assert_eq!(Origin::parse(origin).is_some(), ok, "{origin}");
        }
    }

    proptest! {
        #[test]
        fn an_origin_matches_a_header_exactly_when_the_header_parses_to_it(
            a in "[Hh][Tt]{2}[Pp][Ss]?://[a-cA-C.]{1,4}(:[0-9]{1,2})?/?",
            b in "[Hh][Tt]{2}[Pp][Ss]?://[a-cA-C.]{1,4}(:[0-9]{1,2})?/?",
        ) {
            let origin = Origin::parse(&a).expect("generated origins parse");
            let same = Origin::parse(&b).is_some_and(|o| o == origin);
            prop_assert_eq!(origin.matches(&b), same);
        }

        #[test]
        fn parsers_never_panic_and_round_trip(s in ".{0,140}") {
            for parsed in [
                KeyId::parse(&s).map(String::from),
                Scope::parse(&s).map(String::from),
                Thumbprint::parse(&s).map(String::from),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert_eq!(&parsed, &s);
            }
            if let Some(o) = Origin::parse(&s) {
                prop_assert_eq!(Origin::parse(o.as_str()), Some(o.clone()));
            }
        }
    }

    #[test]
    fn random_uuids_have_their_version_and_do_not_repeat() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let (a, b) = (uuid_v4(), uuid_v7());
            assert_eq!(a.get_version(), Some(uuid::Version::Random));
            assert_eq!(b.get_version(), Some(uuid::Version::SortRand));
            assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
            let (secs, nanos) = b.get_timestamp().expect("a v7 id has a time").to_unix();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                millis >= before && millis <= before + 60_000,
                "{millis} vs {before}"
            );
            assert!(seen.insert(a) && seen.insert(b), "an id repeated");
        }
    }
}
