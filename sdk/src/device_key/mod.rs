//! Device keys: the key a DPoP proof is signed with, and so the identity of a device.
//!
//! The private key never leaves an implementation of [`DeviceKey`]: the SDK only asks for the
//! public JWK and for signatures. That lets a mobile app keep the key in the Secure Enclave or
//! the Android Keystore (ES256) and still use this crate. Signing may be asynchronous (a
//! keystore that asks for a biometric, a key behind a foreign-language binding): the client
//! awaits it without blocking a runtime thread.

mod ed25519;
mod es256;

pub use ed25519::Ed25519DeviceKey;
pub use es256::Es256DeviceKey;

use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Result;
use crate::jose::jwk_thumbprint;

/// A device's signing key. keybound knows a device by the RFC 7638 thumbprint of this key.
///
/// Implement it to keep the private key in a hardware keystore. A key held in memory answers
/// [`sign`](Self::sign) with [`Signing::ready`] (an Ed25519 signature takes ~20 µs, fine
/// inline); a keystore that may prompt the user or call into another runtime answers with
/// [`Signing::later`], and the [`Client`](crate::Client) awaits it.
pub trait DeviceKey: Send + Sync + fmt::Debug {
    /// The public key as a JWK (`kty`, `crv`, `x`, and `y` for EC), with no private members.
    fn public_jwk(&self) -> Value;

    /// The JWS `alg` this key signs with: `"EdDSA"` for Ed25519 or `"ES256"` for P-256.
    fn alg(&self) -> &str;

    /// Signs `message`, giving the JWS signature bytes (64 bytes for both algorithms; for
    /// ES256 that is `r || s`, not DER), at once or later.
    fn sign<'a>(&'a self, message: &'a [u8]) -> Signing<'a>;

    /// The RFC 7638 SHA-256 thumbprint of [`public_jwk`](Self::public_jwk): the `cnf.jkt` of
    /// tokens bound to this key.
    fn thumbprint(&self) -> Result<String> {
        jwk_thumbprint(&self.public_jwk())
    }
}

/// A signature from a [`DeviceKey`]: available at once ([`Signing::ready`], keys in memory) or
/// later ([`Signing::later`], keystores that prompt or call another runtime). Await it.
///
/// ```
/// use keybound_sdk::{DeviceKey, Ed25519DeviceKey};
///
/// # async fn run() -> keybound_sdk::Result<()> {
/// let key = Ed25519DeviceKey::generate();
/// let signature = key.sign(b"message").await?;
/// assert_eq!(signature.len(), 64);
/// # Ok(())
/// # }
/// ```
#[must_use = "a signature does nothing until awaited"]
pub struct Signing<'a>(SigningState<'a>);

enum SigningState<'a> {
    Ready(Option<Result<Vec<u8>>>),
    Later(Pin<Box<dyn Future<Output = Result<Vec<u8>>> + Send + 'a>>),
}

impl<'a> Signing<'a> {
    /// A signature made already.
    pub fn ready(signature: Result<Vec<u8>>) -> Self {
        Self(SigningState::Ready(Some(signature)))
    }

    /// A signature `future` will deliver.
    pub fn later(future: impl Future<Output = Result<Vec<u8>>> + Send + 'a) -> Self {
        Self(SigningState::Later(Box::pin(future)))
    }

    /// The signature without awaiting, for the synchronous
    /// [`DpopProofBuilder::sign`](crate::DpopProofBuilder::sign): only a [`Signing::ready`]
    /// one has it. A pending one is refused rather than blocked on, since blocking a runtime
    /// thread on a keystore prompt could stall every other task.
    pub(crate) fn now(self) -> Result<Vec<u8>> {
        match self.0 {
            SigningState::Ready(Some(result)) => result,
            _ => Err(crate::Error::device_key(
                "this device key signs asynchronously: use DpopProofBuilder::sign_async",
            )),
        }
    }
}

impl Future for Signing<'_> {
    type Output = Result<Vec<u8>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            SigningState::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(crate::Error::device_key(
                    "signature polled after completion",
                ))
            })),
            SigningState::Later(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for Signing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            SigningState::Ready(_) => "Signing::Ready",
            SigningState::Later(_) => "Signing::Later",
        })
    }
}
