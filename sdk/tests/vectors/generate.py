#!/usr/bin/env python3
"""Regenerates the client-protocol test vectors with an implementation independent of the SDK
(Python's `cryptography`); the SDK's tests (`sdk/src/vectors.rs`) check its own output against
them. Run: python3 generate.py (writes the JSON files next to it)."""
import base64, hashlib, json, pathlib
from cryptography.hazmat.primitives.asymmetric import ed25519, ec

HERE = pathlib.Path(__file__).parent
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
unb64 = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
compact = lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True)

ISSUER = "https://auth.example.com"
JTI = b64(bytes(range(16)))
IAT = 1764806400  # 2025-12-04T00:00:00Z
ACCESS_TOKEN = "eyJhbGciOiJFZERTQSIsImtpZCI6InNpZy0xIiwidHlwIjoiYXQrand0In0.e30.c2ln"

def thumbprint(jwk):
    required = {"OKP": ["crv", "kty", "x"], "EC": ["crv", "kty", "x", "y"]}[jwk["kty"]]
    canonical = compact({k: jwk[k] for k in required})
    return canonical, b64(hashlib.sha256(canonical.encode()).digest())

def proofs(alg, jwk, sign):
    out = []
    cases = [
        ("exchange", "POST", ISSUER + "/v1/token", None, None),
        ("refresh with a nonce", "POST", ISSUER + "/v1/token/refresh", "server-nonce-1", None),
        ("resource call (query dropped from htu)", "GET", "https://api.example.com/v1/users?page=2#top", None, ACCESS_TOKEN),
    ]
    for name, htm, url, nonce, token in cases:
        header = {"alg": alg, "jwk": jwk, "typ": "dpop+jwt"}
        claims = {"htm": htm, "htu": url.split("?")[0].split("#")[0], "iat": IAT, "jti": JTI}
        if nonce:
            claims["nonce"] = nonce
        if token:
            claims["ath"] = b64(hashlib.sha256(token.encode()).digest())
        signing_input = b64(compact(header).encode()) + "." + b64(compact(claims).encode())
        case = {"name": name, "method": htm, "url": url, "nonce": nonce, "access_token": token,
                "jti": JTI, "iat": IAT, "header": header, "claims": claims,
                "signing_input": signing_input}
        if sign:
            signature = b64(sign(signing_input.encode()))
            case["signature"] = signature
            case["proof"] = signing_input + "." + signature
        out.append(case)
    return out

# RFC 8037 appendix A.1.
ed_d = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
ed = ed25519.Ed25519PrivateKey.from_private_bytes(unb64(ed_d))
ed_x = ed.public_key().public_bytes_raw()
ed_jwk = {"crv": "Ed25519", "kty": "OKP", "x": b64(ed_x)}
canonical, jkt = thumbprint(ed_jwk)
(HERE / "ed25519.json").write_text(json.dumps({
    "description": "Ed25519 (alg EdDSA): the RFC 8037 A.1 key, its JWK, RFC 7638 thumbprint, and DPoP proofs with fixed jti and iat. Ed25519 signatures are deterministic, so the signature must match byte for byte.",
    "private_key_d": ed_d, "public_jwk": ed_jwk, "thumbprint_input": canonical, "thumbprint": jkt,
    "proofs": proofs("EdDSA", ed_jwk, ed.sign),
}, indent=2) + "\n")

# RFC 7515 appendix A.3.
ec_d = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
ec_key = ec.derive_private_key(int.from_bytes(unb64(ec_d), "big"), ec.SECP256R1())
nums = ec_key.public_key().public_numbers()
ec_jwk = {"crv": "P-256", "kty": "EC", "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}
canonical, jkt = thumbprint(ec_jwk)
(HERE / "es256.json").write_text(json.dumps({
    "description": "ES256 (P-256): the RFC 7515 A.3 key, its JWK, RFC 7638 thumbprint, and DPoP signing inputs with fixed jti and iat. ECDSA signatures are randomised (or RFC 6979), so none is given: a port checks that its signature over signing_input is 64 bytes (r || s, not DER) and verifies with the public key.",
    "private_key_d": ec_d, "public_jwk": ec_jwk, "thumbprint_input": canonical, "thumbprint": jkt,
    "proofs": proofs("ES256", ec_jwk, None),
}, indent=2) + "\n")

(HERE / "token-response.json").write_text(json.dumps({
    "description": "A 200 answer of POST /v1/token (contract 3.1, with section 8's trust.attested). POST /v1/token/refresh answers the same shape. Values are samples.",
    "response": {
        "access_token": ACCESS_TOKEN, "token_type": "DPoP", "expires_in": 300,
        "scope": "read:users", "refresh_token": "rt_sample_opaque_value", "refresh_expires_in": 86400,
        "device_id": "dev_01JEXAMPLE", "trust": {"score": 0.62, "level": "limited", "attested": None},
    },
}, indent=2) + "\n")
