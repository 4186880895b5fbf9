//! Ed25519 signing keys, the JWKS that publishes them, and the master key that seals them at
//! rest.
//!
//! * [`SigningKey`] signs compact JWS (RFC 7515 section 7.1) with `alg: EdDSA` (RFC 8037
//!   section 3.1). It signs straight from the parsed in-memory key: re-parsing a PKCS#8
//!   document per token (what `jsonwebtoken::encode` does) roughly doubles the cost of a
//!   signature for nothing.
//! * Its `kid` is the RFC 7638 thumbprint of its public OKP JWK, so the same key always has the
//!   same `kid` on every instance and after every restart, with nothing extra to store or sync.
//! * [`MasterKey`] seals private key material with XChaCha20-Poly1305 before storage writes it,
//!   binding each sealed blob to its row with associated data, so a database dump alone yields
//!   no signing key and a blob copied onto another row does not open.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer as _, VerifyingKey};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The JWS `typ` of access tokens (RFC 9068 section 2.1).
pub const TYP_ACCESS_TOKEN: &str = "at+jwt";

/// The JWS `typ` of the signed revocation list (contract section 3.3).
pub const TYP_REVOCATIONS: &str = "revocations+jwt";

/// The JWS `alg` we sign with: RFC 8037 section 3.1's name for Ed25519.
pub const ALG_EDDSA: &str = "EdDSA";

/// Errors from loading, sealing and opening keys. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The master key text is not base64 of exactly 32 bytes.
    #[error("the master key must be base64 of exactly 32 bytes")]
    InvalidMasterKey,
    /// Reading or writing the master key file failed.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A sealed blob did not open: wrong master key, tampered bytes, or bound to another row.
    /// One error for all three on purpose: the AEAD cannot tell them apart, and neither should
    /// anyone reading the message.
    #[error("sealed key material could not be opened")]
    Unseal,
    /// Opened key material is not a 32-byte Ed25519 seed.
    #[error("sealed key material is not an Ed25519 seed")]
    InvalidSeed,
    /// The opened key's thumbprint is not the `kid` it was stored under.
    #[error("the opened signing key does not match its kid")]
    KidMismatch,
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of an Ed25519 public
/// key: the signing keys' `kid`. Written once, in `keybound-jose`, for the server and the SDK.
pub use keybound_jose::ed25519_thumbprint as ed25519_jwk_thumbprint;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// base64url of the protected header `{"alg":"EdDSA","typ":…,"kid":…}`.
fn encode_header(typ: &str, kid: &str) -> String {
    // serde_json escapes `typ` and `kid`, so a caller-chosen typ cannot inject header members.
    let header = serde_json::json!({ "alg": ALG_EDDSA, "typ": typ, "kid": kid });
    URL_SAFE_NO_PAD.encode(header.to_string())
}

/// An Ed25519 signing key with its `kid`.
///
/// Not `Clone`: share it behind an `Arc` so the secret exists once in memory. The inner
/// `ed25519_dalek::SigningKey` zeroizes its seed on drop; this type keeps no other copy of it.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    kid: String,
    created_at: u64,
    /// The base64url protected header for `at+jwt`, computed once: access tokens are the hot
    /// path and their header never changes for a given key.
    access_header: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's CSPRNG, created now.
    pub fn generate() -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::generate(&mut OsRng), unix_now())
    }

    /// The key whose RFC 8032 private key (the 32-byte seed) is `seed`.
    ///
    /// The caller owns `seed` and should zeroize it (e.g. keep it in a `Zeroizing`).
    pub fn from_seed(seed: &[u8; 32], created_at: u64) -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(seed), created_at)
    }

    fn from_dalek(key: ed25519_dalek::SigningKey, created_at: u64) -> Self {
        let kid = ed25519_jwk_thumbprint(key.verifying_key().as_bytes());
        let access_header = encode_header(TYP_ACCESS_TOKEN, &kid);
        Self {
            key,
            kid,
            created_at,
            access_header,
        }
    }

    /// The key id: the RFC 7638 thumbprint of the public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When the key was created, in unix seconds.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as a JWK (no private members).
    pub fn public(&self) -> PublicJwk {
        PublicJwk::from_parts(self.key.verifying_key().as_bytes(), self.kid.clone())
    }

    /// The public key as a JWK JSON object: `kty OKP, crv Ed25519, x, kid, use sig, alg EdDSA`.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::to_value(self.public()).expect("a PublicJwk always serializes")
    }

    /// Signs `claims` as a compact JWS (RFC 7515 section 7.1) with the protected header
    /// `{"alg":"EdDSA","typ":typ,"kid":kid}`.
    ///
    /// # Panics
    ///
    /// If `claims` fails to serialize to JSON, which only a `Serialize` impl that returns an
    /// error (or a map with non-string keys) can do; every claims type in this crate
    /// serializes infallibly.
    pub fn sign_jws(&self, typ: &str, claims: &impl Serialize) -> String {
        let payload = serde_json::to_vec(claims).expect("JWT claims serialize to JSON");
        if typ == TYP_ACCESS_TOKEN {
            self.sign_compact(&self.access_header, &payload)
        } else {
            self.sign_compact(&encode_header(typ, &self.kid), &payload)
        }
    }

    /// Compact JWS over an already-encoded protected header and a raw payload:
    /// `BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(Ed25519(signing input))`.
    ///
    /// RFC 8037 section 3.1: the JWS Signing Input is signed with pure Ed25519 (no prehash),
    /// giving the 64-byte `R || S` signature of RFC 8032 section 5.1.6.
    pub(crate) fn sign_compact(&self, header_b64: &str, payload: &[u8]) -> String {
        // Exact final size: header, two dots, the payload and 86 characters of signature.
        let payload_len = base64::encoded_len(payload.len(), false).unwrap_or(0);
        let mut jws = String::with_capacity(header_b64.len() + payload_len + 2 + 86);
        jws.push_str(header_b64);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut jws);
        let signature = self.key.sign(jws.as_bytes());
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut jws);
        jws
    }

    /// The seed sealed under `master`, bound to this key's `kid`: what storage keeps.
    pub fn seal(&self, master: &MasterKey) -> Vec<u8> {
        master.seal(self.key.as_bytes(), &signing_key_aad(&self.kid))
    }

    /// Opens a key that [`SigningKey::seal`] sealed, stored under `kid`.
    ///
    /// Fails when the master key is wrong, the blob was altered, the blob belongs to another
    /// `kid` (a row swap), or the seed inside does not hash to `kid`.
    pub fn open_sealed(
        master: &MasterKey,
        kid: &str,
        sealed: &[u8],
        created_at: u64,
    ) -> Result<Self, KeyError> {
        let seed = master.open(sealed, &signing_key_aad(kid))?;
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::InvalidSeed)?;
        let key = Self::from_seed(seed, created_at);
        // The AEAD already binds the blob to `kid`; this catches a row whose kid and key were
        // written inconsistently in the first place. A kid is public, so `!=` is fine.
        if key.kid != kid {
            return Err(KeyError::KidMismatch);
        }
        Ok(key)
    }
}

/// Associated data for a sealed signing key: a purpose label plus the kid, so the blob opens
/// only as the signing key of that kid and never as some other kind of sealed secret.
fn signing_key_aad(kid: &str) -> Vec<u8> {
    format!("keybound/signing-key/v1/{kid}").into_bytes()
}

/// A public Ed25519 key as an RFC 8037 OKP JWK, with the members the contract publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicJwk {
    /// Always `OKP` (RFC 8037 section 2).
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The 32-byte public key, base64url.
    pub x: String,
    /// The RFC 7638 thumbprint.
    pub kid: String,
    /// Always `sig` (RFC 7517 section 4.2).
    #[serde(rename = "use")]
    pub use_: String,
    /// Always `EdDSA`.
    pub alg: String,
}

impl PublicJwk {
    /// The JWK of a public key, with its thumbprint as `kid`.
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        let bytes = key.as_bytes();
        Self::from_parts(bytes, ed25519_jwk_thumbprint(bytes))
    }

    fn from_parts(public_key: &[u8; 32], kid: String) -> Self {
        Self {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: URL_SAFE_NO_PAD.encode(public_key),
            kid,
            use_: "sig".to_owned(),
            alg: ALG_EDDSA.to_owned(),
        }
    }
}

/// A JWK Set (RFC 7517 section 5): `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Jwks {
    /// The published keys: the active one and every retired key whose tokens may not have
    /// expired yet (contract section 3.3).
    pub keys: Vec<PublicJwk>,
}

impl Jwks {
    /// The set of the public halves of `keys`, in the given order.
    pub fn from_signing_keys<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Self {
        Self {
            keys: keys.into_iter().map(SigningKey::public).collect(),
        }
    }

    /// The JSON document served at `/.well-known/jwks.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a Jwks always serializes")
    }
}

/// `{"keys": [...]}` for the given keys' public halves.
pub fn jwks_json(keys: &[&SigningKey]) -> serde_json::Value {
    Jwks::from_signing_keys(keys.iter().copied()).to_json()
}

/// Length of a master key.
const MASTER_KEY_LEN: usize = 32;
/// Format byte leading every sealed blob, so the format can change without guessing.
const SEAL_VERSION: u8 = 1;
/// XChaCha20's 192-bit nonce: large enough that random nonces never collide in practice
/// (unlike ChaCha20-Poly1305's 96 bits), so no nonce counter needs to be stored.
pub(crate) const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;

/// The 256-bit key that seals signing keys at rest.
///
/// Zeroized on drop; `Debug` prints nothing of it and there is no `Display`.
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        OsRng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// Parses standard base64 (RFC 4648 section 4, padded) of exactly 32 bytes; surrounding
    /// whitespace, such as a file's trailing newline, is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::InvalidMasterKey)?,
        );
        let array: [u8; MASTER_KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::InvalidMasterKey)?;
        Ok(Self(Zeroizing::new(array)))
    }

    /// The key file's contents: standard base64 of the key and a newline. Sized up front so
    /// no reallocation leaves an unzeroized copy of the key text behind.
    fn to_file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(
            base64::encoded_len(MASTER_KEY_LEN, true).unwrap_or(0) + 1,
        ));
        STANDARD.encode_string(self.0.as_ref(), &mut text);
        text.push('\n');
        text
    }

    /// Reads the master key from `path`, or creates the file with a fresh key when it does not
    /// exist. Returns the key and whether it was created.
    ///
    /// Creation writes a temporary file in the same directory (mode 0600 from the start, so
    /// the key is never readable by others even for a moment), syncs it, and publishes it by
    /// hard-linking it to `path`. Unlike `rename`, a hard link never replaces an existing
    /// file: when two processes start at once, exactly one key wins and the loser reads it,
    /// instead of sealing data with a key that then vanishes. On a filesystem without hard
    /// links it falls back to `rename`. A missing parent directory is created with mode 0700.
    pub fn load_or_create_file(path: impl AsRef<Path>) -> Result<(Self, bool), KeyError> {
        let path = path.as_ref();
        match Self::read_file(path) {
            Ok(key) => return Ok((key, false)),
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }

        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { path, source }
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        create_private_dir_all(dir).map_err(io_err(dir))?;

        let key = Self::generate();
        let tmp = TempFile::create_in(dir, path).map_err(io_err(dir))?;
        let text = key.to_file_text();
        tmp.write_all(text.as_bytes()).map_err(io_err(&tmp.path))?;

        match std::fs::hard_link(&tmp.path, path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                // Another process created it first: use theirs.
                return Ok((Self::read_file(path)?, false));
            }
            Err(_) => std::fs::rename(&tmp.path, path).map_err(io_err(path))?,
        }
        drop(tmp);
        sync_dir(dir);
        Ok((key, true))
    }

    /// Reads the master key from an existing file (warning when group or others may read
    /// it); never creates one.
    pub fn read_existing_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        Self::read_file(path.as_ref())
    }

    fn read_file(path: &Path) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        warn_if_readable_by_others(path, &file);
        // Sized from the file so reading does not reallocate and strand copies of the key.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut text = Zeroizing::new(String::with_capacity(
            usize::try_from(len)
                .unwrap_or(0)
                .saturating_add(1)
                .min(4096),
        ));
        file.read_to_string(&mut text).map_err(io_err)?;
        Self::from_base64(&text)
    }

    /// Encrypts `plaintext` with XChaCha20-Poly1305 under a fresh random nonce, authenticating
    /// `aad` too. Output: `version (1) || nonce (24) || ciphertext || tag (16)`.
    ///
    /// `aad` is not stored in the blob: [`MasterKey::open`] must be given the same bytes,
    /// which is what binds a blob to its row (pass the row's id, e.g. the kid).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.0.as_ref()));
        let mut sealed = vec![SEAL_VERSION];
        sealed.extend_from_slice(&aead_seal(&cipher, plaintext, aad));
        sealed
    }

    /// A 32-byte subkey for `label` (HMAC-SHA256 keyed by the master key), so every instance
    /// sharing the master key derives the same secret, e.g. for DPoP server nonces.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..])
            .expect("HMAC takes keys of any length");
        mac.update(label.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// Decrypts and authenticates a blob from [`MasterKey::seal`] with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(KeyError::Unseal);
        };
        if version != SEAL_VERSION {
            return Err(KeyError::Unseal);
        }
        let cipher = XChaCha20Poly1305::new(Key::from_slice(self.0.as_ref()));
        aead_open(&cipher, rest, aad).ok_or(KeyError::Unseal)
    }
}

/// XChaCha20-Poly1305 under a fresh random nonce: `nonce (24) || ciphertext || tag (16)`.
/// The one sealing routine of the crate: [`MasterKey::seal`] (signing keys at rest) and the
/// refresh tokens (under keys derived from the master key) both use it.
pub(crate) fn aead_seal(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    // The thread's CSPRNG (ChaCha12, seeded and regularly reseeded from the OS): a random
    // 192-bit nonce needs unpredictability and uniqueness, not a system call per token (every
    // exchange and refresh seals a refresh token).
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Encryption fails only for plaintexts beyond 2^38 bytes.
        .expect("XChaCha20-Poly1305 encrypts any plaintext we seal");
    let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ciphertext);
    blob
}

/// Opens a blob of [`aead_seal`] with the same `aad`; `None` when it is too short or does not
/// authenticate. The plaintext is wiped when dropped.
pub(crate) fn aead_open(
    cipher: &XChaCha20Poly1305,
    blob: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if blob.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// A temporary file removed on drop unless it was renamed away.
struct TempFile {
    path: PathBuf,
    file: std::fs::File,
}

impl TempFile {
    fn create_in(dir: &Path, target: &Path) -> io::Result<Self> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "master.key".to_owned());
        let mut suffix = [0u8; 8];
        OsRng.fill_bytes(&mut suffix);
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!(".{name}.tmp-{suffix}"));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        Ok(Self { path, file })
    }

    fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        (&self.file).write_all(bytes)?;
        self.file.sync_all()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a hard link the key lives on under its real name; after a rename this is
        // already gone and the error is ignored.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes the new directory entry durable (POSIX: a rename or link is durable only once its
/// directory is synced). Best effort: some platforms cannot open directories.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, file: &std::fs::File) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "master key file is accessible to group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _file: &std::fs::File) {}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signature;

    /// RFC 8037 appendix A.1: the private key `d` and public key `x`.
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    /// RFC 8037 appendix A.3: the RFC 7638 thumbprint of that key.
    const RFC8037_THUMBPRINT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
    /// RFC 8037 appendix A.4: protected header `{"alg":"EdDSA"}`, the payload, and the JWS.
    const RFC8037_HEADER_B64: &str = "eyJhbGciOiJFZERTQSJ9";
    const RFC8037_PAYLOAD: &[u8] = b"Example of Ed25519 signing";
    const RFC8037_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    fn rfc_key() -> SigningKey {
        let seed = Zeroizing::new(URL_SAFE_NO_PAD.decode(RFC8037_D).unwrap());
        SigningKey::from_seed(seed.as_slice().try_into().unwrap(), 1_700_000_000)
    }

    fn seed(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    fn decode_segment(segment: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    #[test]
    fn rfc8037_a1_private_key_gives_the_published_public_key() {
        let key = rfc_key();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            RFC8037_X
        );
        assert_eq!(key.public().x, RFC8037_X);
    }

    #[test]
    fn rfc8037_a3_thumbprint_is_the_kid() {
        assert_eq!(rfc_key().kid(), RFC8037_THUMBPRINT);
        let x: [u8; 32] = URL_SAFE_NO_PAD
            .decode(RFC8037_X)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(ed25519_jwk_thumbprint(&x), RFC8037_THUMBPRINT);
    }

    #[test]
    fn rfc8037_a4_signature_is_reproduced_exactly() {
        // The RFC's header is exactly `{"alg":"EdDSA"}`; check our reading of it first.
        assert_eq!(
            URL_SAFE_NO_PAD.decode(RFC8037_HEADER_B64).unwrap(),
            br#"{"alg":"EdDSA"}"#
        );
        // Ed25519 is deterministic (RFC 8032 section 5.1.6), so the output must match byte
        // for byte.
        assert_eq!(
            rfc_key().sign_compact(RFC8037_HEADER_B64, RFC8037_PAYLOAD),
            RFC8037_JWS
        );
    }

    #[test]
    fn rfc8037_a5_signature_verifies_with_the_public_key() {
        let (input, signature) = RFC8037_JWS.rsplit_once('.').unwrap();
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap()
            .try_into()
            .unwrap();
        rfc_key()
            .verifying_key()
            .verify_strict(input.as_bytes(), &Signature::from_bytes(&signature))
            .expect("RFC 8037 A.5 signature verifies");
    }

    #[test]
    fn public_jwk_has_exactly_the_contract_members() {
        let key = rfc_key();
        assert_eq!(
            key.public_jwk(),
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": RFC8037_X,
                "kid": RFC8037_THUMBPRINT, "use": "sig", "alg": "EdDSA",
            })
        );
        assert_eq!(
            PublicJwk::from_verifying_key(&key.verifying_key()),
            key.public()
        );
    }

    #[test]
    fn kid_is_stable_for_a_seed_and_differs_between_seeds() {
        let a = SigningKey::from_seed(&seed(7), 1);
        let again = SigningKey::from_seed(&seed(7), 2);
        let b = SigningKey::from_seed(&seed(8), 1);
        assert_eq!(a.kid(), again.kid(), "same seed, same kid");
        assert_ne!(a.kid(), b.kid(), "different seeds, different kids");
        assert_eq!(a.kid().len(), 43, "a base64url SHA-256 digest");
        assert_ne!(
            SigningKey::generate().kid(),
            SigningKey::generate().kid(),
            "generated keys differ"
        );
    }

    #[test]
    fn sign_jws_writes_the_contract_header_and_a_valid_signature() {
        let key = SigningKey::from_seed(&seed(1), 1);
        let claims = serde_json::json!({"iss": "https://issuer.example", "n": 1});
        for typ in [TYP_ACCESS_TOKEN, TYP_REVOCATIONS, "weird\"typ"] {
            let jws = key.sign_jws(typ, &claims);
            let parts: Vec<&str> = jws.split('.').collect();
            assert_eq!(parts.len(), 3, "{typ}: three segments");
            assert_eq!(
                decode_segment(parts[0]),
                serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": key.kid()}),
                "{typ}: header"
            );
            assert_eq!(decode_segment(parts[1]), claims, "{typ}: payload");
            let (input, signature) = jws.rsplit_once('.').unwrap();
            let signature: [u8; 64] = URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap()
                .try_into()
                .unwrap();
            key.verifying_key()
                .verify_strict(input.as_bytes(), &Signature::from_bytes(&signature))
                .unwrap_or_else(|_| panic!("{typ}: signature verifies"));
        }
    }

    #[test]
    fn cached_access_header_equals_a_freshly_built_one() {
        let key = SigningKey::from_seed(&seed(2), 1);
        assert_eq!(
            key.access_header,
            encode_header(TYP_ACCESS_TOKEN, key.kid())
        );
    }

    #[test]
    fn jwks_lists_public_halves_only() {
        let (a, b) = (
            SigningKey::from_seed(&seed(3), 1),
            SigningKey::from_seed(&seed(4), 2),
        );
        let jwks = jwks_json(&[&a, &b]);
        assert_eq!(
            jwks,
            serde_json::json!({"keys": [a.public_jwk(), b.public_jwk()]})
        );
        let text = jwks.to_string();
        assert!(!text.contains("\"d\""), "no private member");
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(seed(3))), "no seed");
        assert_eq!(jwks_json(&[]), serde_json::json!({"keys": []}));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let key = SigningKey::from_seed(&seed(0xAB), 1);
        let shown = format!("{key:?}");
        assert!(shown.contains(key.kid()), "{shown}");
        for secret in [
            URL_SAFE_NO_PAD.encode(seed(0xAB)),
            STANDARD.encode(seed(0xAB)),
            "171, 171".to_owned(),
            "abab".to_owned(),
        ] {
            assert!(
                !shown.to_lowercase().contains(&secret.to_lowercase()),
                "{shown}"
            );
        }

        let master = MasterKey::from_base64(&STANDARD.encode([0x42u8; 32])).unwrap();
        assert_eq!(format!("{master:?}"), "MasterKey([REDACTED])");
        assert_eq!(format!("{master:#?}"), "MasterKey([REDACTED])");
    }

    #[test]
    fn master_key_parsing() {
        let good = STANDARD.encode([9u8; 32]);
        assert!(MasterKey::from_base64(&good).is_ok());
        assert!(
            MasterKey::from_base64(&format!("  {good}\n")).is_ok(),
            "whitespace trimmed"
        );
        for (bad, why) in [
            (STANDARD.encode([9u8; 31]), "31 bytes"),
            (STANDARD.encode([9u8; 33]), "33 bytes"),
            (String::new(), "empty"),
            ("not base64!".to_owned(), "not base64"),
        ] {
            assert!(
                matches!(
                    MasterKey::from_base64(&bad),
                    Err(KeyError::InvalidMasterKey)
                ),
                "{why}"
            );
        }
    }

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_aad() {
        let master = MasterKey::generate();
        let sealed = master.seal(b"secret seed", b"kid-1");
        assert_eq!(
            master.open(&sealed, b"kid-1").unwrap().as_slice(),
            b"secret seed"
        );
        assert_eq!(sealed.len(), 1 + NONCE_LEN + b"secret seed".len() + TAG_LEN);
        assert_ne!(
            master.seal(b"secret seed", b"kid-1"),
            sealed,
            "a fresh nonce every time"
        );

        let other = MasterKey::generate();
        assert!(
            matches!(other.open(&sealed, b"kid-1"), Err(KeyError::Unseal)),
            "wrong master"
        );
        assert!(
            matches!(master.open(&sealed, b"kid-2"), Err(KeyError::Unseal)),
            "swapped aad"
        );
        assert!(
            matches!(master.open(&sealed, b""), Err(KeyError::Unseal)),
            "missing aad"
        );
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert!(
                matches!(master.open(&tampered, b"kid-1"), Err(KeyError::Unseal)),
                "flipped bit in byte {i}"
            );
        }
        for len in 0..sealed.len() {
            assert!(
                matches!(master.open(&sealed[..len], b"kid-1"), Err(KeyError::Unseal)),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn sealed_signing_keys_are_bound_to_their_kid() {
        let master = MasterKey::generate();
        let (a, b) = (
            SigningKey::from_seed(&seed(5), 10),
            SigningKey::from_seed(&seed(6), 20),
        );
        let (sealed_a, sealed_b) = (a.seal(&master), b.seal(&master));

        let opened = SigningKey::open_sealed(&master, a.kid(), &sealed_a, 10).unwrap();
        assert_eq!(opened.kid(), a.kid());
        assert_eq!(opened.created_at(), 10);
        assert_eq!(opened.verifying_key(), a.verifying_key());

        // A blob copied onto another key's row does not open.
        assert!(matches!(
            SigningKey::open_sealed(&master, b.kid(), &sealed_a, 20),
            Err(KeyError::Unseal)
        ));
        assert!(matches!(
            SigningKey::open_sealed(&MasterKey::generate(), b.kid(), &sealed_b, 20),
            Err(KeyError::Unseal)
        ));
        // A row whose kid and key disagree is caught after opening.
        let mislabelled = master.seal(&seed(5), &signing_key_aad(b.kid()));
        assert!(matches!(
            SigningKey::open_sealed(&master, b.kid(), &mislabelled, 20),
            Err(KeyError::KidMismatch)
        ));
        let short = master.seal(&[1u8; 31], &signing_key_aad(a.kid()));
        assert!(matches!(
            SigningKey::open_sealed(&master, a.kid(), &short, 10),
            Err(KeyError::InvalidSeed)
        ));
    }

    /// Two keys are the same when one opens what the other sealed.
    fn same_key(a: &MasterKey, b: &MasterKey) -> bool {
        b.open(&a.seal(b"probe", b"aad"), b"aad").is_ok()
    }

    #[test]
    fn master_key_file_is_created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/master.key");

        let (created, was_created) = MasterKey::load_or_create_file(&path).unwrap();
        assert!(was_created);
        let (loaded, was_created) = MasterKey::load_or_create_file(&path).unwrap();
        assert!(!was_created);
        assert!(
            same_key(&created, &loaded),
            "the second call loads the first key"
        );

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            MasterKey::from_base64(&text).is_ok(),
            "the file is base64 of the key"
        );
        assert_eq!(text.len(), 45, "44 base64 characters and a newline");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            vec![std::ffi::OsString::from("master.key")],
            "no temp files"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600, "key file");
            assert_eq!(mode(path.parent().unwrap()), 0o700, "created directory");
        }
    }

    #[test]
    fn a_corrupt_master_key_file_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            MasterKey::load_or_create_file(&path),
            Err(KeyError::InvalidMasterKey)
        ));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "garbage",
            "left alone"
        );
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let results: Vec<(MasterKey, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| MasterKey::load_or_create_file(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|(_, c)| *c).count(), 1, "one creator");
        let (on_disk, _) = MasterKey::load_or_create_file(&path).unwrap();
        for (key, _) in &results {
            assert!(same_key(key, &on_disk), "every caller got the key on disk");
        }
    }
}
