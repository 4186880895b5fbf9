//! The registered claims of a JWS the issuer signed (RFC 7519 section 4.1): `iss`, `aud`, `exp`
//! and `nbf`, checked once its signature has verified, with a leeway for clock skew.

use serde::Deserialize;

use crate::error::InvalidTokenReason;

/// What the registered claims of one kind of JWS (access token, revocation feed page) must
/// say.
#[derive(Clone)]
pub(crate) struct ClaimRules {
    /// `iss` must be exactly this.
    pub(crate) issuer: String,
    /// Whether `iss` must be present. Status list tokens may leave it out (their `sub` names
    /// the list, under the issuer's URL); when present it must still match.
    pub(crate) require_issuer: bool,
    /// `aud` must name one of these; `None` when the JWS has no audience (the feed).
    pub(crate) audiences: Option<Vec<String>>,
    /// Whether `exp` is required (access tokens) rather than checked when present.
    pub(crate) require_exp: bool,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub(crate) leeway: u64,
}

#[derive(Deserialize)]
struct Registered {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// RFC 7519 section 4.1.3: one audience as a string, or several as an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, wanted: &str) -> bool {
        match self {
            Self::One(aud) => aud == wanted,
            Self::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

impl ClaimRules {
    /// Checks the JSON `payload` at `now` (Unix seconds). A required claim that is missing or
    /// mistyped makes the token [`Malformed`](InvalidTokenReason::Malformed); otherwise the
    /// first failed check names the reason: `exp`, `nbf`, `iss`, then `aud`.
    pub(crate) fn check(&self, payload: &[u8], now: u64) -> Result<(), InvalidTokenReason> {
        use InvalidTokenReason::*;
        let claims: Registered = serde_json::from_slice(payload).map_err(|_| Malformed)?;
        match claims.exp {
            Some(exp) if exp.saturating_add(self.leeway) < now => return Err(Expired),
            None if self.require_exp => return Err(Malformed),
            _ => {}
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway))
        {
            return Err(NotYetValid);
        }
        match claims.iss {
            Some(iss) if iss == self.issuer => {}
            Some(_) => return Err(WrongIssuer),
            None if self.require_issuer => return Err(Malformed),
            None => {}
        }
        if let Some(audiences) = &self.audiences {
            let aud = claims.aud.ok_or(Malformed)?;
            if !audiences.iter().any(|wanted| aud.names(wanted)) {
                return Err(WrongAudience);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NOW: u64 = 1_700_000_000;

    fn token_rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://auth.example.com".into(),
            require_issuer: true,
            audiences: Some(vec!["https://api.example.com".into(), "urn:b".into()]),
            require_exp: true,
            leeway: 30,
        }
    }

    fn claims(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut claims = json!({
            "iss": "https://auth.example.com", "aud": "https://api.example.com",
            "iat": NOW, "nbf": NOW, "exp": NOW + 300,
        });
        edit(&mut claims);
        claims.to_string().into_bytes()
    }

    #[test]
    fn each_claim_is_checked_with_the_leeway() {
        use InvalidTokenReason::*;
        let rules = token_rules();
        type Case = (&'static str, Vec<u8>, u64, Result<(), InvalidTokenReason>);
        let cases: Vec<Case> = vec![
            ("valid", claims(|_| {}), NOW, Ok(())),
            (
                "expired within the leeway",
                claims(|_| {}),
                NOW + 330,
                Ok(()),
            ),
            (
                "expired beyond the leeway",
                claims(|_| {}),
                NOW + 331,
                Err(Expired),
            ),
            ("nbf within the leeway", claims(|_| {}), NOW - 30, Ok(())),
            (
                "nbf beyond the leeway",
                claims(|_| {}),
                NOW - 31,
                Err(NotYetValid),
            ),
            ("no nbf", claims(|c| c["nbf"] = Value::Null), NOW, Ok(())),
            (
                "no exp",
                claims(|c| c["exp"] = Value::Null),
                NOW,
                Err(Malformed),
            ),
            (
                "exp not a number",
                claims(|c| c["exp"] = "soon".into()),
                NOW,
                Err(Malformed),
            ),
            (
                "other issuer",
                claims(|c| c["iss"] = "https://evil.example".into()),
                NOW,
                Err(WrongIssuer),
            ),
            (
                "no issuer",
                claims(|c| c["iss"] = Value::Null),
                NOW,
                Err(Malformed),
            ),
            (
                "other audience",
                claims(|c| c["aud"] = "https://other.example".into()),
                NOW,
                Err(WrongAudience),
            ),
            (
                "audience array with ours",
                claims(|c| c["aud"] = json!(["x", "urn:b"])),
                NOW,
                Ok(()),
            ),
            (
                "audience array without ours",
                claims(|c| c["aud"] = json!(["x", "y"])),
                NOW,
                Err(WrongAudience),
            ),
            (
                "no audience",
                claims(|c| c["aud"] = Value::Null),
                NOW,
                Err(Malformed),
            ),
            ("not JSON", b"{".to_vec(), NOW, Err(Malformed)),
        ];
        for (why, payload, now, want) in cases {
            assert_eq!(rules.check(&payload, now), want, "{why}");
        }
    }

    #[test]
    fn the_feed_needs_an_issuer_but_no_audience_or_expiry() {
        let rules = ClaimRules {
            audiences: None,
            require_exp: false,
            ..token_rules()
        };
        let page = json!({"iss": "https://auth.example.com", "iat": NOW, "revocations": []});
        assert_eq!(rules.check(page.to_string().as_bytes(), NOW), Ok(()));
        let page = json!({"iss": "https://evil.example", "iat": NOW});
        assert_eq!(
            rules.check(page.to_string().as_bytes(), NOW),
            Err(InvalidTokenReason::WrongIssuer)
        );
    }
}
