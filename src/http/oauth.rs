//! The RFC 6749 form of `POST /v1/token` (contract 9.1): RFC 8693 token exchange with the API
//! key as subject token, and the RFC 6749 section 6 refresh grant.
//!
//! One use case, two request parsers, two error writers: a form request is parsed here into
//! the same [`TokenRequest`] / [`RefreshRequest`] the JSON parser produces and handed to the
//! same [`crate::exchange`] functions, behind the same failure budget ([`super::guard`]'s
//! `guarded`). Only the last step differs: a refusal is written as RFC 6749 section 5.2's
//! `{"error", "error_description"}` ([`Error::into_oauth_response`]) instead of the
//! contract's envelope, which is what stock OAuth clients read (and how they recognise a
//! `use_dpop_nonce` challenge and retry).

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::extract::read_form;
use super::guard::{Refusal, guarded, presented};
use crate::error::{Error, OAuthErrorBody};
use crate::exchange::{self, DeviceInfo, RefreshRequest, TokenRequest, TokenResponse};
use crate::state::AppState;

/// RFC 8693 section 2.1's grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 6749 section 6's grant type.
pub const REFRESH_TOKEN_GRANT: &str = "refresh_token";
/// The `subject_token_type` of a keybound API key (contract 9.1).
pub const API_KEY_TOKEN_TYPE: &str = "urn:keybound:params:oauth:token-type:api-key";
/// RFC 8693 section 3: the only token type keybound issues.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The parameters of a form request at `POST /v1/token` (both grants). Parameters a grant
/// does not use are ignored, as RFC 6749 section 3.2 asks; one given twice is refused.
///
/// No `Debug`: `subject_token` is an API key and `refresh_token` a refresh token.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct TokenForm {
    /// `urn:ietf:params:oauth:grant-type:token-exchange` or `refresh_token`.
    grant_type: Option<String>,
    /// Token exchange: the API key `sk_…`.
    #[schema(format = Password)]
    subject_token: Option<String>,
    /// Token exchange: `urn:keybound:params:oauth:token-type:api-key`.
    subject_token_type: Option<String>,
    /// Token exchange: only `urn:ietf:params:oauth:token-type:access_token`.
    requested_token_type: Option<String>,
    /// Token exchange: space-separated scopes (default all of the key's).
    scope: Option<String>,
    /// Token exchange: one of the allowed audiences (default the first).
    audience: Option<String>,
    /// Token exchange: RFC 8707's name for the same thing; the same list of allowed audiences.
    resource: Option<String>,
    /// Token exchange: the JSON text of the JSON request's `device` member.
    device: Option<String>,
    /// Token exchange: RFC 8693 delegation is not supported; giving it is `invalid_request`.
    actor_token: Option<String>,
    /// Accepted and ignored: the API key is the client.
    #[allow(dead_code)]
    client_id: Option<String>,
    /// Refresh: the refresh token to spend.
    #[schema(format = Password)]
    refresh_token: Option<String>,
}

/// A refusal of a form request: a contract error, or a grant type this server does not know
/// (which has no contract code: it cannot happen in a JSON request).
pub(super) enum FormRefusal {
    /// RFC 6749 section 5.2 `unsupported_grant_type`.
    UnsupportedGrantType,
    /// Any contract error, written by the mapping table of 9.1.
    Contract(Error),
}

impl From<Error> for FormRefusal {
    fn from(e: Error) -> Self {
        FormRefusal::Contract(e)
    }
}

impl Refusal for FormRefusal {
    fn is_auth_failure(&self) -> bool {
        matches!(self, FormRefusal::Contract(e) if e.is_auth_failure())
    }
}

impl IntoResponse for FormRefusal {
    fn into_response(self) -> Response {
        match self {
            FormRefusal::UnsupportedGrantType => {
                let body = OAuthErrorBody {
                    error: "unsupported_grant_type".into(),
                    error_description: format!(
                        "grant_type must be {TOKEN_EXCHANGE_GRANT} or {REFRESH_TOKEN_GRANT}"
                    ),
                };
                (
                    StatusCode::BAD_REQUEST,
                    [(axum::http::header::CACHE_CONTROL, "no-store")],
                    axum::Json(body),
                )
                    .into_response()
            }
            FormRefusal::Contract(e) => e.into_oauth_response(),
        }
    }
}

/// A token exchange's answer: 3.1's body plus RFC 8693 section 2.2.1's `issued_token_type`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ExchangeAnswer {
    #[serde(flatten)]
    token: TokenResponse,
    /// Always `urn:ietf:params:oauth:token-type:access_token`.
    issued_token_type: &'static str,
}

/// What a form request asks for, once parsed.
enum Grant {
    Exchange { api_key: String, body: TokenRequest },
    Refresh(RefreshRequest),
}

/// `POST /v1/token` with a form body (the caller checked the content type).
pub(super) async fn token(
    state: &AppState,
    ip: std::net::IpAddr,
    headers: &HeaderMap,
    req: Request,
) -> Response {
    let work = async {
        let form: TokenForm = match read_form(req, state).await {
            Ok(form) => form,
            Err(e) => return (None, Err(e.into())),
        };
        let grant = match parse(form) {
            Ok(grant) => grant,
            Err(e) => return (None, Err(e)),
        };
        match grant {
            Grant::Exchange { api_key, body } => {
                let mut p = presented(headers, ip, exchange::TOKEN_PATH);
                // RFC 8693: the key travels as the subject token, never in a header.
                p.api_key = Some(&api_key);
                let (key_id, result) = exchange::exchange(&state.exchange, p, body)
                    .await
                    .into_parts();
                let answer = result.map(|token| {
                    Answer::Exchange(ExchangeAnswer {
                        token,
                        issued_token_type: ACCESS_TOKEN_TYPE,
                    })
                });
                (key_id, answer.map_err(FormRefusal::from))
            }
            Grant::Refresh(body) => {
                let p = presented(headers, ip, exchange::TOKEN_PATH);
                let answer = exchange::refresh(&state.exchange, p, body)
                    .await
                    .map(Answer::Refresh);
                (None, answer.map_err(FormRefusal::from))
            }
        }
    };
    match guarded(state, ip, work).await {
        Ok(res) => res,
        Err(refusal) => refusal.into_response(),
    }
}

/// Either grant's success body.
#[derive(Serialize)]
#[serde(untagged)]
enum Answer {
    Exchange(ExchangeAnswer),
    Refresh(TokenResponse),
}

fn parse(form: TokenForm) -> Result<Grant, FormRefusal> {
    let invalid = |m: &str| FormRefusal::Contract(Error::InvalidRequest(m.into()));
    match form.grant_type.as_deref() {
        None => Err(invalid("grant_type is required")),
        Some(TOKEN_EXCHANGE_GRANT) => {
            let api_key = form
                .subject_token
                .ok_or(FormRefusal::Contract(Error::MissingApiKey))?;
            match form.subject_token_type.as_deref() {
                Some(API_KEY_TOKEN_TYPE) => {}
                None => return Err(invalid("subject_token_type is required")),
                Some(_) => {
                    return Err(invalid(
                        "subject_token_type must be urn:keybound:params:oauth:token-type:api-key",
                    ));
                }
            }
            if form
                .requested_token_type
                .as_deref()
                .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
            {
                return Err(invalid(
                    "requested_token_type: only urn:ietf:params:oauth:token-type:access_token is issued",
                ));
            }
            if form.actor_token.is_some() {
                return Err(invalid("actor_token: delegation is not supported"));
            }
            let audience = match (form.audience, form.resource) {
                (Some(a), Some(r)) if a != r => {
                    return Err(invalid("give audience or resource, not two different ones"));
                }
                (a, r) => a.or(r),
            };
            let device = form.device.as_deref().map(parse_device).transpose()?;
            Ok(Grant::Exchange {
                api_key,
                body: TokenRequest {
                    scope: form.scope,
                    audience,
                    device,
                },
            })
        }
        Some(REFRESH_TOKEN_GRANT) => {
            // RFC 6749 section 6 lets a client narrow the scope; keybound keeps the family's
            // scope (as 3.2 does), and the response's `scope` says what was granted.
            let refresh_token = form
                .refresh_token
                .ok_or_else(|| invalid("refresh_token is required"))?;
            Ok(Grant::Refresh(RefreshRequest {
                refresh_token: refresh_token.into(),
            }))
        }
        Some(_) => Err(FormRefusal::UnsupportedGrantType),
    }
}

/// The `device` parameter: the JSON text of 3.1's `device` member, into the same type.
fn parse_device(text: &str) -> Result<DeviceInfo, FormRefusal> {
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(
            Error::InvalidRequest("device: expected the JSON text of an object".into()).into(),
        );
    }
    serde_json::from_str(text).map_err(|e| {
        Error::InvalidRequest(format!("device: {}", super::extract::describe(&e))).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> TokenForm {
        let text = serde_urlencoded::to_string(pairs).unwrap();
        serde_urlencoded::from_str(&text).unwrap()
    }

    fn refused(f: TokenForm) -> (StatusCode, String) {
        let Err(refusal) = parse(f) else {
            panic!("accepted")
        };
        match refusal {
            FormRefusal::UnsupportedGrantType => {
                (StatusCode::BAD_REQUEST, "unsupported_grant_type".into())
            }
            FormRefusal::Contract(e) => {
                let (status, error) = e.oauth_error();
                (status, error.into_owned())
            }
        }
    }

    #[test]
    fn a_token_exchange_becomes_the_json_request() {
        let f = form(&[
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", "sk_test_x"),
            ("subject_token_type", API_KEY_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("scope", "read:users"),
            ("resource", "https://api.example.com"),
            ("client_id", "anything"),
            (
                "device",
                r#"{"name": "n", "attributes": {"platform": "ios"}}"#,
            ),
        ]);
        let Ok(Grant::Exchange { api_key, body }) = parse(f) else {
            panic!("not an exchange")
        };
        assert_eq!(api_key, "sk_test_x");
        assert_eq!(body.scope.as_deref(), Some("read:users"));
        assert_eq!(body.audience.as_deref(), Some("https://api.example.com"));
        let device = body.device.unwrap();
        assert_eq!(device.name.as_deref(), Some("n"));
        assert_eq!(device.attributes["platform"], "ios");
    }

    #[test]
    fn malformed_grants_are_refused_with_the_oauth_code() {
        let x = TOKEN_EXCHANGE_GRANT;
        let t = API_KEY_TOKEN_TYPE;
        let cases: [(&[(&str, &str)], &str); 9] = [
            (&[], "invalid_request"),
            (&[("grant_type", "password")], "unsupported_grant_type"),
            (
                &[("grant_type", x), ("subject_token_type", t)],
                "invalid_request",
            ),
            (
                &[("grant_type", x), ("subject_token", "k")],
                "invalid_request",
            ),
            (
                &[
                    ("grant_type", x),
                    ("subject_token", "k"),
                    ("subject_token_type", "jwt"),
                ],
                "invalid_request",
            ),
            (
                &[
                    ("grant_type", x),
                    ("subject_token", "k"),
                    ("subject_token_type", t),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:id_token",
                    ),
                ],
                "invalid_request",
            ),
            (
                &[
                    ("grant_type", x),
                    ("subject_token", "k"),
                    ("subject_token_type", t),
                    ("device", "[1]"),
                ],
                "invalid_request",
            ),
            (
                &[
                    ("grant_type", x),
                    ("subject_token", "k"),
                    ("subject_token_type", t),
                    ("audience", "https://a"),
                    ("resource", "https://b"),
                ],
                "invalid_request",
            ),
            (&[("grant_type", "refresh_token")], "invalid_request"),
        ];
        for (pairs, want) in cases {
            let (status, error) = refused(form(pairs));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{pairs:?}");
            assert_eq!(error, want, "{pairs:?}");
        }
    }

    #[test]
    fn a_device_error_does_not_echo_the_value() {
        let f = form(&[
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", "k"),
            ("subject_token_type", API_KEY_TOKEN_TYPE),
            ("device", r#"{"name": 1, "sk_prod_secret": "x"}"#),
        ]);
        let Err(FormRefusal::Contract(e)) = parse(f) else {
            panic!("accepted")
        };
        assert!(!e.to_string().contains("sk_prod_secret"), "{e}");
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        let parsed: Result<TokenForm, _> =
            serde_urlencoded::from_str("grant_type=refresh_token&grant_type=refresh_token");
        assert!(parsed.is_err());
    }
}
