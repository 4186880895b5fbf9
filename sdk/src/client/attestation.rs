//! The hook for platform attestation (contract section 8): the app proves once, at
//! enrollment, that its device key lives in a genuine install on genuine hardware.

use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::error::Result;

/// Produces a platform attestation for the device key, for a [`Client`](crate::Client) built
/// with [`attestation_provider`](crate::ClientBuilder::attestation_provider).
///
/// Before the first exchange of a new device key the client fetches a challenge
/// (`POST /v1/attestation/challenge`), calls [`attest`](Self::attest) with the *client data*
/// `<challenge>.<jkt>` (ASCII; `jkt` is the RFC 7638 thumbprint of the device key), and sends
/// what it returns as `device.attestation`, with `challenge` filled in by the client. Once
/// keybound answers `trust.attested` with a format, the client never attests that key again
/// (it persists that in its [`Session`](crate::Session)). It also attests once more when an
/// exchange is refused with `ATTESTATION_REQUIRED`.
///
/// What to return, per format (base64 is standard base64):
///
/// - iOS, `{"format": "apple-appattest", "key_id": "<base64 key identifier>", "object":
///   "<base64 attestation object>"}`: `DCAppAttestService.generateKey` gives the key id,
///   `attestKey(keyId, clientDataHash: SHA256(client_data))` the object.
/// - Android, `{"format": "android-key", "certificate_chain": ["<base64 DER>", …]}`: the
///   certificate chain of the DPoP key itself, a Keystore P-256 key generated with
///   `setAttestationChallenge(client_data)`, leaf first. Android fixes the challenge when the
///   key is generated, so generate the device key after fetching the challenge.
pub trait AttestationProvider: Send + Sync + fmt::Debug {
    /// The format-specific `attestation` member (a JSON object with `format`) for
    /// `client_data`.
    fn attest<'a>(
        &'a self,
        client_data: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<Value>> + Send + 'a>>;
}
